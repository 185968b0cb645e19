"""TOML reading shared by every module that reads kohya configs (tomllib on 3.11+, tomli on 3.10)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["tomllib", "flatten_config"]


def flatten_config(cfg: dict) -> dict:
    """Tables merged one level deep, the way sd-scripts' read_config_from_file flattens a --config_file."""
    flat: dict = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return flat
