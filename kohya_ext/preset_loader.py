"""Training presets (``--config_file`` TOMLs shipped as ``kohya_ext.presets``): load and check.

sd-scripts' ``read_config_from_file`` flattens one level of TOML tables into the Namespace and
keeps unknown keys and unchecked types silently, so a typo in a preset would just be ignored
at training time. Here every key must be an option of the family's sd-scripts script (the
tables in ``kohya_ext.sd_options``, one per supported sd-scripts version, generated from its own parsers) or a kohya-ext
option, and every value must fit the option's action (type, nargs, choices), plus a few
sanity rules for values no parser checks (learning rate range, an evaluation cadence that
early stopping can use, ``network_args`` as ``key=value`` strings).
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import KohyaExtError
from .toml_compat import flatten_config_checked, tomllib

#: Preset file-name prefix -> the sd-scripts script it is written for.
SCRIPT_BY_PREFIX = {
    "sd15": "train_network.py",
    "sdxl": "sdxl_train_network.py",
    "flux": "flux_train_network.py",
}
#: Dataset/model placeholders users must replace: ``<UPPER_CASE>`` inside a string value.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
# These type callables take strings: a TOML string is the right value for them.
_STRING_TYPES = {None, "str", "Path"}

_KINDS = {
    "_StoreAction": "store",
    "_StoreTrueAction": "store_true",
    "_StoreFalseAction": "store_false",
    "_StoreConstAction": "store_const",
    "_AppendAction": "append",
    "_CountAction": "count",
    "BooleanOptionalAction": "bool_optional",
}


def describe_parser(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """``{dest: {kind, type, nargs, choices, flags}}`` for every optional argument but ``--help``."""
    out: dict[str, dict[str, Any]] = {}
    for a in parser._actions:  # argparse has no public accessor for its actions
        if not a.option_strings or isinstance(a, argparse._HelpAction):
            continue
        t = a.type
        out[a.dest] = {
            "kind": _KINDS.get(type(a).__name__, type(a).__name__),
            "type": None if t is None else getattr(t, "__name__", type(t).__name__),
            "nargs": a.nargs,
            "choices": None if a.choices is None else list(a.choices),
            "flags": sorted(a.option_strings),
        }
    return out


def sd_options(script: str, version: str | None = None) -> dict[str, dict[str, Any]]:
    """Options of one sd-scripts script from the generated table of ``version`` (default: the
    newest supported); KohyaExtError if there is none."""
    from . import sd_options as tables

    scripts = tables.table(version)["scripts"]
    try:
        return scripts[script]
    except KeyError:
        raise KohyaExtError(f"no option table for {script!r}: use one of {', '.join(sorted(scripts))}") from None


def sd_options_source(version: str | None = None) -> str:
    """Which sd-scripts version and checkout the option table was generated from."""
    from . import sd_options as tables

    t = tables.table(version)
    return f"{t['version']}, {t['source']}"


@lru_cache(maxsize=1)
def kohya_ext_options() -> dict[str, dict[str, Any]]:
    """kohya-ext's own training options, read from the parser group it really adds."""
    from .training.options import add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return describe_parser(parser)


def preset_dir() -> Path:
    """Folder of the shipped presets (``kohya_ext.presets``; ``presets/`` in a source tree)."""
    try:
        from importlib.resources import files

        d = Path(str(files("kohya_ext.presets")))
        if d.is_dir():
            return d
    except ModuleNotFoundError:  # kohya_ext imported from a source tree without install
        pass
    return Path(__file__).resolve().parents[1] / "presets"


def preset_names() -> list[str]:
    """Names (file stems) of the shipped presets."""
    return sorted(p.stem for p in preset_dir().glob("*.toml"))


