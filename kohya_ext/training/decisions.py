"""The training decisions, as pure functions of plain values (the callback only orchestrates).

When to evaluate, whether an evaluation is eligible and a new best, which file becomes the best copy
(and whether it is stale after a resume); whether to stop is ``early_stop.decide``. Each is unit-tested
without a training loop (tests/test_decisions.py).
"""

from __future__ import annotations

import math
from enum import Enum


def evaluation_trigger(global_step: int, epoch: int | None, *, stopped: bool, every_n_steps: int | None,
                       step_save_due: bool, epoch_save_due: bool, final: bool, already_evaluated: bool) -> str | None:
    """Why this sample point is evaluated, or None. Step points (``epoch`` None) follow every
    optimizer step: evaluate at kohya's step saves, or every N steps when asked. Epoch ends:
    the final one, or an epoch save, unless that step was evaluated already."""
    if global_step <= 0 or stopped:
        return None
    if epoch is None:
        if every_n_steps:
            return "every_n_steps" if global_step % every_n_steps == 0 else None
        return "step_save" if step_save_due else None
    if already_evaluated:
        return None
    if final:
        return "final"
    if not every_n_steps and epoch_save_due:
        return "epoch_save"
    return None


def checkpoint_kind(trigger: str, step_save_due: bool) -> str | None:
    """Which kohya file holds the evaluated weights: "step", "epoch", "last", or None (no save)."""
    if trigger == "step_save" or (trigger == "every_n_steps" and step_save_due):
        return "step"
    return {"epoch_save": "epoch", "final": "last"}.get(trigger)


def is_memorized(memorization: float | None, memorization_max: float) -> bool:
    """Too many samples are near-copies of training images."""
    return memorization is not None and memorization > memorization_max


def crown(score: float | None, memorization: float | None, memorization_max: float, best_score: float | None) -> tuple[bool, bool, bool]:
    """(memorised, eligible, new best): eligible is a finite score that is not memorised, a new best an eligible
    score above the best so far (a NaN best never blocks one); a failed (None) or NaN score is neither."""
    memorized = is_memorized(memorization, memorization_max)
    eligible = score is not None and math.isfinite(score) and not memorized
    return memorized, eligible, eligible and (best_score is None or not math.isfinite(best_score) or score > best_score)


class BestCopy(str, Enum):
    COPY_SAVED = "copy_saved"  # kohya already wrote this step's file: copy it
    AWAIT_SAVE = "await_save"  # kohya writes it right after the sample hook: copy it then
    SAVE_OWN = "save_own"  # no kohya save at this step: save the network ourselves


def best_copy_source(global_step: int, last_save_step: int | None, checkpoint: str | None) -> BestCopy:
    """Where the best copy's weights come from, so that it holds exactly the evaluated weights."""
    if last_save_step == global_step:
        return BestCopy.COPY_SAVED
    if checkpoint is not None:
        return BestCopy.AWAIT_SAVE
    return BestCopy.SAVE_OWN


def best_copy_stale(best: dict | None, held_step: str | None) -> bool:
    """After a resume: the ``-best`` file (holding cumulative step ``held_step``, None when unreadable) must be set
    aside, since it holds an evaluation other than the kept history's best (or the kept history has none)."""
    return best is None or held_step != str(best["cum_step"])
