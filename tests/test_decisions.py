"""The training decisions as pure functions (kohya_ext.training.decisions), no loop needed."""

from __future__ import annotations

import math

import pytest

from kohya_ext.training.decisions import (BestCopy, best_copy_source, best_copy_stale, checkpoint_kind, crown, evaluation_trigger,
                                          is_memorized)
from kohya_ext.training.early_stop import EarlyStopState, StopConfig, StopReason, decide


def _trigger(step, epoch, **kw):
    base = dict(stopped=False, every_n_steps=None, step_save_due=False, epoch_save_due=False, final=False, already_evaluated=False)
    return evaluation_trigger(step, epoch, **{**base, **kw})


def test_when_to_evaluate():
    assert _trigger(0, None, step_save_due=True) is None  # step 0 (--sample_at_first) is never scored
    assert _trigger(4, None, step_save_due=True) == "step_save"
    assert _trigger(4, None) is None
    assert _trigger(6, None, every_n_steps=3) == "every_n_steps" and _trigger(7, None, every_n_steps=3) is None
    assert _trigger(8, None, step_save_due=True, stopped=True) is None
    assert _trigger(10, 2, final=True) == "final"
    assert _trigger(10, 2, final=True, already_evaluated=True) is None  # the step save at the same step was scored
    assert _trigger(10, 2, epoch_save_due=True) == "epoch_save"
    assert _trigger(10, 2, epoch_save_due=True, every_n_steps=5) is None  # every N steps replaces save-driven evaluation


def test_checkpoint_kind():
    assert checkpoint_kind("step_save", True) == "step"
    assert checkpoint_kind("every_n_steps", True) == "step" and checkpoint_kind("every_n_steps", False) is None
    assert checkpoint_kind("epoch_save", False) == "epoch" and checkpoint_kind("final", False) == "last"


@pytest.mark.parametrize("score,mem,best,want", [
    (0.8, None, None, (False, True, True)), (0.8, 0.2, 0.7, (False, True, True)), (0.7, None, 0.7, (False, True, False)),
    (0.6, None, 0.7, (False, True, False)),
    (0.9, 0.6, 0.7, (True, False, False)),  # memorised: not eligible, never crowned
    (None, None, None, (False, False, False)), (math.nan, None, None, (False, False, False)), (math.nan, None, 0.5, (False, False, False)),
    (0.5, None, math.nan, (False, True, True)),  # a NaN best from an old history never blocks a real score
    (math.inf, None, None, (False, False, False)),
])
def test_crown_eligible_and_new_best_never_for_none_or_nan(score, mem, best, want):
    assert crown(score, mem, 0.5, best) == want


def test_memorised_and_best_copy_source():
    assert is_memorized(0.6, 0.5) and not is_memorized(0.5, 0.5) and not is_memorized(None, 0.5)
    assert best_copy_source(4, 4, "a-step00000004.safetensors") is BestCopy.COPY_SAVED
    assert best_copy_source(4, 2, "a-step00000004.safetensors") is BestCopy.AWAIT_SAVE
    assert best_copy_source(5, 4, None) is BestCopy.SAVE_OWN and best_copy_source(5, None, None) is BestCopy.SAVE_OWN


def test_best_copy_stale_after_a_resume():
    best = {"cum_step": 12}
    assert not best_copy_stale(best, "12")
    assert best_copy_stale(best, "16") and best_copy_stale(best, None) and best_copy_stale(None, "12")


def test_no_early_stopping_asked_never_stops_and_keeps_no_state():
    state = EarlyStopState()
    for score in (0.5, None, math.nan, 0.1):
        new, stop, reason, message = decide(state, score, StopConfig())
        assert (new, stop, reason, message) == (state, False, StopReason.NONE, "")
