"""The extension inside the stand-in sd-scripts loop (tests/standin), end to end, in subprocesses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)


def _fake(root: Path, script: str) -> dict:
    return {"FAKE_SCORES": script, "FAKE_COUNTER": str(root / "counter")}


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _board(root: Path) -> list[dict]:
    return json.loads((root / "out" / "consistency" / "leaderboard.json").read_text())["evaluations"]


def _steps(trace: list[dict]) -> list[int]:
    """Optimizer steps the loop ran (the sample hook follows every one, with epoch None)."""
    return [t["step"] for t in trace if t["hook"] == "sample_images" and t["epoch"] is None and t["step"] > 0]


def test_tensorboard_and_wandb_get_consistency_at_the_loss_steps(tmp_path, tadne_tiles):
    """Real nvxs scoring; TensorBoard at step=global_step, wandb with global_step in the row and
    no step argument; summary, config, landmark grid; the best copy's metadata names its step."""
    h.make_dataset(tmp_path, 8, tadne_tiles[:8], size=128)
    faces = tmp_path / "faces"
    faces.mkdir()
    from PIL import Image

    for i in range(8, 12):
        Image.fromarray(tadne_tiles[i]).resize((128, 128)).save(faces / f"{i:02d}.png")
    args = h.base_args(tmp_path, steps=4, save_every=2) + [
        "--resolution", "128", "--logging_dir", str(tmp_path / "logs"), "--log_with", "all", "--standin_faces", str(faces),
        "--consistency", "--consistency_backend", "nvxs"]
    proc = h.run_trainer(tmp_path, args)
    _ok(proc)
    tb = h.read_tensorboard(tmp_path / "logs")
    loss_steps = {s for s, _ in tb["loss/average"]}
    score_steps = sorted(s for s, _ in tb["consistency/score"])
    assert score_steps == [2, 4] and set(score_steps) <= loss_steps
    assert {s for s, _ in tb["consistency/detection_rate"]} == {2, 4}
    assert any(k.endswith("_diff_pct") for k in tb) and any(k.endswith("_z") for k in tb)
    assert sorted(s for s, _ in tb["image:consistency/landmarks"]) == [2, 4]
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = next((tmp_path / "logs").glob("*/**/events.out.tfevents.*"))
    acc = EventAccumulator(str(ev), size_guidance={"tensors": 0})
    acc.Reload()
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert {"loss/average", "consistency/score"} <= set(charts["loss and consistency"])

    run_file = next((tmp_path / "logs").glob("*/wandb/offline-run-*/run-*.wandb"))
    history, summary, config = h.read_wandb(run_file)
    scored = [r for r in history if "consistency/score" in r]
    assert [r["global_step"] for r in scored] == [2, 4]
    grids = [r for r in history if r.get("consistency/landmarks/_type") == "image-file"]  # nested keys, flattened
    assert [r["global_step"] for r in grids] == [2, 4]
    assert all("global_step" in r for r in history if "loss/current" in r)
    metrics = h.read_wandb_metrics(run_file)  # the charts' x-axis: global_step, not wandb's _step
    assert "global_step" in metrics
    assert all(metrics.get(p, {}).get("step_metric") == "global_step" for p in ("consistency/*", "loss/*", "lr/*")), metrics
    board = _board(tmp_path)
    best = next(r for r in board if r["is_best"])
    assert summary["consistency/best_score"] == pytest.approx(best["score"]) and summary["consistency/best_step"] == best["kohya_step"]
    assert config["consistency_backend"] == "nvxs"
    assert [r["status"] for r in board] == ["ok", "ok"] and all(0 <= r["score"] <= 1 for r in board)

    from kohya_ext.training.best import read_metadata

    meta = read_metadata(tmp_path / "out" / "tiny-best.safetensors")
    assert meta["kohya_ext_consistency_step"] == str(best["cum_step"]) == meta["ss_steps"]
    run = json.loads((tmp_path / "out" / "consistency" / "run.json").read_text())
    assert Path(run["tensorboard_dir"]).is_dir() and str(tmp_path / "logs") in run["tensorboard_dir"]
    assert (tmp_path / "out" / "consistency" / "eval-00000002" / "overlay_grid.png").is_file()
    assert not list((tmp_path / "out" / "sample").glob("*")) if (tmp_path / "out" / "sample").exists() else True
    out = proc.stdout + proc.stderr  # each kohya-ext message once: printed, not logged as well
    assert out.count("best consistency") == 1 and out.count("consistency reference ready") == 1 and "best consistency" in proc.stdout
    assert out.count("step 2 (step_save): consistency") == 1


