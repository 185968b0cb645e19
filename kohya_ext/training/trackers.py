"""Logging to the trackers sd-scripts opened, the way sd-scripts itself logs to each.

TensorBoard: ``log(values, step=global_step)``. wandb: no step argument, ``global_step``
and ``epoch`` inside the dict (sd-scripts logs ``{}`` at step 0 first, so wandb's own step
runs ahead of global_step and ``log(..., step=global_step)`` would be dropped).
Only the main process has trackers; other ranks get blank ones without ``log_images``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CUSTOM_SCALARS = {
    "kohya-ext": {
        "loss and consistency": ["Multiline", ["loss/average", "loss/current", "consistency/score"]],
        "consistency score": ["Multiline", ["consistency/score"]],
        "ratio differences (%)": ["Multiline", [r"consistency/.*_diff_pct"]],
        "ratio z": ["Multiline", [r"consistency/.*_z"]],
        "detection and memorisation": ["Multiline", ["consistency/detection_rate", "consistency/memorization"]],
        "score per character": ["Multiline", [r"consistency/character/.*/score", "consistency/score"]],
    }
}


def _named(accelerator: Any, name: str, unwrap: bool = False) -> Any | None:
    for t in getattr(accelerator, "trackers", []) or []:
        if getattr(t, "name", None) == name:
            return t.tracker if unwrap else t
    return None


def log_scalars(accelerator: Any, values: dict[str, float], global_step: int, epoch: int | None) -> None:
    """``values`` (Python floats) at ``global_step``, next to kohya's ``loss/*``."""
    values = {k: float(v) for k, v in values.items()}
    for t in getattr(accelerator, "trackers", []) or []:
        try:
            if t.name == "wandb":
                t.log({**values, "global_step": global_step, "epoch": epoch})
            else:
                t.log(values, step=global_step)
        except Exception as e:  # a tracker failing must not end training
            logger.warning("kohya-ext: logging consistency/* to %s failed: %s", t.name, e)


def log_grid(accelerator: Any, grid: Any, tag: str, global_step: int, epoch: int | None, caption: str = "") -> None:
    """An image (PIL) to TensorBoard (``add_image`` at global_step) and wandb (no step)."""
    tb = _named(accelerator, "tensorboard", unwrap=True)
    if tb is not None:
        try:
            tb.add_image(tag, np.asarray(grid.convert("RGB")), global_step, dataformats="HWC")
            tb.flush()
        except Exception as e:
            logger.warning("kohya-ext: TensorBoard image %s failed: %s", tag, e)
    wb = _named(accelerator, "wandb")
    if wb is not None:
        try:
            import wandb

            wb.log({tag: wandb.Image(grid, caption=caption), "global_step": global_step, "epoch": epoch})
        except Exception as e:
            logger.warning("kohya-ext: wandb image %s failed: %s", tag, e)


def add_custom_scalars(accelerator: Any) -> bool:
    tb = _named(accelerator, "tensorboard", unwrap=True)
    if tb is None:
        return False
    tb.add_custom_scalars(CUSTOM_SCALARS)
    tb.flush()
    return True


def wandb_config(accelerator: Any, config: dict[str, Any]) -> None:
    run = _named(accelerator, "wandb", unwrap=True)
    if run is not None:
        try:
            run.config.update(config, allow_val_change=True)
        except Exception as e:
            logger.warning("kohya-ext: wandb config update failed: %s", e)


# The families sd-scripts (loss/*, lr/*, norm/*) and this extension (consistency/*) log with
# ``global_step`` in the row; wandb's charts would otherwise plot them against its own ``_step``.
WANDB_STEP_METRIC = "global_step"
WANDB_STEPPED = ("consistency/*", "loss/*", "lr/*", "norm/*")


def wandb_step_metric(accelerator: Any) -> bool:
    """Declare ``global_step`` as the x-axis of ``consistency/*``, ``loss/*``, ``lr/*`` and
    ``norm/*`` in the wandb run (``define_metric``), so a new run's dashboard shows the
    consistency curve next to the loss without manual set-up. Main process only (other ranks
    have no wandb tracker); call once, before the first consistency log. Never raises."""
    run = _named(accelerator, "wandb", unwrap=True)
    if run is None:
        return False
    try:
        run.define_metric(WANDB_STEP_METRIC)
        for pattern in WANDB_STEPPED:
            run.define_metric(pattern, step_metric=WANDB_STEP_METRIC)
        return True
    except Exception as e:  # a wandb failure must not end training
        logger.warning("kohya-ext: wandb define_metric (global_step as x-axis) failed: %s", e)
        return False


def wandb_summary(accelerator: Any, values: dict[str, Any]) -> None:
    run = _named(accelerator, "wandb", unwrap=True)
    if run is not None:
        try:
            for k, v in values.items():
                run.summary[k] = v
        except Exception as e:
            logger.warning("kohya-ext: wandb summary update failed: %s", e)


def flush(accelerator: Any) -> None:
    tb = _named(accelerator, "tensorboard", unwrap=True)
    if tb is not None:
        tb.flush()
