"""Real sd-scripts' own validation loss and kohya-ext's evaluations in the same training (tiny SD1.x, CPU).

sd-scripts v0.10+ splits a validation set off the training images (``--validation_split``) and
computes a validation loss every ``--validate_every_n_steps`` and at each epoch end, under its own
seed, restoring the training RNG afterwards. kohya-ext renders and scores at the same save steps.
Neither may disturb the other: the same run with and without ``--consistency`` must train on the
same batches to the same losses (every training and validation loss in TensorBoard equal), and
kohya-ext must evaluate at the same steps as it does without a validation set.

Needs KOHYA_SD_SCRIPTS and KOHYA_SD_PYTHON (else skipped, saying which); run by
scripts/test_sd_checkout.sh. About 6 minutes on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("real_sd_test", REPO / "tests" / "test_train_sd_scripts.py")
real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real)  # the harness, the checkout variables, the tiny model and their skip reasons

h = real.h
SD, PY = real.SD, real.PY
pytestmark = real.pytestmark

VALIDATION = ["--validation_split", "0.5", "--validate_every_n_steps", "2", "--validation_seed", "7"]


def _run(root: Path, tiny: dict, extra: list[str]):
    """``python -m kohya_ext train_network.py`` on the tiny model with a validation split, output in ``root/out``
    (``root`` may hold an earlier leg's output: ``--resume``). Asserts exit 0; returns the process."""
    root.mkdir(exist_ok=True)
    env = {"PYTHONPATH": str(real._overlay(root)), "OMP_NUM_THREADS": "2"}
    proc = h.run_trainer(root, real._args(tiny, root / "out") + VALIDATION + extra, env=env, sd_scripts=Path(SD), python=PY,
                         timeout=1500)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


def _train(root: Path, tiny: dict, extra: list[str]) -> dict[str, list[tuple[int, float]]]:
    _run(root, tiny, extra)
    return h.read_tensorboard(root / "out" / "logs")


def _reference(tmp_path: Path, tadne_tiles) -> Path:
    """8 full-size portraits (the 64 px renders hold no face)."""
    from PIL import Image

    ref = tmp_path / "reference"
    ref.mkdir()
    for i in range(8):
        Image.fromarray(tadne_tiles[i]).save(ref / f"{i:02d}.png")
    return ref


def _needs_validation() -> None:
    if not (Path(SD) / "train_network.py").is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no train_network.py")
    if "--validation_split" not in (Path(SD) / "train_network.py").read_text(encoding="utf-8"):
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} predates sd-scripts' validation loss (v0.10)")


def test_validation_loss_and_consistency_share_a_run_without_disturbing_each_other(tmp_path, tadne_tiles):
    _needs_validation()
    tiny = real._tiny()
    ref = _reference(tmp_path, tadne_tiles)
    ours = ["--consistency", "--consistency_backend", "nvxs", "--consistency_prompts", tiny["prompts_file"],
            "--consistency_reference", str(ref)]

    plain = _train(tmp_path / "plain", tiny, [])
    both = _train(tmp_path / "both", tiny, ours)

    val_steps = [s for s, _ in both["loss/validation/step_average"]]
    assert sorted(val_steps) == [2, 4], both["loss/validation/step_average"]
    assert any(k.startswith("loss/validation/epoch") for k in both), sorted(both)
    # Every loss sd-scripts logs, training and validation, per step and per epoch: equal to the digit.
    for tag in sorted(k for k in plain if k.startswith("loss/")):
        assert sorted(both[tag]) == sorted(plain[tag]), (tag, plain[tag], both[tag])
    assert sorted(s for s, _ in both["consistency/score"]) == [2, 4]
    assert not any(k.startswith("consistency/") for k in plain)

    board = json.loads((tmp_path / "both" / "out" / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["kohya_step"], r["trigger"], r["status"]) for r in board] == [(2, "step_save", "ok"), (4, "step_save", "ok")]
    # The user's own samples are the same pictures with and without kohya-ext's renders in between.
    def samples(run: str) -> dict[str, bytes]:  # sd-scripts names them <name>_<step>_<index>_<time>_<seed>.png
        return {re.sub(r"_\d{14}_", "_", p.name): p.read_bytes() for p in (tmp_path / run / "out" / "sample").glob("*.png")}

    plain_samples = samples("plain")
    assert len(plain_samples) == 4 and samples("both") == plain_samples


