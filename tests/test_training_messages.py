"""The training-log lines (kohya_ext.training.messages): pure functions of plain values."""

from __future__ import annotations

from kohya_ext.training import messages


def test_say_prints_one_prefixed_line(capsys):
    messages.say("hello")
    assert capsys.readouterr().out == "kohya-ext: hello\n"


def test_reference_ready_with_and_without_characters():
    info = {"counts": {"usable": 7, "images": 9}, "characters": {"alice": {"usable": 4}}}
    line = messages.reference_ready(1.25, info, 3, 600.0, None)
    assert line == "consistency reference ready in 1.2 s (7 usable faces of 9 images; 3 prompts; scoring deadline 600 s)"
    line = messages.reference_ready(1.0, info, 3, 600.0, ["alice", "bob", "alice"])
    assert line.endswith("; characters scored against their own reference: alice (2 prompts, 4 faces), bob (1 prompts, ? faces)")
    assert "(? usable faces of ? images" in messages.reference_ready(1.0, {}, 3, 600.0, None)


def test_evaluation_line_names_a_new_best_or_a_memorised_one():
    row = {"score": 0.71234, "detection_rate": 0.75, "is_best": True, "memorization": 0.6, "memorized": False}
    assert messages.evaluation(8, "step_save", row, 0.5) == "step 8 (step_save): consistency 0.7123, detection 75% - new best"
    line = messages.evaluation(8, "final", {**row, "is_best": False, "memorized": True}, 0.5)
    assert line == "step 8 (final): consistency 0.7123, detection 75% (memorised: 60% near-copies of training images > 50%: not crowned best)"


def test_fit_end_names_the_best_and_the_stop():
    rows = [{"status": "ok"}, {"status": "failed"}, {"status": "ok"}]
    held = {"file": "x-best.safetensors", "holds": None, "error": None, "pending": None}
    assert messages.fit_end(rows, None, held, None, {}) == "no best checkpoint: 3 evaluation(s): 2 scored, 1 failed"
    best = {"eval": 3, "score": 0.7, "kohya_step": 4, "cum_step": 10, "epoch": 2, "checkpoint": "x-step00000004.safetensors"}
    held["holds"] = {"eval": 3, "cum_step": 10}
    line = messages.fit_end(rows, best, held, "patience exhausted", {})
    assert line == ("best consistency 0.7000 at step 4 (cumulative 10, epoch 2, x-step00000004.safetensors -> x-best.safetensors); "
                    "3 evaluation(s): 2 scored, 1 failed; stopped early: patience exhausted")
    assert "stopped early" not in messages.fit_end(rows, best, held, None, {})


def test_fit_end_never_names_a_best_file_that_does_not_hold_the_best():
    rows = [{"status": "ok"}] * 2
    best = {"eval": 2, "score": 0.7, "kohya_step": 6, "cum_step": 6, "epoch": 3, "checkpoint": "x-step00000006.safetensors"}
    failed = {"file": "x-best.safetensors", "holds": {"eval": 1, "cum_step": 2}, "error": "OSError: [Errno 28] No space left on device",
              "pending": None}
    line = messages.fit_end(rows, best, failed, None, {"leaderboard.json": "OSError: [Errno 28] No space left on device"})
    assert "-> x-best" not in line
    assert ("x-step00000006.safetensors; copying it failed (OSError: [Errno 28] No space left on device): "
            "x-best.safetensors holds cumulative step 2") in line
    assert line.endswith("; NOT WRITTEN: leaderboard.json (OSError: [Errno 28] No space left on device)")
    never = {**failed, "holds": None}
    assert "x-best.safetensors was not written" in messages.fit_end(rows, best, never, None, {})
    over = {**best, "checkpoint_overwritten": "at cumulative step 8; no file holds these weights now"}
    assert "x-step00000006.safetensors was overwritten at cumulative step 8; no file holds these weights now" in \
        messages.fit_end(rows, over, {**failed, "holds": {"eval": 2}}, None, {})


def test_resumed_counts():
    best = {"score": 0.5, "cum_step": 6}
    assert messages.resumed([{}, {}], [], None, None) == "2 evaluation(s) kept"
    assert messages.resumed([{}], [{}], best, 1) == ("1 evaluation(s) kept, 1 from the replaced continuation set aside; "
                                                     "best consistency 0.5000 at cumulative step 6; 1 evaluation(s) without improvement so far")
    assert "best validation loss 0.3000 at cumulative step 4" in messages.resumed([{}], [], {"val_loss": 0.3, "cum_step": 4}, None)
