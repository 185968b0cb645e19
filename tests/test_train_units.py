"""Pure parts of the training integration: options, stop decision, leaderboard, prompts, worker."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytest

from kohya_ext.errors import KohyaExtError
from kohya_ext.training.early_stop import EarlyStopState, StopConfig, StopReason, decide
from kohya_ext.training.leaderboard import Leaderboard
from kohya_ext.training.options import add_arguments, from_args
from kohya_ext.training.prompts import fix_prompts, load_prompt_file, parse_prompt_line
from kohya_ext.training.worker import ScoringWorker


def _parse(argv: list[str], **toml) -> argparse.Namespace:
    """argv over TOML values, the way sd-scripts merges them (TOML skips type checks)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv, namespace=argparse.Namespace(**toml))


def test_flags_from_command_line_and_toml():
    o = from_args(_parse(["--consistency", "--consistency_patience", "3"], consistency_min_delta="0.01", consistency_target=0.9))
    assert (o.enabled, o.patience, o.min_delta, o.target) == (True, 3, 0.01, 0.9)
    # command line wins over TOML
    assert from_args(_parse(["--consistency_warmup", "2"], consistency=True, consistency_warmup=5)).warmup == 2


@pytest.mark.parametrize("key,value,fragment", [
    ("consistency_patience", "three", "consistency_patience"),
    ("consistency_patience", 0, "integer >= 1"),
    ("consistency_target", 1.5, "<= 1.0"),
    ("consistency_backend", "yolo", "one of auto, hrnet, nvxs"),
    ("consistency_scorer", "nocolon", "MODULE:CALLABLE"),
])
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(KohyaExtError, match=fragment) as e:
        from_args(_parse([], consistency=True, **{key: value}))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_options_without_the_switch_are_an_error():
    with pytest.raises(KohyaExtError, match="--consistency is off"):
        from_args(_parse(["--consistency_patience", "2"]))
    assert from_args(_parse([])).enabled is False


def test_decide_patience_min_delta_warmup_target():
    cfg = StopConfig(patience=2, min_delta=0.05, warmup=4)
    s, seen = EarlyStopState(), []
    for score in [0.5, 0.52, 0.53, 0.6, 0.61, 0.62]:
        s, stop, reason, _ = decide(s, score, cfg)
        seen.append((stop, reason))
    # 0.52/0.53 are within min_delta of 0.5 (patience would be spent at eval 3, but warm-up holds the
    # stop until eval 4); 0.6 improves; 0.61 and 0.62 do not beat it by 0.05 and exhaust patience
    assert seen == [(False, StopReason.WARMUP)] * 3 + [(False, StopReason.IMPROVED), (False, StopReason.WAITING), (True, StopReason.PATIENCE)]
    assert s.stopped and s.best == 0.6 and decide(s, 0.99, cfg)[1]  # a stopped state stays stopped
    s2, stop, reason, msg = decide(EarlyStopState(), 0.95, StopConfig(target=0.9))
    assert stop and reason is StopReason.TARGET and "0.9000" in msg


def test_decide_on_a_loss_lower_is_better_and_target_does_not_apply():
    cfg = StopConfig(patience=2, min_delta=0.01, target=0.5, name="loss/validation", mode="min")
    s, seen = EarlyStopState(), []
    for loss in [0.50, 0.40, 0.395, 0.45]:
        s, stop, reason, msg = decide(s, loss, cfg)
        seen.append((stop, reason))
    # 0.395 is within min_delta of 0.40; 0.45 is worse: patience 2 spent. A "target" is a score's, never a loss's
    assert seen == [(False, StopReason.IMPROVED)] * 2 + [(False, StopReason.WAITING), (True, StopReason.PATIENCE)]
    assert s.best == 0.40 and msg.startswith("loss/validation did not improve on 0.4000")


def test_decide_failures_and_memorised_do_not_count():
    cfg = StopConfig(patience=1)
    s, _, _, _ = decide(EarlyStopState(), 0.5, cfg)
    s, stop, reason, _ = decide(s, None, cfg)
    assert not stop and reason is StopReason.FAILED and s.wait == 0
    s, stop, _, _ = decide(s, 0.9, cfg, eligible=False)  # memorised: not an improvement
    assert stop and s.best == 0.5
    assert EarlyStopState.load_state_dict(json.loads(json.dumps(s.state_dict()))) == s


