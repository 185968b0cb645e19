"""Shared fixtures. Data from ../shared is optional: tests that need it skip, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


# -- accelerate versions for the multi-rank tests -------------------------------------------------
# Every test that launches several ranks takes the ``accelerate_version`` fixture and so runs once
# with the venv's accelerate ("installed": the newest release after a fresh ``make test``, the
# test extra pins none) and once with each version in PINNED_ACCELERATE (sd-scripts v0.10.x pins
# 1.6.0). A pinned version is lent to the test's subprocesses on PYTHONPATH, from
# ``pip install --no-deps --target`` cached under ~/.cache/kohya_ext/test-accelerate/VERSION (one
# download, then instant); without the package index that run skips, saying so. The tests check
# that the ranks really imported the intended version (kohya-ext names it in its ranks line).
# KOHYA_EXT_TEST_ACCELERATE="1.6.0,1.15.0" replaces the pinned list, e.g. to try a newer release
# from a venv that still has 1.6.0.
PINNED_ACCELERATE = [v.strip() for v in os.environ.get("KOHYA_EXT_TEST_ACCELERATE", "1.6.0").split(",") if v.strip()]
ACCELERATE_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kohya_ext" / "test-accelerate"


def installed_accelerate() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("accelerate")
    except PackageNotFoundError:
        return None


def accelerate_target(version: str) -> Path:
    """A folder holding exactly accelerate ``version`` (its dependencies are the venv's)."""
    dest = ACCELERATE_CACHE / version
    if (dest / "accelerate" / "__init__.py").is_file() and (dest / f"accelerate-{version}.dist-info").is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{version}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(tmp), f"accelerate=={version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        why = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"pip exited {proc.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"{type(e).__name__}: {e}"
    if why or not (tmp / f"accelerate-{version}.dist-info").is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"accelerate {version} could not be installed from the package index ({why or 'no dist-info'}): "
                    "this multi-rank run needs it")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


@pytest.fixture(params=["installed", *PINNED_ACCELERATE], ids=lambda v: f"accelerate-{v}")
def accelerate_version(request, monkeypatch) -> str:
    """The accelerate version this test's subprocesses import (see above)."""
    installed = installed_accelerate()
    if request.param == "installed":
        if installed is None:
            pytest.skip("accelerate is not installed (pip install -e .[test])")
        return installed
    if installed == request.param:
        pytest.skip(f"the venv's accelerate is {installed}: the accelerate-installed run covers it")
    path = accelerate_target(request.param)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(path)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return request.param