def test_scorer_raise_segfault_and_hang_do_not_stop_training(tmp_path):
    h.make_dataset(tmp_path, 4)
    args = h.base_args(tmp_path, steps=8, save_every=2) + [
        "--consistency", "--consistency_scorer", "fake_scorers:scripted", "--consistency_timeout", "20"]
    # 20 s: a restarted worker must load within the next evaluation's deadline, which takes
    # several seconds on a loaded 2-core machine (the hang itself is killed at the deadline)
    proc = h.run_trainer(tmp_path, args, env=_fake(tmp_path, "raise,segv,hang,0.7"))
    _ok(proc)
    board = _board(tmp_path)
    assert [r["status"] for r in board] == ["failed", "failed", "failed", "ok"]
    assert "RuntimeError" in board[0]["error"] and "SIGSEGV" in board[1]["error"] and "deadline" in board[2]["error"]
    assert board[3]["is_best"] and board[3]["checkpoint"] == "tiny-step00000008.safetensors"
    assert _steps(h.read_trace(tmp_path / "trace.jsonl")) == list(range(1, 9))
    from kohya_ext.training.best import read_metadata

    assert read_metadata(tmp_path / "out" / "tiny.safetensors")["ss_steps"] == "8"


def test_early_stop_exact_step_and_best_copy_survives_rotation(tmp_path):
    """Patience 2 stops at the 4th evaluation (step 8, mid-epoch): no optimizer step after it, the
    final file holds step 8, and the best copy (step 4, rotated away by --save_last_n_steps) stays."""
    h.make_dataset(tmp_path, 6)
    args = h.base_args(tmp_path, steps=30, save_every=2) + [
        "--save_last_n_steps", "2", "--logging_dir", str(tmp_path / "logs"), "--log_with", "tensorboard",
        "--consistency", "--consistency_scorer", "fake_scorers:scripted", "--consistency_patience", "2"]
    proc = h.run_trainer(tmp_path, args, env=_fake(tmp_path, "0.5,0.8,0.6,0.55,0.9,0.9"))
    _ok(proc)
    trace = h.read_trace(tmp_path / "trace.jsonl")
    assert _steps(trace) == list(range(1, 9))
    assert max(t["step"] for t in trace if t["hook"] == "step_logging") == 8
    board = _board(tmp_path)
    assert [r["kohya_step"] for r in board] == [2, 4, 6, 8] and board[-1]["stop"] and board[-1]["stop_reason"] == "patience_exhausted"
    out = tmp_path / "out"
    assert not (out / "tiny-step00000004.safetensors").exists()  # rotated away by kohya
    from kohya_ext.training.best import read_metadata

    best = read_metadata(out / "tiny-best.safetensors")
    assert best["kohya_ext_consistency_step"] == "4" == best["ss_steps"] and float(best["kohya_ext_consistency_score"]) == 0.8
    final = read_metadata(out / "tiny.safetensors")
    assert final["ss_steps"] == "8" and "patience" in final["kohya_ext_early_stop"]
    tb = h.read_tensorboard(tmp_path / "logs")
    assert max(s for s, _ in tb["loss/average"]) == 8
    assert "early stop at step 8" in proc.stdout


