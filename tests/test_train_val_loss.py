"""Early stopping and the best checkpoint on sd-scripts' validation loss (``--consistency_monitor val_loss``
and ``both``), on the stand-in loop, which validates as train_network.py does (tests/standin/standin_loop.py:
``on_validation_step_end`` per step, the average through ``step_logging``/``epoch_logging``, then
``network.train()``); ``FAKE_VAL_LOSSES`` scripts the curve."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from kohya_ext.training.best import META_STEP, META_VAL_LOSS, read_metadata
from kohya_ext.training.leaderboard import Leaderboard

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)


def _train(tmp_path: Path, extra: list[str], val_losses: str, scores: str = "", steps: int = 24, resume: str | None = None):
    if not (tmp_path / "train").exists():
        h.make_dataset(tmp_path, 8)  # 2 of 8 images held out: 6 steps per epoch
    args = h.base_args(tmp_path, steps=steps, save_every=2) + [
        "--validation_split", "0.25", "--validate_every_n_steps", "2", "--validate_every_n_epochs", "100",
        "--logging_dir", str(tmp_path / "logs"), "--log_with", "tensorboard", "--consistency", "--consistency_patience", "2", *extra]
    if resume:
        args += ["--resume", resume]
    env = {"FAKE_VAL_LOSSES": val_losses, "FAKE_SCORES": scores, "FAKE_COUNTER": str(tmp_path / "counter")}
    proc = h.run_trainer(tmp_path, args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _steps(tmp_path: Path) -> list[int]:
    return [t["step"] for t in h.read_trace(tmp_path / "trace.jsonl") if t["hook"] == "sample_images" and t["epoch"] is None]


def test_a_validation_loss_stop_ends_the_run_and_best_holds_the_lowest_loss(tmp_path):
    proc = _train(tmp_path, ["--consistency_monitor", "val_loss"], "0.50,0.40,0.45,0.47,0.30,0.20")
    out = tmp_path / "out"
    board = Leaderboard.load(out / "consistency").rows
    assert [(r["kohya_step"], r["val_loss"], r["trigger"]) for r in board] == [
        (2, 0.5, "validation"), (4, 0.4, "validation"), (6, 0.45, "validation"), (8, 0.47, "validation")]
    assert [r["is_best"] for r in board] == [False, True, False, False] and board[-1]["stop_reason"] == "patience_exhausted"
    assert board[1]["checkpoint"] == "tiny-step00000004.safetensors" and board[1]["best_copy"] == "copied"
    assert max(_steps(tmp_path)) == 8  # no optimizer step after the stop
    best = read_metadata(out / "tiny-best.safetensors")
    assert best[META_STEP] == "4" and best["ss_steps"] == "4" and float(best[META_VAL_LOSS]) == 0.4
    assert read_metadata(out / "tiny.safetensors")["ss_steps"] == "8"
    # nothing rendered, no reference needed: no worker, no prompts, no evaluation images
    assert not list((out / "consistency").glob("eval-*")) and not (out / "consistency" / "prompts.json").exists()
    assert "consistency reference ready" not in proc.stdout
    assert "loss/validation did not improve on 0.4000" in proc.stdout and "best validation loss 0.4000 at step 4" in proc.stdout
    run = json.loads((out / "consistency" / "run.json").read_text())
    assert [v["kohya_step"] for v in run["validation"]] == [2, 4, 6, 8] and run["stopped"]["kohya_step"] == 8
    from kohya_ext.posthoc.rank import format_table, rank_run

    ranked = rank_run(out)  # lowest validation loss first, the loss in its own column
    assert [r["kohya_step"] for r in ranked.rows] == [4, 6, 8, 2]
    table = format_table(ranked).splitlines()
    assert "val loss" in table[0] and "step 4 *best" in table[1] and "0.4000" in table[1] and "failed" not in "".join(table)
    from kohya_ext.posthoc.compare_runs import compare_runs
    from kohya_ext.posthoc.report_html import write_report

    assert compare_runs([out])[0]["best_val_loss"] == 0.4
    page = write_report(out, tmp_path / "report.html").read_text()
    assert "validation loss 0.4000" in page and "loss/validation/step_average" in h.read_tensorboard(tmp_path / "logs")


def test_an_epoch_validation_counts_too(tmp_path):
    """Only epoch-level validation (every epoch): the stop comes at an epoch end and the best copy is saved from
    the network (kohya saves no file at that step)."""
    h.make_dataset(tmp_path, 8)
    args = h.base_args(tmp_path, steps=30, save_every=5) + [
        "--validation_split", "0.25", "--logging_dir", str(tmp_path / "logs"), "--log_with", "tensorboard",
        "--consistency", "--consistency_monitor", "val_loss", "--consistency_patience", "1"]
    proc = h.run_trainer(tmp_path, args, env={"FAKE_VAL_LOSSES": "0.5,0.3,0.4"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    board = Leaderboard.load(out / "consistency").rows
    assert [(r["kohya_step"], r["trigger"], r["is_best"]) for r in board] == [
        (6, "epoch_validation", False), (12, "epoch_validation", True), (18, "epoch_validation", False)]
    assert board[1]["best_copy"] == "saved" and board[1]["checkpoint"] is None  # no kohya save at step 12 (every 4)
    assert read_metadata(out / "tiny-best.safetensors")["ss_steps"] == "12" and max(_steps(tmp_path)) == 18


def test_both_signals_stop_only_when_neither_improves_and_crown_by_consistency(tmp_path):
    """Consistency at the saves (2, 4, ...), validation right after at the same steps. Consistency stops improving
    after step 4, the validation loss keeps improving until step 8: the stop waits for both (step 12). The step-6
    score is the highest, but its last validation loss (step 4: 0.60) is over 5 % above the lowest so far (0.40 at
    step 2): not crowned."""
    proc = _train(tmp_path, ["--consistency_monitor", "both", "--consistency_scorer", "fake_scorers:scripted"],
                  "0.40,0.60,0.38,0.35,0.36,0.37,0.38", scores="0.5,0.7,0.9,0.6,0.6,0.6,0.6")
    out = tmp_path / "out"
    board = Leaderboard.load(out / "consistency").rows
    assert [(r["kohya_step"], r["score"], r.get("val_loss"), r.get("val_loss_step")) for r in board][:4] == [
        (2, 0.5, None, None), (4, 0.7, 0.4, 2), (6, 0.9, 0.6, 4), (8, 0.6, 0.38, 6)]
    assert board[2].get("val_loss_diverging") and not board[2]["is_best"]
    assert [r["kohya_step"] for r in board if r["is_best"]] == [4]
    # the stop comes at step 12's validation (after step 12's consistency evaluation): in run.json and the log
    run = json.loads((out / "consistency" / "run.json").read_text())
    assert board[-1]["kohya_step"] == 12 and run["stopped"]["kohya_step"] == 12 and "neither consistency/score" in run["stopped"]["message"]
    assert "early stop at step 12: neither" in proc.stdout
    assert max(_steps(tmp_path)) == 12
    assert read_metadata(out / "tiny-best.safetensors")[META_STEP] == "4"
    # no evaluation row carries that stop: the HTML report reads it from run.json
    from kohya_ext.posthoc.report_html import collect

    stop = collect(out, logging_dir=tmp_path / "logs").stop
    assert stop is not None and stop["row"]["kohya_step"] == 12 and "neither consistency/score" in stop["message"]


def test_flags_checked_before_anything_is_spent(tmp_path):
    h.make_dataset(tmp_path, 4)
    base = h.base_args(tmp_path, steps=4) + ["--consistency", "--consistency_monitor"]
    no_log = h.run_trainer(tmp_path, base + ["val_loss", "--validation_split", "0.25"])
    assert no_log.returncode != 0 and "add --logging_dir DIR" in no_log.stderr and "Traceback" not in no_log.stderr
    no_split = h.run_trainer(tmp_path, base + ["val_loss", "--logging_dir", str(tmp_path / "logs")])
    assert no_split.returncode != 0 and "add --validation_split 0.1" in no_split.stderr
    wrong = h.run_trainer(tmp_path, base + ["loss"])
    assert wrong.returncode != 0 and "invalid choice: 'loss'" in wrong.stderr and "val_loss" in wrong.stderr
    assert not any(t["hook"] == "sample_images" for t in h.read_trace(tmp_path / "trace.jsonl"))


def test_resume_keeps_the_validation_loss_patience(tmp_path):
    """Run 1 (4 steps, states saved): 0.50, 0.40. Run 2 resumes from the step-4 state: 0.45, 0.47 exhaust patience 2
    only if the count carried over (a fresh one would crown 0.45 and go on)."""
    _train(tmp_path, ["--consistency_monitor", "val_loss", "--save_state"], "0.50,0.40", steps=4)
    out = tmp_path / "out"
    (tmp_path / "trace.jsonl").unlink()
    proc = _train(tmp_path, ["--consistency_monitor", "val_loss", "--save_state"], "0.45,0.47,0.30,0.20",
                  resume=str(out / "tiny-step00000004-state"))
    board = Leaderboard.load(out / "consistency").rows
    assert [(r["cum_step"], r["val_loss"], r["es_wait"]) for r in board] == [(2, 0.5, 0), (4, 0.4, 0), (6, 0.45, 1), (8, 0.47, 2)]
    assert board[-1]["stop_reason"] == "patience_exhausted" and max(_steps(tmp_path)) == 4
    assert read_metadata(out / "tiny-best.safetensors")[META_STEP] == "4" and "resumed from" in proc.stdout
