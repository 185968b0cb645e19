"""Shared fixtures. Data from ../shared is optional: tests that need it skip, saying why."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KOHYA_EXT_SHARED", REPO.parent / "shared"))
GRID = SHARED / "data" / "tadne" / "grid.jpg"
TILE = 512


def _grid_tiles() -> list[np.ndarray]:
    from kohya_ext.images import load_image

    grid = load_image(GRID)
    rows, cols = grid.shape[0] // TILE, grid.shape[1] // TILE
    return [grid[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE].copy() for r in range(rows) for c in range(cols)]


@pytest.fixture(scope="session")
def tadne_tiles() -> list[np.ndarray]:
    """The 36 shared TADNE portraits as RGB uint8 arrays (512x512)."""
    if not GRID.exists():
        pytest.skip(f"shared test data not found at {GRID} (set KOHYA_EXT_SHARED to a folder holding data/tadne/grid.jpg)")
    return _grid_tiles()


@pytest.fixture(scope="session")
def tadne_dir(tmp_path_factory, tadne_tiles) -> Path:
    """The 36 portraits written as PNG files tile_00.png ... tile_35.png."""
    from PIL import Image

    d = tmp_path_factory.mktemp("tadne")
    for i, t in enumerate(tadne_tiles):
        Image.fromarray(t).save(d / f"tile_{i:02d}.png")
    return d
