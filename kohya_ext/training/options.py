"""The ``--consistency_*`` options: argparse group, and checked values from argv or the TOML.

sd-scripts' ``read_config_from_file`` passes TOML values through without argparse's
``type=``/``choices=`` checks, so every value is checked again here, naming the key.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from ..backends import BACKEND_NAMES
from ..errors import KohyaExtError

GROUP_TITLE = "kohya-ext consistency"
MONITORS = ("consistency", "val_loss", "both")


@dataclass(frozen=True)
class ConsistencyOptions:
    enabled: bool = False
    reference: str | None = None
    prompts: str | None = None
    every_n_steps: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    warmup: int = 0
    target: float | None = None
    backend: str = "auto"
    device: str = "auto"
    timeout: float = 600.0
    num_prompts: int = 4
    seed: int = 1234
    size: int | None = None
    memorization_max: float = 0.5
    scorer: str | None = None
    monitor: str = "consistency"
    val_loss_slack: float = 0.05

    @property
    def watches_consistency(self) -> bool:
        return self.monitor != "val_loss"

    @property
    def watches_val_loss(self) -> bool:
        return self.monitor != "consistency"

    def as_config(self) -> dict[str, Any]:
        """Flat ``consistency_*`` keys for the tracker run config and the run record."""
        return {f"consistency_{k}": v for k, v in asdict(self).items() if k != "enabled"}


_DEFAULTS = ConsistencyOptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags in their own ``--help`` group (also valid as keys of ``--config_file``)."""
    g = parser.add_argument_group(GROUP_TITLE, "facial-proportion consistency during training (kohya-ext)")
    g.add_argument("--consistency", action="store_true",
                   help="score sample renders at every checkpoint save, log consistency/* next to the loss, keep the best checkpoint as {output_name}-best")
    g.add_argument("--consistency_reference", type=str, default=None,
                   help="reference images folder, kohya train_data_dir / dataset config .toml, or ref.json (default: the training images, never reg images)")
    g.add_argument("--consistency_prompts", type=str, default=None,
                   help="prompt file in kohya's format (.txt/.toml/.json); default: prompts derived from the training captions")
    g.add_argument("--consistency_every_n_steps", type=int, default=None,
                   help="evaluate every N steps instead of at every checkpoint save")
    g.add_argument("--consistency_patience", type=int, default=None,
                   help="early stopping: stop after N evaluations without improvement (off unless given)")
    g.add_argument("--consistency_min_delta", type=float, default=_DEFAULTS.min_delta,
                   help="early stopping: an improvement must beat the best score by more than this")
    g.add_argument("--consistency_warmup", type=int, default=_DEFAULTS.warmup,
                   help="early stopping: never stop before this many evaluations")
    g.add_argument("--consistency_target", type=float, default=None,
                   help="early stopping: stop once the score reaches this value (0..1)")
    g.add_argument("--consistency_backend", type=str, default=_DEFAULTS.backend, choices=BACKEND_NAMES,
                   help="face/landmark backend for scoring")
    g.add_argument("--consistency_device", type=str, default=_DEFAULTS.device,
                   help="device of the scoring models (auto, cpu, cuda, cuda:N)")
    g.add_argument("--consistency_timeout", type=float, default=_DEFAULTS.timeout,
                   help="seconds one scoring may take before its worker is killed (capped below the DDP timeout)")
    g.add_argument("--consistency_num_prompts", type=int, default=_DEFAULTS.num_prompts,
                   help="number of prompts derived from the captions when --consistency_prompts is not given")
    g.add_argument("--consistency_seed", type=int, default=_DEFAULTS.seed,
                   help="seed of the first evaluation prompt that has none (the next get seed+1, ...)")
    g.add_argument("--consistency_size", type=int, default=None,
                   help="render size of prompts that give none (default: the training resolution)")
    g.add_argument("--consistency_memorization_max", type=float, default=_DEFAULTS.memorization_max,
                   help="an evaluation whose share of near-copies of training images exceeds this is never crowned best")
    g.add_argument("--consistency_monitor", type=str, default=_DEFAULTS.monitor, choices=MONITORS,
                   help="what early stopping and {output_name}-best watch: consistency (renders scored against the training "
                        "images), val_loss (sd-scripts' validation loss: needs --validation_split and --logging_dir; renders "
                        "nothing, needs no reference) or both (stop when neither improved for --consistency_patience evaluations; "
                        "crown by consistency among evaluations whose validation loss is within --consistency_val_loss_slack "
                        "of the lowest so far)")
    g.add_argument("--consistency_val_loss_slack", type=float, default=_DEFAULTS.val_loss_slack,
                   help="--consistency_monitor both: an evaluation whose last validation loss exceeds the lowest so far by more "
                        "than this share is never crowned best (0.05 = 5%%)")
    g.add_argument("--consistency_scorer", type=str, default=None,
                   help="advanced: MODULE:CALLABLE building a custom scorer in the scoring worker")


