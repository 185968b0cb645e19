"""Every command the README and docs show, run in a venv made the way a user makes it: a new
venv, PyTorch, then ``scripts/install.sh`` (README, "Installing into your sd-scripts
virtualenv"); nothing else. The run folders come from this (test) venv.

PyTorch goes into the new venv as hard links to this test venv's installed copy of the same
wheels (torch, torchvision and what they require: the files pip wrote, RECORD included, so pip
sees them installed), because a second copy of the CUDA build costs 5.8 GB of disk, enough to
fill a CI machine; where hard links cannot be made (another filesystem) pip installs it. The
venv is deleted when this module is done. About 2-4 minutes on 2 CPU cores, most of it
installing the other packages (from pip's configured index). Set KOHYA_EXT_USER_VENV=PATH to keep
and reuse that venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from linked_torch import link_torch

REPO = Path(__file__).resolve().parents[1]
TORCH_SPEC = re.search(r"^TORCH_SPEC \?= (.+)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
# Subcommands whose every documented form is run below (the README/doc scan must find no other).
TESTED = {"reference", "score", "demo", "rank", "compare", "report", "check-config"}


def _documented_subcommands() -> set[str]:
    found = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "presets" / "README.md"]:
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", doc.read_text(encoding="utf-8"), re.M | re.S):
            found.update(re.findall(r"^\s*kohya-ext ([a-z][a-z-]+)", block, re.M))
    return found


def test_every_documented_subcommand_is_run_here():
    missing = _documented_subcommands() - TESTED
    assert not missing, f"documented but not run by this test: {sorted(missing)}"


def _sh(cmd: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory):
    """A new venv with PyTorch, then kohya-ext through scripts/install.sh (a copy of the tree, as
    a user's clone: no editable install, no test extras)."""
    keep = os.environ.get("KOHYA_EXT_USER_VENV")
    venv = Path(keep) if keep else tmp_path_factory.mktemp("user") / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        r = _sh([sys.executable, "-m", "venv", str(venv)])
        assert r.returncode == 0, r.stderr
        if not link_torch(py, TORCH_SPEC):
            r = _sh([str(py), "-m", "pip", "install", "-q", "--no-cache-dir", *TORCH_SPEC])
            if r.returncode != 0:
                pytest.skip(f"cannot install {' '.join(TORCH_SPEC)} into a new venv here: {r.stderr.strip().splitlines()[-1:]}")
    r = _sh([str(py), "-c", "import torch, torchvision; print(torch.__version__)"])
    assert r.returncode == 0, r.stderr[-2000:]
    clone = tmp_path_factory.mktemp("clone") / "kohya-ext"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "demo_out"))
    r = _sh(["bash", str(clone / "scripts" / "install.sh")], env={**os.environ, "PYTHON": str(py), "PIP_NO_CACHE_DIR": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    yield venv
    if not keep:
        shutil.rmtree(venv.parent, ignore_errors=True)
        shutil.rmtree(clone.parent, ignore_errors=True)


def _kx(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["KOHYA_EXT_CACHE"] = str((cwd or Path.cwd()) / "cache")
    return _sh([str(venv / "bin" / "kohya-ext"), *args], cwd=cwd, env=env, timeout=600)


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_documented_commands_work_after_the_documented_install(user_venv, tmp_path, tadne_tiles):
    sys.path.insert(0, str(REPO / "tests"))
    from posthoc_fixtures import make_kohya_ext_run, make_sample_run, write_reference
    from PIL import Image

    # kohya-ext reference DATA -o ref.json / score --reference ref.json SAMPLES --json --overlay --lang ko
    train = write_reference(tmp_path / "data", tadne_tiles)
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(12, 18):
        Image.fromarray(tadne_tiles[i]).save(samples / f"{i}.png")
    _ok(_kx(user_venv, "reference", str(train), "-o", str(tmp_path / "ref.json"), cwd=tmp_path))
    r = _kx(user_venv, "score", "--reference", str(tmp_path / "ref.json"), str(samples), "--json", str(tmp_path / "report.json"),
            "--overlay", str(tmp_path / "overlays"), "--lang", "ko", cwd=tmp_path)
    _ok(r)
    assert "interocular_ratio" in r.stdout and (tmp_path / "report.json").is_file() and list((tmp_path / "overlays").iterdir())
    # kohya-ext demo (make demo)
    from conftest import GRID  # the clone lies elsewhere: name the shared grid as make demo finds it

    r = _kx(user_venv, "demo", "--out", str(tmp_path / "demo_out"), "--grid", str(GRID), cwd=tmp_path)
    _ok(r)
    assert "consistency score:" in r.stdout

    # rank / compare / report on a run trained with kohya-ext and one trained without it
    with_ext = make_kohya_ext_run(tmp_path / "a", tadne_tiles, tmp_path / "fixture-cache")
    without = make_sample_run(tmp_path / "b", tadne_tiles)
    _ok(_kx(user_venv, "rank", str(with_ext), cwd=tmp_path))
    _ok(_kx(user_venv, "rank", str(without), "--backend", "nvxs", cwd=tmp_path))
    _ok(_kx(user_venv, "compare", str(with_ext), str(without), "--csv", str(tmp_path / "compare.csv"), cwd=tmp_path))
    r = _kx(user_venv, "report", str(with_ext), "-o", str(tmp_path / "report.html"), cwd=tmp_path)
    _ok(r)  # needs matplotlib, which sd-scripts' requirements lack: install.sh brings it
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "tensorboard is not installed" not in html

    # kohya-ext check-config on a shipped preset (no sd-scripts here: the shipped tables)
    import kohya_ext.preset_loader as pl

    r = _kx(user_venv, "check-config", str(pl.preset_dir() / "sd15_character.toml"), cwd=tmp_path)
    _ok(r)
    assert r.stdout.strip().endswith("OK")

    # python -m kohya_ext without a script: the usage line, exit 2 (no sd-scripts in this venv)
    r = _sh([str(user_venv / "bin" / "python"), "-m", "kohya_ext", "train_network.py", "--consistency"], cwd=tmp_path,
            env={**os.environ, "KOHYA_SD_SCRIPTS": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("kohya-ext: error: train_network.py: not found")


def test_report_without_matplotlib_says_what_to_install(tmp_path, tadne_tiles):
    """A bare ``pip install kohya-ext`` has no matplotlib: one line naming it, no traceback."""
    sys.path.insert(0, str(REPO / "tests"))
    from posthoc_fixtures import make_kohya_ext_run

    run = make_kohya_ext_run(tmp_path / "a", tadne_tiles, tmp_path / "cache")
    block = tmp_path / "block"
    block.mkdir()
    (block / "matplotlib.py").write_text("raise ImportError('matplotlib is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])}
    r = _sh([sys.executable, "-m", "kohya_ext", "report", str(run), "-o", str(tmp_path / "r.html")], env=env, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "needs matplotlib" in line and "pip install matplotlib" in line, r.stderr
    assert not (tmp_path / "r.html").exists()