def test_leaderboard_roundtrip_and_atomic(tmp_path, monkeypatch):
    lb = Leaderboard(tmp_path)
    lb.add({"status": "ok", "cum_step": 2, "kohya_step": 2, "score": 0.4, "is_best": True})
    lb.add({"status": "ok", "cum_step": 4, "kohya_step": 4, "score": 0.6, "is_best": True})
    assert lb.set_checkpoint(4, "x-step00000004.safetensors") and not lb.set_checkpoint(4, "again.safetensors")
    lb.write()  # the run writes, guarded (set_checkpoint only names the file)
    back = Leaderboard.load(tmp_path)
    assert [r["is_best"] for r in back.rows] == [False, True] and back.best()["checkpoint"] == "x-step00000004.safetensors"
    assert (tmp_path / "leaderboard.csv").read_text().splitlines()[0].startswith("eval,status,cum_step,kohya_step,epoch")
    before = (tmp_path / "leaderboard.json").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        lb.add({"status": "ok", "cum_step": 6, "score": 0.1})
    assert (tmp_path / "leaderboard.json").read_bytes() == before  # an interrupted write leaves the old file
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_prompt_file_formats_and_fixed_seeds(tmp_path):
    assert parse_prompt_line("sks girl --w 640 --h 512 --d 7 --n bad hands --l 6.5") == {
        "prompt": "sks girl", "width": 640, "height": 512, "seed": 7, "negative_prompt": "bad hands", "scale": 6.5}
    (tmp_path / "p.txt").write_text("# comment\nsks girl --d 5\nsks girl smiling\n")
    fixed = fix_prompts(load_prompt_file(tmp_path / "p.txt"), seed=100, size=(64, 64))
    assert [(p["seed"], p["width"]) for p in fixed] == [(5, 64), (101, 64)]
    (tmp_path / "p.toml").write_text('[prompt]\nwidth = 96\n[[prompt.subset]]\nprompt = "a"\n[[prompt.subset]]\nprompt = "b"\nseed = 3\n')
    assert [(p["prompt"], p["width"], p.get("seed")) for p in load_prompt_file(tmp_path / "p.toml")] == [("a", 96, None), ("b", 96, 3)]
    with pytest.raises(KohyaExtError, match=r"\.txt, \.toml or \.json"):
        (tmp_path / "p.csv").write_text("x")
        load_prompt_file(tmp_path / "p.csv")


def _counter_env(tmp_path, monkeypatch, script: str) -> None:
    monkeypatch.setenv("FAKE_SCORES", script)
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "standin"))


def test_worker_is_a_killable_process_and_restarts(tmp_path, monkeypatch):
    """A hang is killed at the deadline (the process is gone, not a thread left running), a
    segfault is reported, and the next job gets a fresh worker."""
    from PIL import Image
    import numpy as np

    _counter_env(tmp_path, monkeypatch, "hang,segv,0.75")
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    # a restart (spawn + import torch) must fit in it on a loaded machine: 8 s was too short with 5 jobs on 2 cores
    w = ScoringWorker({"scorer": "fake_scorers:scripted"}, deadline_s=15.0)
    w.start()
    w.wait_ready(60)
    pid = w.pid
    assert pid != os.getpid()
    t0 = time.monotonic()
    r = w.score({"paths": [str(img)], "out_dir": str(tmp_path)})
    assert not r["ok"] and "deadline" in r["error"] and 14.9 < time.monotonic() - t0 < 30
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    r = w.score({"paths": [str(img)], "out_dir": str(tmp_path)})
    assert not r["ok"] and "SIGSEGV" in r["error"]
    r = w.score({"paths": [str(img)], "out_dir": str(tmp_path)})
    assert r["ok"] and r["score"] == 0.75 and w.restarts == 2
    w.close()


def test_worker_reports_an_unusable_reference(tmp_path, monkeypatch):
    _counter_env(tmp_path, monkeypatch, "0.5")
    monkeypatch.setenv("FAKE_FAIL_AT_LOAD", "reference has no usable faces")
    w = ScoringWorker({"scorer": "fake_scorers:scripted"}, deadline_s=5)
    w.start()
    with pytest.raises(KohyaExtError, match="no usable faces"):
        w.wait_ready(60)


