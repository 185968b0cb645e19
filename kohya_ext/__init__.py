"""kohya-ext: does the character still look like itself? Facial-proportion consistency for LoRA training.

The public API (imported on first use, so ``import kohya_ext`` stays light)::

    from kohya_ext import Scorer
    scorer = Scorer("train/10_sks girl", backend="auto")   # a folder, kohya dataset or ref.json
    report = scorer.score_paths(["samples/"])               # a ConsistencyReport
    print(report.format_text(), report.score)

The public names are ``__all__`` (README.md, "Library"); ``KohyaExtError`` is every user-facing error.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Scorer": "scorer", "load_references": "scorer",
    "build_reference": "reference", "ReferenceStats": "reference",
    "ConsistencyReport": "report", "compare": "comparison",
    "BackendSpec": "backends", "BACKEND_NAMES": "backends",
    "KohyaExtError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
