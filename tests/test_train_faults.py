"""Fault injection on the stand-in loop (tests/standin/faults/sitecustomize.py): wherever kohya-ext is the
only thing failing, training completes with exit 0 and what kohya-ext records and says is true."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kohya_ext.training.best import META_STEP, read_metadata
from kohya_ext.training.leaderboard import Leaderboard

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

FAULTS = Path(__file__).parent / "standin" / "faults"
SCORES = "0.5,0.8,0.6,0.9"  # evaluations at steps 2, 4, 6, 8: new bests at 2, 4 and 8
OURS = "leaderboard.*|run.json|*-best.safetensors|report.json"  # after the images are in place (next test: before)


def _train(tmp_path: Path, fault: str, skip: int = 0, extra: list[str] | None = None):
    h.make_dataset(tmp_path, 4)
    args = h.base_args(tmp_path, steps=8, save_every=2) + [
        "--logging_dir", str(tmp_path / "logs"), "--log_with", "tensorboard",
        "--consistency", "--consistency_scorer", "fake_scorers:scripted", *(extra or [])]
    env = {"FAKE_SCORES": SCORES, "FAKE_COUNTER": str(tmp_path / "counter"), "PYTHONPATH": str(FAULTS),
           "KOHYA_EXT_FAULT": fault, "KOHYA_EXT_FAULT_SKIP": str(skip), "KOHYA_EXT_FAULT_LOG": str(tmp_path / "faults.log")}
    proc = h.run_trainer(tmp_path, args, env=env)
    injected = (tmp_path / "faults.log").read_text().splitlines() if (tmp_path / "faults.log").exists() else []
    return proc, injected


def _completed(proc, out: Path) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert read_metadata(out / "tiny.safetensors")["ss_steps"] == "8"  # kohya's final save happened
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def _end_line(proc) -> str:
    return [ln for ln in proc.stdout.splitlines() if ln.startswith("kohya-ext: best consistency") or
            ln.startswith("kohya-ext: no best checkpoint")][-1]


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_every_kohya_ext_write_failing_costs_nothing_and_is_said(tmp_path, code):
    proc, injected = _train(tmp_path, f"write:{code}:{OURS}")
    out = tmp_path / "out"
    _completed(proc, out)
    names = {line.split()[1] for line in injected}
    assert {"leaderboard.json", "run.json", "tiny-best.safetensors", "report.json"} <= names, names
    assert not (out / "tiny-best.safetensors").exists() and not (out / "consistency" / "leaderboard.json").exists()
    end = _end_line(proc)
    assert "-> tiny-best" not in end and "tiny-best.safetensors was not written" in end, end
    assert "NOT WRITTEN: leaderboard.json" in end and "NOT WRITTEN: run.json" in end, end
    assert proc.stdout.count("cannot write") == len({"leaderboard.json", "run.json"}), proc.stdout  # once per file, not per evaluation
    tb = h.read_tensorboard(tmp_path / "logs")
    assert [s for s, _ in tb["consistency/score"]] == [2, 4, 6, 8]  # the numbers still reached TensorBoard


def test_evaluation_images_that_cannot_be_collected_fail_the_evaluation_not_the_run(tmp_path):
    proc, injected = _train(tmp_path, "write:ENOSPC:[0-9][0-9].png")
    out = tmp_path / "out"
    _completed(proc, out)
    assert "ENOSPC 00.png" in injected
    rows = Leaderboard.load(out / "consistency").rows
    assert [r["status"] for r in rows] == ["failed"] * 4 and all("collecting the images failed" in r["error"] for r in rows)
    assert not (out / "tiny-best.safetensors").exists()
    assert _end_line(proc).startswith("kohya-ext: no best checkpoint: 4 evaluation(s): 0 scored, 4 failed")


def test_a_full_disk_during_a_best_copy_leaves_the_old_copy_and_says_so(tmp_path):
    """The copies at steps 2 and 4 succeed, the one at step 8 meets a full disk."""
    proc, injected = _train(tmp_path, "write:ENOSPC:tiny-best.safetensors", skip=2)
    out = tmp_path / "out"
    _completed(proc, out)
    assert injected and all("tiny-best.safetensors" in line for line in injected)
    assert read_metadata(out / "tiny-best.safetensors")[META_STEP] == "4"  # the old copy, intact
    board = Leaderboard.load(out / "consistency")
    best = board.best()
    assert best["kohya_step"] == 8 and best["best_copy"].startswith("failed: OSError") and "No space left" in best["best_copy"]
    assert board.best_file["holds"]["cum_step"] == 4 and "No space left" in board.best_file["error"]
    run = json.loads((out / "consistency" / "run.json").read_text())
    assert run["best"]["kohya_step"] == 8 and run["best_file"]["holds"]["cum_step"] == 4 and run["best_file"]["error"]
    end = _end_line(proc)
    assert "tiny-step00000008.safetensors; copying it failed" in end and "tiny-best.safetensors holds cumulative step 4" in end, end


def test_a_leaderboard_that_cannot_be_written_does_not_stop_the_best_copy(tmp_path):
    proc, injected = _train(tmp_path, "write:ENOSPC:leaderboard.*")
    out = tmp_path / "out"
    _completed(proc, out)
    assert read_metadata(out / "tiny-best.safetensors")[META_STEP] == "8"
    run = json.loads((out / "consistency" / "run.json").read_text())
    assert run["best"]["kohya_step"] == 8 and "leaderboard.json" in run["write_errors"]
    end = _end_line(proc)
    assert "-> tiny-best.safetensors" in end and "NOT WRITTEN: leaderboard.json" in end, end


def test_every_tracker_call_raising_costs_a_warning_each(tmp_path):
    proc, injected = _train(tmp_path, "tracker")
    out = tmp_path / "out"
    _completed(proc, out)
    assert injected, "no tracker call was intercepted"
    run = json.loads((out / "consistency" / "run.json").read_text())
    assert set(run["tracker_errors"]) >= {"tensorboard.setup", "tensorboard.log_scalars", "tensorboard.flush"}, run["tracker_errors"]
    assert read_metadata(out / "tiny-best.safetensors")[META_STEP] == "8"
    assert [r["kohya_step"] for r in Leaderboard.load(out / "consistency").rows] == [2, 4, 6, 8]
    tb = h.read_tensorboard(tmp_path / "logs")
    assert "consistency/score" not in tb and max(s for s, _ in tb["loss/average"]) == 8  # kohya's own logging went on


@pytest.mark.parametrize("target", ["leaderboard.json", "tiny-best.safetensors"])
def test_a_kill_during_a_write_leaves_the_previous_complete_file(tmp_path, target):
    proc, injected = _train(tmp_path, f"kill:{target}", skip=1)
    out = tmp_path / "out"
    assert proc.returncode == -9 and injected == [f"KILL {target}"], (proc.returncode, injected)
    board = Leaderboard.load(out / "consistency")  # parses: the previous version, whole
    assert board.rows and board.rows[0]["kohya_step"] == 2
    assert read_metadata(out / "tiny-best.safetensors")[META_STEP] == "2"


def test_a_read_only_output_folder_is_one_line_before_anything_is_spent(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc, injected = _train(tmp_path, f"readonly:{out}")
    assert injected and proc.returncode == 2, (proc.returncode, injected)
    errors = [ln for ln in proc.stderr.splitlines() if "kohya-ext: error:" in ln]
    assert len(errors) == 1 and "cannot write there" in errors[0] and "--output_dir" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not any(t["hook"] == "sample_images" for t in h.read_trace(tmp_path / "trace.jsonl"))  # no step was trained