def test_resume_keeps_the_state_lineage_and_replays_patience(tmp_path):
    """A state saved at cumulative step 4 (evaluations 1, 2) resumed after a continuation had
    evaluated steps 4 (epoch end, right after the save), 6 and 8: 6 and 8 are set aside; the
    patience count is replayed from the kept rows, with a stop of the old history lifted."""
    from kohya_ext.training import resume

    assert resume.read_side_file(tmp_path) is None  # a state saved without kohya-ext
    resume.write_side_file(tmp_path, {"cum_step": 4, "segment": 0, "epoch": 1, "evaluations": [1, 2], "best": None})
    side = resume.read_side_file(tmp_path)
    rows = [{"eval": i + 1, "cum_step": c, "segment": 0, "status": "ok", "score": sc}
            for i, (c, sc) in enumerate([(2, 0.5), (4, 0.8), (4, 0.7), (6, 0.9), (8, 0.6)])]
    kept, abandoned = resume.split_rows(rows, side)
    assert [r["eval"] for r in kept] == [1, 2, 3] and [r["eval"] for r in abandoned] == [4, 5]
    es = resume.replay(kept, StopConfig(patience=1))
    assert (es.best, es.wait, es.evaluations, es.stopped) == (0.8, 1, 3, False)
    _, stop, reason, _ = decide(es, 0.75, StopConfig(patience=1))
    assert stop and reason is StopReason.PATIENCE
    lb = Leaderboard(tmp_path)
    lb.rows, lb.abandoned = kept, abandoned
    assert lb.add({"status": "ok", "cum_step": 6})["eval"] == 6  # never reuses an abandoned number


def test_worker_scores_each_character_against_its_own_reference(tmp_path, tadne_tiles):
    """build_scorer with several class tokens: one nvxs scorer per character; evaluate() routes
    each image to its character's scorer and weights the combined score by images."""
    from PIL import Image

    from kohya_ext.backends import BackendSpec
    from kohya_ext.scorer import Scorer, load_references
    from kohya_ext.training.evaluation import build_scorer, evaluate

    for name, tiles in (("1_alice", tadne_tiles[0:4]), ("1_bob", tadne_tiles[4:8])):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i, t in enumerate(tiles):
            Image.fromarray(t).save(tmp_path / "train" / name / f"{i}.png")
    paths = []
    for i, t in enumerate(tadne_tiles[8:11]):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(t).save(paths[-1])
    cfg = {"reference": str(tmp_path / "train"), "backend": "nvxs", "characters": ["alice", "bob"]}
    scorers = build_scorer(cfg)
    res = evaluate(scorers, {"paths": [str(p) for p in paths], "out_dir": str(tmp_path / "ev"), "characters": ["alice", "bob", "alice"]})
    refs = {r.name: r for r in load_references(cfg["reference"], BackendSpec("nvxs"), by_class=True, progress=False)}
    direct = {c: Scorer(refs[c], backend=BackendSpec("nvxs"), progress=False).score_images(
        [tadne_tiles[8 + i] for i in idx]).score for c, idx in (("alice", [0, 2]), ("bob", [1]))}
    assert res["characters"]["alice"]["score"] == pytest.approx(direct["alice"])
    assert res["characters"]["bob"]["score"] == pytest.approx(direct["bob"])
    assert res["score"] == pytest.approx((2 * direct["alice"] + direct["bob"]) / 3)
    assert res["scalars"]["consistency/character/bob/score"] == pytest.approx(direct["bob"])
    assert (tmp_path / "ev" / "overlay_grid.png").is_file()


