"""Logging to the trackers sd-scripts opened, one adapter per kind, every call guarded in one place.

TensorBoard: ``log(values, step=global_step)``. wandb: no step argument, ``global_step``
and ``epoch`` inside the dict (sd-scripts logs ``{}`` at step 0 first, so wandb's own step
runs ahead of global_step and ``log(..., step=global_step)`` would be dropped). Any other
tracker accelerate offers (comet_ml, aim, mlflow, clearml, dvclive, ...): its generic
``log(values, step=)``. Only the main process has trackers; other ranks get blank ones.
A tracker that raises costs a warning, never the training run (``Trackers._guard``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CUSTOM_SCALARS = {
    "kohya-ext": {
        "loss and consistency": ["Multiline", ["loss/average", "loss/current", "consistency/score"]],
        "validation loss and consistency": ["Multiline", [r"loss/validation/.*_average", "consistency/score"]],
        "consistency score": ["Multiline", ["consistency/score"]],
        "ratio differences (%)": ["Multiline", [r"consistency/.*_diff_pct"]],
        "ratio z": ["Multiline", [r"consistency/.*_z"]],
        "detection and memorisation": ["Multiline", ["consistency/detection_rate", "consistency/memorization"]],
        "score per character": ["Multiline", [r"consistency/character/.*/score", "consistency/score"]],
    }
}
# The families sd-scripts (loss/*, lr/*, norm/*) and this extension (consistency/*) log with
# ``global_step`` in the row; wandb's charts would otherwise plot them against its own ``_step``.
WANDB_STEP_METRIC = "global_step"
WANDB_STEPPED = ("consistency/*", "loss/*", "lr/*", "norm/*")


class TrackerAdapter:
    """accelerate's generic tracker: scalars with a step; no images, layout or summary."""

    def __init__(self, tracker: Any):
        self.tracker = tracker
        self.name = str(getattr(tracker, "name", type(tracker).__name__))

    def setup(self, config: dict[str, Any]) -> None:
        pass

    def log_scalars(self, values: dict[str, float], step: int, epoch: int | None) -> None:
        self.tracker.log(values, step=step)

    def log_image(self, tag: str, image: Any, step: int, epoch: int | None, caption: str) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass


class TensorBoardAdapter(TrackerAdapter):
    @property
    def writer(self) -> Any:
        return self.tracker.tracker  # accelerate's TensorBoardTracker wraps a SummaryWriter

    @property
    def log_dir(self) -> str | None:
        return getattr(getattr(self.tracker, "writer", None), "log_dir", None) or getattr(self.tracker, "logging_dir", None)

    def setup(self, config: dict[str, Any]) -> None:
        self.writer.add_custom_scalars(CUSTOM_SCALARS)
        self.writer.flush()

    def log_image(self, tag: str, image: Any, step: int, epoch: int | None, caption: str) -> None:
        self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()


class WandbAdapter(TrackerAdapter):
    @property
    def run(self) -> Any:
        return self.tracker.tracker

    def setup(self, config: dict[str, Any]) -> None:
        """Our options in the run config, and ``global_step`` as the x-axis of the stepped families."""
        declare_step_metric(self.run)
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, values: dict[str, float], step: int, epoch: int | None) -> None:
        self.tracker.log({**values, "global_step": step, "epoch": epoch})

    def log_image(self, tag: str, image: Any, step: int, epoch: int | None, caption: str) -> None:
        import wandb

        self.tracker.log({tag: wandb.Image(image, caption=caption), "global_step": step, "epoch": epoch})

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v


ADAPTERS = {"tensorboard": TensorBoardAdapter, "wandb": WandbAdapter}


def declare_step_metric(run: Any) -> None:
    """``define_metric``: ``global_step`` is the x-axis of ``consistency/*``, ``loss/*``, ``lr/*``
    and ``norm/*`` in this wandb run, so a new dashboard shows consistency next to the loss."""
    run.define_metric(WANDB_STEP_METRIC)
    for pattern in WANDB_STEPPED:
        run.define_metric(pattern, step_metric=WANDB_STEP_METRIC)


class Trackers:
    """The accelerator's trackers behind adapters; each call is tried on each, a failure logged once per call kind."""

    def __init__(self, accelerator: Any):
        self.adapters = [ADAPTERS.get(getattr(t, "name", None), TrackerAdapter)(t)
                         for t in getattr(accelerator, "trackers", None) or []]
        self.failed: dict[str, str] = {}  # "tracker.call" -> the last error, for the run record

    def _guard(self, call: str, *a: Any) -> None:
        for ad in self.adapters:
            try:
                getattr(ad, call)(*a)
            except Exception as e:  # a tracker failing must not end training
                key = f"{ad.name}.{call}"
                if key not in self.failed:
                    logger.warning("kohya-ext: %s %s failed, training goes on: %s: %s", ad.name, call, type(e).__name__, e)
                self.failed[key] = f"{type(e).__name__}: {e}"

    @property
    def tensorboard_dir(self) -> str | None:
        return next((ad.log_dir for ad in self.adapters if isinstance(ad, TensorBoardAdapter)), None)

    def setup(self, config: dict[str, Any]) -> None:
        self._guard("setup", config)

    def log_scalars(self, values: dict[str, float], step: int, epoch: int | None) -> None:
        """``values`` at ``step``, next to kohya's ``loss/*``."""
        self._guard("log_scalars", {k: float(v) for k, v in values.items()}, step, epoch)

    def log_image(self, tag: str, image: Any, step: int, epoch: int | None, caption: str = "") -> None:
        self._guard("log_image", tag, image, step, epoch, caption)

    def summary(self, values: dict[str, Any]) -> None:
        self._guard("summary", values)

    def flush(self) -> None:
        self._guard("flush")