def _bad(key: str, value: Any, want: str) -> KohyaExtError:
    return KohyaExtError(f"--{key} (or config_file key {key}): got {value!r}, expected {want}")


def _int(args: Any, key: str, lo: int, default: int | None) -> int | None:
    v = getattr(args, key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _bad(key, v, f"an integer >= {lo}")
    try:
        iv = int(v)
        if float(v) != iv:
            raise ValueError
    except ValueError:
        raise _bad(key, v, f"an integer >= {lo}") from None
    if iv < lo:
        raise _bad(key, v, f"an integer >= {lo}")
    return iv


def _float(args: Any, key: str, lo: float | None, hi: float | None, default: float | None, strict_lo: bool = False) -> float | None:
    v = getattr(args, key, default)
    if v is None:
        return None
    want = "a number" + (f" > {lo}" if strict_lo else f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
    if isinstance(v, bool):
        raise _bad(key, v, want)
    try:
        fv = float(v)
    except (TypeError, ValueError):
        raise _bad(key, v, want) from None
    if fv != fv or (lo is not None and (fv < lo or (strict_lo and fv == lo))) or (hi is not None and fv > hi):
        raise _bad(key, v, want)
    return fv


def _str(args: Any, key: str, default: str | None) -> str | None:
    v = getattr(args, key, default)
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise _bad(key, v, "a non-empty string")
    return v


def from_args(args: Any) -> ConsistencyOptions:
    """Checked options from a parsed Namespace (command line merged with the TOML)."""
    enabled = getattr(args, "consistency", False)
    if not isinstance(enabled, bool):
        raise _bad("consistency", enabled, "true or false")
    backend = _str(args, "consistency_backend", "auto")
    if backend not in BACKEND_NAMES:
        raise _bad("consistency_backend", backend, "one of " + ", ".join(BACKEND_NAMES))
    scorer = _str(args, "consistency_scorer", None)
    if scorer is not None and ":" not in scorer:
        raise _bad("consistency_scorer", scorer, "MODULE:CALLABLE")
    monitor = _str(args, "consistency_monitor", "consistency")
    if monitor not in MONITORS:
        raise _bad("consistency_monitor", monitor, "one of " + ", ".join(MONITORS))
    opts = ConsistencyOptions(
        enabled=enabled,
        reference=_str(args, "consistency_reference", None),
        prompts=_str(args, "consistency_prompts", None),
        every_n_steps=_int(args, "consistency_every_n_steps", 1, None),
        patience=_int(args, "consistency_patience", 1, None),
        min_delta=_float(args, "consistency_min_delta", 0.0, None, 0.0),
        warmup=_int(args, "consistency_warmup", 0, 0) or 0,
        target=_float(args, "consistency_target", 0.0, 1.0, None, strict_lo=True),
        backend=backend,
        device=_str(args, "consistency_device", "auto"),
        timeout=_float(args, "consistency_timeout", 0.0, None, 600.0, strict_lo=True),
        num_prompts=_int(args, "consistency_num_prompts", 1, 4),
        seed=_int(args, "consistency_seed", 0, 1234),
        size=_int(args, "consistency_size", 64, None),
        memorization_max=_float(args, "consistency_memorization_max", 0.0, 1.0, 0.5),
        scorer=scorer,
        monitor=monitor,
        val_loss_slack=_float(args, "consistency_val_loss_slack", 0.0, None, 0.05),
    )
    if not enabled:
        changed = [k for k, v in opts.as_config().items() if getattr(_DEFAULTS, k[len("consistency_"):]) != v]
        if changed:
            raise KohyaExtError(f"{', '.join('--' + k for k in changed)} given but --consistency is off: add --consistency (or consistency = true in the config file)")
    return opts