def test_choose_device_falls_back_to_the_cpu_when_gpu_memory_is_short():
    from kohya_ext.training.devices import choose_device

    gib = 2**30
    assert choose_device("auto", 2.0, mem_get_info=lambda d: (10 * gib, 24 * gib)) == ("cuda", None)
    dev, note = choose_device("auto", 2.0, mem_get_info=lambda d: (int(0.5 * gib), 24 * gib))
    assert dev == "cpu" and "0.5 GiB free of 24.0 GiB" in note
    assert choose_device("cuda:1", 2.0, mem_get_info=lambda d: (10 * gib, 24 * gib)) == ("cuda:1", None)

    def broken(d):
        raise RuntimeError("CUDA error: unspecified launch failure")

    assert choose_device("auto", 2.0, mem_get_info=broken)[0] == "cpu"
    assert choose_device("cpu", mem_get_info=broken) == ("cpu", None)


def test_worker_retries_on_the_cpu_after_cuda_oom_and_is_replaced_after_a_cuda_error(tmp_path, monkeypatch):
    """Simulated (no GPU here): an out-of-memory error on the GPU is retried once on the CPU and
    said so; a CUDA error fails that evaluation and the next one gets a fresh worker process."""
    from PIL import Image
    import numpy as np

    _counter_env(tmp_path, monkeypatch, "oom:0.6,cudaerror,0.7")
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    w = ScoringWorker({"scorer": "fake_scorers:device_aware"}, deadline_s=30)
    w.start()
    w.wait_ready(60)
    job = {"paths": [str(img)], "out_dir": str(tmp_path), "device": "cuda"}
    r = w.score(job)
    assert r["ok"] and r["score"] == 0.6 and r["device"] == "cpu" and "GPU out of memory" in r["device_note"]
    assert (tmp_path / "counter.devices").read_text().split() == ["cuda", "cpu"]
    pid = w.pid
    r = w.score(job)
    assert not r["ok"] and "illegal memory access" in r["error"] and "worker replaced" in r["error"]
    r = w.score(job)
    assert r["ok"] and r["score"] == 0.7 and r["device"] == "cuda" and w.pid != pid and w.restarts == 1
    w.close()


def test_models_are_dropped_after_gpu_scoring_but_kept_on_a_cpu_only_worker(tmp_path, monkeypatch):
    """Simulated: after scoring in a worker that uses CUDA, the backend's models are dropped
    (rebuilt at the next scoring); in a worker that never touched CUDA they stay loaded."""
    from PIL import Image
    import numpy as np

    from kohya_ext.training import devices

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "standin"))
    from fake_scorers import _Report

    class Spec:
        name, device, threads, hrnet_options = "hrnet", "cuda", None, {}

        def __init__(self):
            self._backend = "loaded models"

        def create(self):
            return self._backend

    class Fake:
        backend = Spec()

        def score_images(self, images, names):
            assert self.backend._backend == "loaded models"
            return _Report(0.5)

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    job = {"paths": [str(img)], "out_dir": str(tmp_path), "device": "cuda"}
    sc = Fake()
    assert devices.evaluate_on_device(sc, job)["device"] == "cuda" and sc.backend._backend == "loaded models"
    monkeypatch.setattr(devices, "cuda_in_use", lambda: True)
    assert devices.evaluate_on_device(sc, job)["score"] == 0.5 and sc.backend._backend is None


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_best_copy_takes_the_checkpoints_permissions_and_metadata(tmp_path, suffix):
    """-best is read by the same people and tools as kohya's own checkpoint: same mode bits (not
    mkstemp's 0600), our metadata added, no temporary file left."""
    import stat

    import torch
    from safetensors.torch import save_file

    from kohya_ext.training.best import META_SOURCE, copy_with_metadata, read_metadata

    src = tmp_path / f"acc-step00000004{suffix}"
    if suffix == ".safetensors":
        save_file({"w": torch.ones(2)}, str(src), metadata={"ss_steps": "4"})
    else:
        src.write_bytes(b"pickled weights")
    os.chmod(src, 0o640)
    dst = copy_with_metadata(src, tmp_path / f"acc-best{suffix}", {"kohya_ext_consistency_step": "4"})
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640
    if suffix == ".safetensors":
        meta = read_metadata(dst)
        assert meta["ss_steps"] == "4" and meta["kohya_ext_consistency_step"] == "4" and meta[META_SOURCE] == src.name
    else:
        assert dst.read_bytes() == b"pickled weights"
        assert json.loads((tmp_path / "acc-best.ckpt.json").read_text())[META_SOURCE] == src.name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
