"""PyTorch for the new venvs the tests build (a user's venv, ComfyUI's), as hard links to this test
venv's installed copy of the same wheels.

A CUDA build of torch is 5.8 GB on disk; each new venv with its own copy filled a CI machine's disk.
The links are the files pip wrote here (each distribution's RECORD, METADATA and INSTALLER
included), so pip in the new venv sees torch, torchvision and their requirements installed, at
the same versions, exactly as if it had installed the same wheels.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from importlib import metadata
from pathlib import Path


def installed_closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and, recursively, what they require here (environment
    markers and requested extras evaluated)."""
    from packaging.requirements import Requirement

    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    todo = [(n, ()) for n in names]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        known = found.setdefault(key, (dist, set()))[1]
        if known and set(extras) <= known:
            continue
        known.update(extras or ("",))
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((req.name, tuple(req.extras)))
    return [dist for dist, _ in found.values()]


def link_torch(python: Path, spec: list[str]) -> bool:
    """Hard-link the distributions pinned in ``spec`` (e.g. ``["torch==2.14.1", "torchvision==0.29.1"]``)
    and what they require from this venv's site-packages into ``python``'s. Console scripts
    outside site-packages are left out. False, with nothing left behind, where this venv holds
    other versions than ``spec`` pins, or a link cannot be made (another filesystem): then the
    caller installs with pip."""
    pins = dict(s.split("==", 1) for s in spec if "==" in s)
    if len(pins) != len(spec) or any(_version(n) != v for n, v in pins.items()):
        return False
    dest_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    src_site = Path(sysconfig.get_paths()["purelib"]).resolve()
    made: list[Path] = []
    try:
        for dist in installed_closure(list(pins)):
            for rel in dist.files or []:
                src = Path(dist.locate_file(rel)).resolve()
                if not src.is_file() or not src.is_relative_to(src_site):
                    continue
                dst = dest_site / src.relative_to(src_site)
                if dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
                made.append(dst)
    except OSError:
        for f in made:
            f.unlink(missing_ok=True)
        return False
    return True


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
