"""tests/linked_torch.py: torch for the tests' new venvs as hard links to this venv's installed copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from linked_torch import installed_closure, link_torch



def _spec() -> list[str]:
    from importlib.metadata import version

    return [f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"]


def _site(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout
    return Path(out.strip())


def test_closure_holds_what_torch_requires_here():
    names = {d.metadata["Name"].lower().replace("_", "-") for d in installed_closure(["torch"])}
    assert {"torch", "filelock", "sympy", "typing-extensions"} <= names
    assert "torchvision" not in names and "pytest" not in names  # only what torch requires, nothing beside it


def test_linked_torch_is_installed_for_pip_and_imports(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    if not link_torch(py, _spec()):
        pytest.skip(f"no hard links from {sys.prefix} to {tmp_path} (another filesystem): the tests install torch with pip there")
    import torch

    linked = _site(py) / "torch" / "__init__.py"
    assert os.stat(linked).st_ino == os.stat(torch.__file__).st_ino  # a link, not a copy
    out = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert set(_spec()) <= set(out)  # pip sees them installed at the pinned versions
    r = subprocess.run([str(py), "-c", "import torch, torchvision; print(torch.ones(2).sum().item())"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "2.0", r.stderr[-2000:]


def test_other_pins_link_nothing(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    before = sorted(p.name for p in _site(py).iterdir())
    assert not link_torch(py, ["torch==0.0.1", "torchvision==0.29.1"])
    assert not link_torch(py, ["torch"])  # unpinned: pip decides the version, not this venv
    assert sorted(p.name for p in _site(py).iterdir()) == before
