"""The demo job: 36 TADNE portraits (a 6x6 grid) split into a reference half and a sample half.

The grid comes from ../shared/data/tadne/grid.jpg when present (the project's
test data); for anyone else it is downloaded once from the public
anime-face-detector repository (MIT, (c) 2021 hysts), where it is assets/input.jpg.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import KohyaExtError
from .images import load_image
from .io_utils import atomic_write_text

GRID_URL = "https://raw.githubusercontent.com/hysts/anime-face-detector/main/assets/input.jpg"
TILE = 512


def find_grid(explicit: str | None, out: Path) -> Path:
    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve().parents[1]
    for cand in (Path.cwd().parent / "shared/data/tadne/grid.jpg", here.parent / "shared/data/tadne/grid.jpg"):
        if cand.exists():
            return cand
    target = out / "grid.jpg"
    if not target.exists():
        out.mkdir(parents=True, exist_ok=True)
        print(f"downloading the demo portraits from {GRID_URL}")
        try:
            urllib.request.urlretrieve(GRID_URL, target)
        except OSError as e:
            raise KohyaExtError(
                f"cannot download the demo portraits ({e}); download {GRID_URL} by hand and pass it with --grid"
            ) from e
    return target


def grid_tiles(grid: np.ndarray) -> list[np.ndarray]:
    """The TILE x TILE portraits of a grid image, row by row (copies)."""
    return [grid[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE].copy()
            for r in range(grid.shape[0] // TILE) for c in range(grid.shape[1] // TILE)]


def split_grid(grid_path: Path, out: Path) -> tuple[Path, Path]:
    """Write the first half of the tiles to out/reference, the second half to out/samples."""
    grid = load_image(grid_path)
    tiles = grid_tiles(grid)
    if len(tiles) < 2:
        raise KohyaExtError(f"{grid_path}: expected a grid of {TILE}x{TILE} portraits, got {grid.shape[1]}x{grid.shape[0]} px")
    ref_dir, smp_dir = out / "reference", out / "samples"
    for d in (ref_dir, smp_dir):
        d.mkdir(parents=True, exist_ok=True)
    half = len(tiles) // 2
    for i, t in enumerate(tiles):
        Image.fromarray(t).save((ref_dir if i < half else smp_dir) / f"tile_{i:02d}.png")
    return ref_dir, smp_dir


def run_demo(grid: str | None, out: Path, spec, use_cache: bool = True, progress: bool = True):
    """(report, out): the reference half measured into ``out/ref.json``, the sample half scored
    against it into ``out/report.json``."""
    from .scorer import Scorer, load_references

    ref_dir, smp_dir = split_grid(find_grid(grid, out), out)
    ref = load_references(ref_dir, spec, use_cache=use_cache, progress=progress)[0]
    ref.save(out / "ref.json")
    report = Scorer(ref, spec, use_cache=use_cache, progress=progress).score_paths([smp_dir])
    atomic_write_text(out / "report.json", report.to_json())
    return report, out