def test_two_gloo_processes_stop_at_the_same_step_despite_a_hang(tmp_path, accelerate_version):
    """Two ranks, a short collective timeout (30 s): the hung scoring is killed at its deadline
    (capped at half the timeout) while rank 1 waits, and both ranks stop at step 8. Run with the
    venv's accelerate and with sd-scripts' pinned 1.6.0 (conftest.accelerate_version): since 1.13
    accelerate types this CPU-only run NO and its own barrier and broadcast do nothing.

    (With a 15 s timeout this passed on a quiet machine but failed once on two cores shared with
    other heavy jobs: the worker restart and kill then ate the other half of the timeout.)"""
    h.make_dataset(tmp_path, 12)
    args = h.base_args(tmp_path, steps=16, save_every=2) + [
        "--ddp_timeout", "0.5", "--consistency", "--consistency_scorer", "fake_scorers:scripted",
        "--consistency_patience", "2", "--consistency_timeout", "60"]
    proc = h.run_trainer(tmp_path, args, env=_fake(tmp_path, "0.5,hang,0.4,0.3"), nproc=2)
    _ok(proc)
    ranks = [ln for ln in proc.stdout.splitlines() if ln.startswith("kohya-ext: 2 ranks (")]
    assert len(ranks) == 1 and f"(accelerate {accelerate_version}, " in ranks[0] and "broadcast" in ranks[0], proc.stdout[-3000:]
    t0 = h.read_trace(tmp_path / "trace.jsonl")
    t1 = h.read_trace(tmp_path / "trace.jsonl.rank1")
    assert _steps(t0) == _steps(t1) == list(range(1, 9))
    assert [t for t in t0 if t["hook"] == "train_end"][0]["step"] == [t for t in t1 if t["hook"] == "train_end"][0]["step"] == 8
    board = _board(tmp_path)
    assert [r["status"] for r in board] == ["ok", "failed", "ok", "ok"] and "15 s deadline" in board[1]["error"]
    assert "early stop at step 8" in proc.stdout


def test_reference_without_faces_fails_before_the_first_step(tmp_path):
    h.make_dataset(tmp_path, 4)  # flat grey pictures: no face anywhere
    proc = h.run_trainer(tmp_path, h.base_args(tmp_path) + ["--consistency", "--consistency_backend", "nvxs"])
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("kohya-ext: error:")]
    assert len(err) == 1 and "face" in err[0]
    assert not [t for t in h.read_trace(tmp_path / "trace.jsonl") if t["hook"] == "sample_images"]
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_help_group_toml_keys_and_clear_errors(tmp_path):
    h.make_dataset(tmp_path, 4)
    proc = h.run_trainer(tmp_path, ["--help"])
    assert proc.returncode == 0 and "kohya-ext consistency:" in proc.stdout and "--consistency_patience" in proc.stdout
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[consistency]\nconsistency = true\nconsistency_patience = "soon"\n')
    proc = h.run_trainer(tmp_path, h.base_args(tmp_path) + ["--config_file", str(cfg)])
    assert proc.returncode == 2 and "consistency_patience" in proc.stderr and "'soon'" in proc.stderr
    proc = h.run_trainer(tmp_path, ["nope_train_network.py"], env={"KOHYA_SD_SCRIPTS": str(tmp_path)})
    assert proc.returncode == 2 and "KOHYA_SD_SCRIPTS" in proc.stderr


