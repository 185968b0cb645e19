"""ComfyUI entry of the kohya-ext node pack (ComfyUI imports custom_nodes/<this folder>/__init__.py).

Thin on purpose: the nodes are kohya_ext.comfy (docs/comfyui.md). The package is
taken from this folder, so the code a ComfyUI-Manager update pulls is the code
that runs; its dependencies come from scripts/install.sh run with ComfyUI's
Python (``PYTHON=/path/to/comfy/python scripts/install.sh``). Nothing is added
to sys.path. Outside ComfyUI (pip, pytest) this file is never imported.
"""

import importlib.util as _util
import os as _os
import sys as _sys

_pkg = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "kohya_ext")
if "kohya_ext" not in _sys.modules and _os.path.isfile(_os.path.join(_pkg, "__init__.py")):
    _spec = _util.spec_from_file_location("kohya_ext", _os.path.join(_pkg, "__init__.py"), submodule_search_locations=[_pkg])
    _module = _util.module_from_spec(_spec)
    _sys.modules["kohya_ext"] = _module
    _spec.loader.exec_module(_module)

from kohya_ext.comfy import comfy_entrypoint  # noqa: E402,F401

__all__ = ["comfy_entrypoint"]
