"""``trackers.wandb_step_metric`` on a real offline wandb run, read back from its ``.wandb`` file:
``global_step`` is the declared x-axis of consistency/*, loss/*, lr/* and norm/*."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from kohya_ext.training import trackers

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

STEPPED = ("consistency/*", "loss/*", "lr/*", "norm/*")


def _offline_run(tmp_path: Path, monkeypatch, declare: bool) -> Path:
    wandb = pytest.importorskip("wandb")
    for k in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="kohya-ext-test")
    try:
        acc = SimpleNamespace(trackers=[SimpleNamespace(name="wandb", tracker=run, log=run.log)])  # accelerate's WandBTracker, in short
        for name in ("epoch", "val_step", "global_step"):  # what sd-scripts' init_trackers declares
            run.define_metric(name, hidden=True)
        if declare:
            t = trackers.Trackers(acc)
            t.setup({"patience": 3})
            assert t.failed == {}
        run.log({}, step=0)  # as sd-scripts does first
        run.log({"loss/current": 0.5, "lr/unet": 1e-4, "global_step": 1, "epoch": 1})
        trackers.Trackers(acc).log_scalars({"consistency/score": 0.7}, step=2, epoch=1)
    finally:
        run.finish()
        wandb.teardown()  # offline, finish() can return before wandb-core has written the .wandb file
    return next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_global_step_is_declared_step_metric_in_the_offline_run(tmp_path, monkeypatch):
    run_file = _offline_run(tmp_path, monkeypatch, declare=True)
    metrics = h.read_wandb_metrics(run_file)
    assert metrics["global_step"]["hidden"]  # sd-scripts' hidden=True is merged, not undone
    for pattern in STEPPED:
        assert metrics[pattern]["step_metric"] == "global_step", (pattern, metrics)
    history, _, _ = h.read_wandb(run_file)
    assert [r["global_step"] for r in history if "consistency/score" in r] == [2]


def test_without_the_declaration_no_step_metric_is_read_back(tmp_path, monkeypatch):
    """The reader would not pass the test above on a run that never called define_metric."""
    metrics = h.read_wandb_metrics(_offline_run(tmp_path, monkeypatch, declare=False))
    assert metrics["global_step"]["hidden"]  # the file was read: sd-scripts' own declarations are there
    assert not any(m.get("step_metric") for m in metrics.values()), metrics


def test_a_tracker_failure_is_one_warning_not_an_error(caplog):
    class Broken:
        def define_metric(self, *a, **k):
            raise RuntimeError("wandb is down")

        def log(self, *a, **k):
            raise RuntimeError("wandb is down")

    acc = SimpleNamespace(trackers=[SimpleNamespace(name="wandb", tracker=Broken(), log=Broken().log),
                                    SimpleNamespace(name="comet_ml", log=lambda values, step: logged.append((values, step)))])
    logged = []
    t = trackers.Trackers(acc)
    with caplog.at_level(logging.WARNING, logger=trackers.__name__):
        t.setup({})
        t.log_scalars({"consistency/score": 0.5}, step=4, epoch=1)
        t.log_scalars({"consistency/score": 0.6}, step=6, epoch=1)
    assert set(t.failed) == {"wandb.setup", "wandb.log_scalars"} and "wandb is down" in t.failed["wandb.setup"]
    assert caplog.text.count("wandb log_scalars failed") == 1  # once per call kind, not once per evaluation
    assert logged == [({"consistency/score": 0.5}, 4), ({"consistency/score": 0.6}, 6)]  # the other tracker still gets every value
