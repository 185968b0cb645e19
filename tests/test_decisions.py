"""The training decisions as pure functions (kohya_ext.training.decisions), no loop needed."""

from __future__ import annotations

import math

import pytest

from kohya_ext.training.decisions import (BestCopy, best_copy_source, checkpoint_kind, evaluation_trigger, is_memorized,
                                          is_new_best)


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


@pytest.mark.parametrize("score,eligible,best,want", [
    (0.8, True, None, True), (0.8, True, 0.7, True), (0.7, True, 0.7, False), (0.6, True, 0.7, False),
    (0.9, False, 0.7, False),  # memorised: never crowned
    (None, True, None, False), (math.nan, True, None, False), (math.nan, True, 0.5, False),
    (0.5, True, math.nan, True),  # a NaN best from an old history never blocks a real score
    (math.inf, True, None, False),
])
def test_new_best_never_for_none_or_nan(score, eligible, best, want):
    assert is_new_best(score, eligible, best) is want


def test_memorised_and_best_copy_source():
    assert is_memorized(0.6, 0.5) and not is_memorized(0.5, 0.5) and not is_memorized(None, 0.5)
    assert best_copy_source(4, 4, "a-step00000004.safetensors") is BestCopy.COPY_SAVED
    assert best_copy_source(4, 2, "a-step00000004.safetensors") is BestCopy.AWAIT_SAVE
    assert best_copy_source(5, 4, None) is BestCopy.SAVE_OWN and best_copy_source(5, None, None) is BestCopy.SAVE_OWN