def preset_path(name_or_path: str | Path) -> Path:
    """A shipped preset by name, or a TOML file path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    q = preset_dir() / f"{Path(name_or_path).stem}.toml"
    if q.exists():
        return q
    raise KohyaExtError(f"preset {str(name_or_path)!r} not found: use a .toml path or one of {', '.join(preset_names())}")


def script_for(name_or_path: str | Path) -> str:
    """The sd-scripts script a preset is for, from its file-name prefix (sd15_, sdxl_, flux_)."""
    stem = Path(name_or_path).stem
    for prefix, script in SCRIPT_BY_PREFIX.items():
        if stem == prefix or stem.startswith(prefix + "_"):
            return script
    raise KohyaExtError(
        f"cannot tell the sd-scripts script of preset {stem!r}: name it with a prefix "
        f"{', '.join(p + '_' for p in SCRIPT_BY_PREFIX)} or pass script="
    )


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes one line naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise KohyaExtError(f"{p}: not valid TOML ({e}): fix the syntax") from None
    except OSError as e:
        raise KohyaExtError(f"{p}: cannot read ({e.strerror})") from None


_PY_TYPES = {"int": (int,), "float": (int, float), "int_or_float": (int, float)}


def _type_name(info: dict[str, Any]) -> str:
    t = info["type"]
    return "string" if t in _STRING_TYPES else {"int": "integer", "float": "number", "int_or_float": "number"}.get(t, f"{t} value")


def _type_label(info: dict[str, Any]) -> str:
    name = _type_name(info)
    return ("an " if name[0] in "aeiou" else "a ") + name


def _scalar_problem(key: str, value: Any, info: dict[str, Any]) -> str | None:
    t = info["type"]
    if t in _STRING_TYPES:
        ok = isinstance(value, str)
    elif t in _PY_TYPES:
        ok = isinstance(value, _PY_TYPES[t]) and not isinstance(value, bool)
    else:  # a custom type callable: TOML gives no way to know; accept plain scalars
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if not ok:
        return f"{key}: got {value!r}, expected {_type_label(info)}"
    if info["choices"] is not None and value not in info["choices"]:
        valid = ", ".join(repr(c) for c in info["choices"] if c is not None)
        return f"{key}: got {value!r}, expected one of {valid}"
    return None


def value_problem(key: str, value: Any, info: dict[str, Any]) -> str | None:
    """Why ``value`` does not fit the option described by ``info`` (None when it does).

    What argparse would have enforced on the command line: booleans for flags, the element
    type, a list for ``nargs`` options (read_config_from_file keeps a scalar as is, and code
    that iterates it then breaks), and the choices.
    """
    kind, nargs = info["kind"], info["nargs"]
    if kind in ("store_true", "store_false", "bool_optional"):
        return None if isinstance(value, bool) else f"{key}: got {value!r}, expected true or false"
    if kind in ("store_const", "count"):
        return f"{key}: a {kind} option cannot be set from a config file"
    if nargs in ("*", "+") or isinstance(nargs, int) or kind == "append":
        if not isinstance(value, list):
            return f"{key}: got {value!r}, expected a list of {_type_name(info)} values, e.g. [{value!r}]"
        if nargs == "+" and not value:
            return f"{key}: expected at least one value"
        if isinstance(nargs, int) and len(value) != nargs:
            return f"{key}: expected {nargs} values, got {len(value)}"
        for v in value:
            p = _scalar_problem(key, v, info)
            if p:
                return p
        return None
    if nargs == "?" and value is None:
        return None
    return _scalar_problem(key, value, info)


def _number(flat: dict[str, Any], key: str) -> float | None:
    v = flat.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def sanity_problems(flat: dict[str, Any]) -> list[str]:
    """Rules no parser checks: ranges, an evaluation cadence early stopping can use, network_args."""
    problems: list[str] = []
    for key in ("learning_rate", "unet_lr"):
        lr = _number(flat, key)
        if lr is not None and not 0 < lr <= 1e-2:
            problems.append(f"{key}: {lr:g} is outside (0, 1e-2], far from any LoRA recipe (1e-4 is the sd-scripts docs' example)")
    dim = _number(flat, "network_dim")
    if dim is not None and not 1 <= dim <= 256:
        problems.append(f"network_dim: {dim:g} is outside 1..256")
    alpha = _number(flat, "network_alpha")
    if alpha is not None and dim is not None and not 0 < alpha <= dim:
        problems.append(f"network_alpha: {alpha:g} should be in (0, network_dim={dim:g}] (alpha/dim scales the LoRA output)")
    for arg in flat.get("network_args") or []:
        if isinstance(arg, str) and "=" not in arg:
            problems.append(f"network_args: {arg!r} is not key=value (sd-scripts splits each entry on '=')")
    if flat.get("max_train_steps") is None and flat.get("max_train_epochs") is None:
        problems.append("max_train_steps / max_train_epochs: set one, so the schedule and the evaluation count are known")
    if flat.get("consistency"):
        has_cadence = any(flat.get(k) for k in ("save_every_n_steps", "save_every_n_epochs", "consistency_every_n_steps"))
        if not has_cadence:
            problems.append("consistency: evaluations run at checkpoint saves: set save_every_n_steps (or consistency_every_n_steps)")
        every = _number(flat, "consistency_every_n_steps") or _number(flat, "save_every_n_steps")
        steps = _number(flat, "max_train_steps")
        patience = _number(flat, "consistency_patience")
        warmup = _number(flat, "consistency_warmup") or 0
        if every and steps and patience:
            evals = int(steps // every)
            if warmup + patience > evals:
                problems.append(
                    f"consistency_patience: warmup {warmup:g} + patience {patience:g} evaluations exceed the "
                    f"{evals} evaluations of max_train_steps={steps:g} every {every:g} steps, so early stopping can never fire"
                )
    return problems


@dataclass
class PresetCheck:
    """The outcome of checking one preset."""

    path: Path
    script: str
    values: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    placeholders: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_preset(name_or_path: str | Path, script: str | None = None,
                 live: tuple[str, dict[str, dict[str, Any]]] | None = None) -> PresetCheck:
    """Check a preset or any kohya ``--config_file`` without raising: every problem is collected
    in ``.problems``. Against every supported version's shipped option table, or only against
    ``live`` = (label, options of the installed sd-scripts' parser) when given."""
    from . import sd_options as tables

    path = preset_path(name_or_path)
    script = script or script_for(path)
    ext = kohya_ext_options()
    flat, problems = flatten_config_checked(load_toml(path))
    against = [live] if live else [(f"sd-scripts {sd_options_source(v)}", sd_options(script, v)) for v in tables.versions()]
    for key, value in flat.items():
        missing = [label for label, sd in against if key not in sd and key not in ext]
        if missing:  # unknown to some (or every) supported sd-scripts version
            sd = against[0][1]
            near = difflib.get_close_matches(key, list(sd) + list(ext), n=3)
            hint = f"did you mean {', '.join(near)}?" if near else "remove it or fix the name"
            problems.append(f"{key}: not an option of {script} ({'; '.join(missing)}) nor of kohya-ext: {hint}")
            continue
        for label, sd in against:
            p = value_problem(key, value, sd.get(key) or ext[key])
            if p and p not in problems:
                problems.append(p)
    if not problems:
        problems += sanity_problems(flat)
        problems += _kohya_ext_problems(flat, ext)
    placeholders = {
        k: PLACEHOLDER.findall(v) for k, v in flat.items() if isinstance(v, str) and PLACEHOLDER.search(v)
    }
    return PresetCheck(path, script, flat, problems, placeholders)


def _kohya_ext_problems(flat: dict[str, Any], ext: dict[str, dict[str, Any]]) -> list[str]:
    """kohya-ext's own value checks (the ones the training run applies), on the preset's keys."""
    from .training.options import from_args

    try:
        from_args(argparse.Namespace(**{k: v for k, v in flat.items() if k in ext}))
    except KohyaExtError as e:
        return [str(e)]
    return []


def validate_preset(name_or_path: str | Path, script: str | None = None) -> PresetCheck:
    """Check a preset and raise KohyaExtError listing every problem (``; ``-separated)."""
    result = check_preset(name_or_path, script)
    if result.problems:
        raise KohyaExtError(f"preset {result.path.name} ({result.script}): " + "; ".join(result.problems))
    return result
