"""Installing the node pack: registry metadata beside setup.py, `pip install .` still setup.py's, the root shim.

pyproject.toml exists for the Comfy Registry; packaging stays in setup.py (every
[project] field setup.py provides is ``dynamic``). The ComfyUI side (install.sh into
ComfyUI's venv, pins, the server loading the shim) is tests/test_comfy_e2e.py.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from kohya_ext.toml_compat import tomllib

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _setup_kwargs() -> dict:
    """setup()'s literal keyword arguments (and VERSION), read without running setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    consts = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            if isinstance(kw.value, ast.Name) and kw.value.id in consts:
                out[kw.arg] = consts[kw.value.id]
            else:
                out[kw.arg] = ...  # computed (e.g. the README read)
    return out


def test_registry_fields_match_setup_py():
    from kohya_ext import __version__

    setup, project = _setup_kwargs(), PYPROJECT["project"]
    assert project["name"] == setup["name"] == "kohya-ext"
    assert project["version"] == setup["version"] == __version__
    assert project["description"] == setup["description"]
    assert project["requires-python"] == setup["python_requires"]
    assert project["license"] == setup["license"]
    # everything else setup.py says is left to it
    provided = {"install_requires": "dependencies", "extras_require": "optional-dependencies", "entry_points": "scripts",
                "long_description": "readme", "classifiers": "classifiers"}
    for kwarg, field in provided.items():
        if kwarg in setup:
            assert field in project["dynamic"] and field not in project, field
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["DisplayName"] and comfy["requires-comfyui"] == ">=0.8.0"
    assert "kohya_ext.comfy" in setup["packages"]
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of the working tree (what `pip install .` builds)."""
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in (p for p in files.decode().split("\0") if p and (REPO / p).is_file()):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((REPO / rel).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        offline = any(s in proc.stderr for s in ("No matching distribution", "Could not find a version", "NewConnectionError"))
        if offline and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
            pytest.skip(f"setuptools (the build backend) could not be fetched from the package index: {proc.stderr.strip()[-300:]}")
        pytest.fail(f"pip wheel of the working tree failed:\n{proc.stderr[-3000:]}")
    return next(out.glob("kohya_ext-*.whl"))


def test_pip_install_still_builds_setup_pys_package(wheel, tmp_path):
    setup = _setup_kwargs()
    z = zipfile.ZipFile(wheel)
    names = z.namelist()
    for pkg in ("kohya_ext/comfy/core.py", "kohya_ext/comfy/nodes.py", "kohya_ext/image_score.py", "kohya_ext/callbacks/__init__.py",
                "kohya_ext/patches/__init__.py", "kohya_ext/presets/__init__.py"):
        assert pkg in names, pkg
    assert not any(n == "__init__.py" or n.startswith(("tests/", "bench/", "examples/")) for n in names)  # the shim stays out
    meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = sorted(line.split(": ", 1)[1].replace(" ", "") for line in meta.splitlines()
                      if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert requires == sorted(r.replace(" ", "").replace("'", '"') for r in setup["install_requires"])
    assert "kohya-ext = kohya_ext.cli:main" in z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    # and it installs into a throwaway venv (no dependencies: only the files and the console script)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    assert (venv / "bin" / "kohya-ext").is_file()
    code = "import importlib.util as u; print([u.find_spec(m) is not None for m in ('kohya_ext.comfy.core', 'kohya_ext.callbacks', 'kohya_ext.patches')])"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "[True, True, True]", out.stderr


def test_root_shim_loads_the_package_from_its_folder(tmp_path):
    """ComfyUI imports custom_nodes/<pack>/__init__.py under a path-like module name. The shim runs the pack's own
    kohya_ext (here a copy, while this venv has kohya-ext installed elsewhere) and leaves sys.path alone."""
    import shutil

    pack = tmp_path / "custom_nodes" / "kohya-ext"
    shutil.copytree(REPO / "kohya_ext", pack / "kohya_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "__init__.py", pack / "__init__.py")
    code = f"""
import importlib.util, sys
before = list(sys.path)
spec = importlib.util.spec_from_file_location({str(pack).replace('.', '_x_')!r}, {str(pack / '__init__.py')!r},
                                              submodule_search_locations=[{str(pack)!r}])
m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)
import kohya_ext, kohya_ext.comfy.core
print(callable(m.comfy_entrypoint), kohya_ext.comfy.core.__file__, sys.path == before, hasattr(m, "NODE_CLASS_MAPPINGS"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ok, where, path_kept, v1 = out.stdout.split()
    assert ok == "True" and Path(where) == pack / "kohya_ext" / "comfy" / "core.py" and path_kept == "True"
    assert v1 == "False"  # V3 only: ComfyUI takes NODE_CLASS_MAPPINGS first when a module has both


def test_entrypoint_without_comfy_api_says_why(tmp_path):
    """In a ComfyUI too old for the V3 API, the pack fails with one line naming what is missing."""
    code = ("import asyncio, sys; sys.modules['comfy_api'] = None\n"
            "from kohya_ext.comfy import comfy_entrypoint\n"
            "try:\n    asyncio.run(comfy_entrypoint())\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.startswith("KohyaExtError") and "comfy_api.latest" in out.stdout and "update ComfyUI" in out.stdout, out


def test_examples_are_api_format():
    """The ComfyUI frontend opens a JSON file as an API workflow when every top-level value has a class_type."""
    import json

    for p in sorted((REPO / "examples").glob("comfyui_*.json")):
        wf = json.loads(p.read_text())
        assert wf and all(isinstance(v, dict) and "class_type" in v for v in wf.values()), p.name
        ours = {v["class_type"] for v in wf.values() if v["class_type"].startswith("KohyaExt")}
        assert {"KohyaExtCharacterReference", "KohyaExtCharacterConsistency", "KohyaExtConsistencyGate"} <= ours, p.name
        for v in wf.values():  # every link points at a node of the workflow
            for x in v["inputs"].values():
                if isinstance(x, list) and len(x) == 2 and isinstance(x[0], str):
                    assert x[0] in wf, (p.name, x)