def test_resume_continues_history_patience_and_keeps_the_best_copy(tmp_path):
    """Run 1 (4 steps, states saved) scores 0.5, 0.8. Run 2 resumes from the step-4 state with
    kohya's global_step back at 0: 0.6, 0.7, 0.65 exhaust patience 3 only if the count carried
    over (a fresh count would see two improvements and go on to step 8). kohya overwrites
    tiny-step00000004 at its new step 4; the best copy still holds run 1's step-4 weights."""
    from safetensors.torch import load_file

    from kohya_ext.training.best import read_metadata

    h.make_dataset(tmp_path, 4)  # 4 steps per epoch
    common = ["--save_state", "--consistency", "--consistency_scorer", "fake_scorers:scripted", "--consistency_patience", "3"]
    env = _fake(tmp_path, "0.5,0.8,0.6,0.7,0.65,0.9")
    _ok(h.run_trainer(tmp_path, h.base_args(tmp_path, steps=4, save_every=2) + common, env=env))
    out = tmp_path / "out"
    run1_step4 = load_file(out / "tiny-step00000004.safetensors")
    assert (out / "tiny-step00000004-state" / "kohya_ext_consistency.json").is_file()

    (tmp_path / "trace.jsonl").unlink()
    proc = h.run_trainer(tmp_path, h.base_args(tmp_path, steps=12, save_every=2) + common
                         + ["--resume", str(out / "tiny-step00000004-state")], env=env)
    _ok(proc)
    board = _board(tmp_path)
    assert [(r["cum_step"], r["kohya_step"], r["segment"]) for r in board] == [(2, 2, 0), (4, 4, 0), (6, 2, 1), (8, 4, 1), (10, 6, 1)]
    assert [r["es_wait"] for r in board] == [0, 0, 1, 2, 3] and board[-1]["stop_reason"] == "patience_exhausted"
    assert _steps(h.read_trace(tmp_path / "trace.jsonl")) == list(range(1, 7))
    best = next(r for r in board if r["is_best"])
    assert (best["cum_step"], best["score"]) == (4, 0.8)
    meta = read_metadata(out / "tiny-best.safetensors")
    assert meta["kohya_ext_consistency_step"] == "4" and meta["kohya_ext_consistency_score"] == "0.800000"
    copy, overwritten = load_file(out / "tiny-best.safetensors"), load_file(out / "tiny-step00000004.safetensors")
    assert all((copy[k] == run1_step4[k]).all() for k in run1_step4)
    assert any((overwritten[k] != run1_step4[k]).any() for k in run1_step4)  # kohya's step-4 file is now run 2's
    assert "resumed from" in proc.stdout and "cumulative step 4" in proc.stdout
    # the leaderboard says which evaluations lost their file, and where the weights still are
    assert [r.get("checkpoint_overwritten") for r in board] == [
        "at cumulative step 6; no file holds these weights now", "at cumulative step 8; these weights are in tiny-best.safetensors",
        None, None, None]
    doc = json.loads((out / "consistency" / "leaderboard.json").read_text())
    assert doc["best"]["checkpoint_overwritten"].endswith("tiny-best.safetensors") and doc["best_file"]["holds"]["cum_step"] == 4
    assert "tiny-step00000004.safetensors was written again at cumulative step 8" in proc.stdout


def test_several_characters_scored_against_their_own_reference(tmp_path):
    """Two class tokens: each prompt goes to the character its text names; per-character
    scalars and the combined score (weighted by images: alice 2, bob 1) at the loss steps."""
    h.make_dataset(tmp_path, 2, caption="alice")
    (tmp_path / "train" / "1_sks").rename(tmp_path / "train" / "1_alice")
    bob = tmp_path / "train" / "1_bob"
    bob.mkdir()
    for f in (tmp_path / "train" / "1_alice").iterdir():
        (bob / f.name).write_bytes(f.read_bytes())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("alice smiling --d 1\nbob running --d 2\nalice at the beach --d 3\n")
    args = h.base_args(tmp_path, steps=2, save_every=2) + [
        "--logging_dir", str(tmp_path / "logs"), "--log_with", "tensorboard", "--consistency",
        "--consistency_scorer", "fake_scorers:by_character", "--consistency_prompts", str(prompts)]
    proc = h.run_trainer(tmp_path, args, env=_fake(tmp_path, "0.6,0.8"))
    _ok(proc)
    tb = h.read_tensorboard(tmp_path / "logs")
    assert tb["consistency/character/alice/score"] == [(2, pytest.approx(0.6))]
    assert tb["consistency/character/bob/score"] == [(2, pytest.approx(0.8))]
    assert tb["consistency/score"] == [(2, pytest.approx((2 * 0.6 + 0.8) / 3))]
    row = _board(tmp_path)[0]
    assert row["characters"] == "alice=0.600000;bob=0.800000" and row["character_details"]["alice"]["images"] == 2
    assert "alice (2 prompts" in proc.stdout
    prompts.write_text("carol waving\n")
    proc = h.run_trainer(tmp_path, args, env=_fake(tmp_path, "0.6"))
    assert proc.returncode == 2 and "names none of the dataset's characters (alice, bob)" in proc.stderr


