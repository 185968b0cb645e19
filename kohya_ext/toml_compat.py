"""TOML reading shared by every module that reads kohya configs (tomllib on 3.11+, tomli on 3.10)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["tomllib", "flatten_config", "flatten_config_checked"]


def flatten_config(cfg: dict) -> dict:
    """Tables merged one level deep, the way sd-scripts' read_config_from_file flattens a --config_file."""
    return flatten_config_checked(cfg)[0]


def flatten_config_checked(cfg: dict) -> tuple[dict, list[str]]:
    """``flatten_config`` plus the problems sd-scripts passes over in silence: a key set twice
    (the later table wins) and a table nested two levels deep (left out here)."""
    flat: dict = {}
    where: dict[str, str] = {}
    problems: list[str] = []
    for section, value in cfg.items():
        items = value.items() if isinstance(value, dict) else [(section, value)]
        label = f"[{section}]" if isinstance(value, dict) else "top level"
        for key, v in items:
            if isinstance(v, dict):
                problems.append(f"{key} in {label}: tables nest one level only in a kohya config file; move its keys up")
                continue
            if key in flat:
                problems.append(f"{key}: set twice ({where[key]} and {label}); sd-scripts would silently keep the last")
            flat[key] = v
            where[key] = label
    return flat, problems