def test_validation_loss_stops_the_run_and_best_holds_the_first_validation(tmp_path):
    """``--consistency_monitor val_loss`` on real sd-scripts: no reference, nothing rendered. A min_delta no loss
    can beat makes the second validation the stop (patience 1), whatever the tiny model's losses are: the run ends
    there, ``-best`` holds the first validation's weights and the final file the stop step's."""
    _needs_validation()
    from kohya_ext.training.best import META_STEP, META_VAL_LOSS, read_metadata

    tiny = real._tiny()
    out = tmp_path / "val" / "out"
    proc = _run(out.parent, tiny, ["--max_train_steps", "8", "--consistency", "--consistency_monitor", "val_loss",
                                   "--consistency_patience", "1", "--consistency_min_delta", "100"])
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert len(board) == 2 and board[0]["is_best"] and board[1]["stop_reason"] == "patience_exhausted", board
    first, stop = board[0]["kohya_step"], board[1]["kohya_step"]
    tb = h.read_tensorboard(out / "logs")
    logged = sorted(tb.get("loss/validation/step_average", []) + tb.get("loss/validation/epoch_average", []))
    assert board[0]["val_loss"] == pytest.approx(next(v for s, v in logged if s == first), rel=1e-6)
    assert max(s for s, _ in tb["loss/current"]) == stop < 8  # no optimizer step after the stop
    best = read_metadata(out / "tiny-best.safetensors")
    assert best[META_STEP] == str(first) and best["ss_steps"] == str(first) and META_VAL_LOSS in best
    assert not list((out / "consistency").glob("eval-*")) and "consistency reference ready" not in proc.stdout


def test_both_signals_on_real_sd_scripts(tmp_path, tadne_tiles):
    """``--consistency_monitor both``: every evaluation carries the last validation loss sd-scripts logged at or
    before it (the evaluation runs before that step's validation); with a min_delta nothing can beat, the run stops
    once both signals have spent patience 1, at an evaluation or a validation, and no step runs after it."""
    _needs_validation()
    from kohya_ext.training.best import META_STEP, read_metadata

    tiny = real._tiny()
    ref = _reference(tmp_path, tadne_tiles)
    out = tmp_path / "both" / "out"
    proc = _run(out.parent, tiny, ["--max_train_steps", "8", "--consistency", "--consistency_backend", "nvxs",
                                   "--consistency_prompts", tiny["prompts_file"], "--consistency_reference", str(ref),
                                   "--consistency_monitor", "both", "--consistency_patience", "1", "--consistency_min_delta", "100"])
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    run = json.loads((out / "consistency" / "run.json").read_text())
    logged = {(v["kohya_step"], v["value"]) for v in run["validation"]}
    assert board[0]["is_best"] and board[0].get("val_loss") is None  # step 2: its validation comes after it
    for r in board[1:]:
        assert (r["val_loss_step"], r["val_loss"]) in logged and r["val_loss_step"] <= r["kohya_step"]
    stop = run["stopped"]["kohya_step"]
    assert "neither consistency/score" in run["stopped"]["message"] and stop < 8
    assert proc.stdout.count("early stop at step") == 1  # validations after the stop (same step) are not counted
    tb = h.read_tensorboard(out / "logs")
    assert max(s for s, _ in tb["loss/current"]) == stop
    assert read_metadata(out / "tiny-best.safetensors")[META_STEP] == str(board[0]["cum_step"])


def test_resume_keeps_the_validation_loss_patience_on_real_sd_scripts(tmp_path):
    """Leg 1 (4 steps, states saved) spends the validation-loss patience (3, min_delta nothing can beat) at its
    last step; leg 2 ``--resume``s from the step-4 state: a carried-over count stops at leg 2's first validation,
    a fresh one would need three more."""
    _needs_validation()
    tiny = real._tiny()
    out = tmp_path / "resume" / "out"
    ours = ["--save_state", "--consistency", "--consistency_monitor", "val_loss", "--consistency_patience", "3",
            "--consistency_min_delta", "100"]
    _run(out.parent, tiny, ours)
    n1 = len(json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"])
    state = out / "tiny-step00000004-state"
    assert (state / "kohya_ext_consistency.json").is_file()
    leg2 = _run(out.parent, tiny, ours + ["--max_train_steps", "8", "--resume", str(state)])
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    new = [r for r in board if (r.get("segment") or 0) == 1]
    assert len(new) == 1 and new[0]["es_wait"] >= 3 and new[0]["stop_reason"] == "patience_exhausted", board
    assert new[0]["cum_step"] > 4 and len(board) == n1 + 1 and "resumed from" in leg2.stdout