def _family_with_user_samples(tmp_path: Path, script: str, layout: str = "v0.10"):
    """Two steps of the stand-in family ``script`` with a sample prompt of the user's and kohya-ext's
    evaluation (2 prompts, scored 0.5) at the step-2 save; asserts the run exits 0."""
    h.make_dataset(tmp_path, 2)
    user = tmp_path / "user_prompts.txt"
    user.write_text("sks girl waving --d 5\n")
    args = h.base_args(tmp_path, steps=2, save_every=2) + [
        "--sample_prompts", str(user), "--sample_every_n_steps", "2", "--consistency", "--consistency_num_prompts", "2",
        "--consistency_scorer", "fake_scorers:scripted"]
    proc = h.run_trainer(tmp_path, args, env=_fake(tmp_path, "0.5"), script=script, layout=layout)
    _ok(proc)
    return proc


def test_families_that_cache_sample_prompts_cache_ours_too(tmp_path):
    """A family that encodes the sample prompts once at setup and renders only those: our
    evaluation prompts are rendered (scored ok), and the user's own samples still appear."""
    proc = _family_with_user_samples(tmp_path, "cached_train_network.py")
    assert "cached text-encoder outputs of 3 prompt texts" in proc.stdout  # user's, ours (one caption), ""
    assert [r["status"] for r in _board(tmp_path)] == ["ok"], _board(tmp_path)
    assert len(list((tmp_path / "out" / "sample").glob("tiny_000002_00_*.png"))) == 1
    assert any(t["hook"] == "cache_text_encoder_outputs_if_needed" for t in h.read_trace(tmp_path / "trace.jsonl"))


@pytest.mark.parametrize("layout", ["v0.10", "v0.11"])
def test_two_text_encoder_family_hands_the_hooks_a_list(tmp_path, layout):
    """SDXL's loader returns its two text encoders as a list, and sd-scripts hands that list (not one
    module) to the sample hook and the network's hooks. kohya-ext renders its prompts through it and
    scores them; the user's own samples still come out."""
    _family_with_user_samples(tmp_path, "sdxl_train_network.py", layout)
    assert [r["status"] for r in _board(tmp_path)] == ["ok"], _board(tmp_path)
    assert len(list((tmp_path / "out" / "sample").glob("tiny_000002_00_*.png"))) == 1
    trace = h.read_trace(tmp_path / "trace.jsonl")
    samples = [t["args"] for t in trace if t["hook"] == "sample_images"]
    assert samples and all(a[6:8] == ["list", "list"] for a in samples), samples  # tokenizers, text encoders
    assert [t["args"] for t in trace if t["hook"] == "on_epoch_start"] == [["list", "Module"]]
    assert [t["args"][3] for t in trace if t["hook"] == "post_process_network"] == ["list"]


def test_family_that_loads_its_dit_after_caching(tmp_path):
    """Anima's loader returns no DiT: the caching hook gets None for it, and the DiT is loaded after caching
    (``load_unet_lazily``); the evaluation still renders through it and scores."""
    _family_with_user_samples(tmp_path, "anima_train_network.py")
    assert [r["status"] for r in _board(tmp_path)] == ["ok"], _board(tmp_path)
    trace = h.read_trace(tmp_path / "trace.jsonl")
    assert [t["args"][2] for t in trace if t["hook"] == "cache_text_encoder_outputs_if_needed"] == ["NoneType"]
    assert all(t["args"][8] == "Module" for t in trace if t["hook"] == "sample_images")  # the DiT, loaded by then
