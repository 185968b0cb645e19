"""The real thing: sd-scripts' train_network.py through kohya-ext, on a tiny random SD1.x model (CPU).

Needs (else skipped, saying which is missing):
  KOHYA_SD_SCRIPTS  an sd-scripts checkout (v0.10.x or v0.11.x)
  KOHYA_SD_PYTHON   a python with sd-scripts' requirements (its venv); kohya-ext (and, when that
                    venv lacks it, the animeface wheel of the running interpreter) is taken through
                    a PYTHONPATH overlay: nothing is installed into that venv
  TINY_SD_DIR       the tiny model (tests/sd_tiny_model.py; built with KOHYA_SD_PYTHON when absent,
                    default ~/.cache/kohya-ext/tiny-sd15)
About 4-6 minutes on 2 CPU cores. The same run on the stand-in loop must give the same hook trace.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("standin_harness", REPO / "tests" / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

SD = os.environ.get("KOHYA_SD_SCRIPTS")
PY = os.environ.get("KOHYA_SD_PYTHON")
TINY = Path(os.environ.get("TINY_SD_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kohya-ext" / "tiny-sd15"))

pytestmark = [
    pytest.mark.skipif(not SD, reason="KOHYA_SD_SCRIPTS is unset: point it at an sd-scripts checkout to run the real training test"),
    pytest.mark.skipif(not PY, reason="KOHYA_SD_PYTHON is unset: point it at a python that has sd-scripts' requirements"),
]


def _overlay(tmp: Path) -> Path:
    return h.working_tree_overlay(tmp, PY)


def _tiny() -> dict:
    if not (TINY / "tiny_sd.json").exists():
        subprocess.run([PY, str(REPO / "tests" / "sd_tiny_model.py"), str(TINY)], check=True, capture_output=True, timeout=900)
    return json.loads((TINY / "tiny_sd.json").read_text())


def _args(tiny: dict, out: Path) -> list[str]:
    code = f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from sd_tiny_model import load_tiny_sd; " \
           f"print(chr(10).join(load_tiny_sd({str(TINY)!r}).train_network_args({str(out)!r}, steps=4, save_every=2, sample_every=2)))"
    return subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()


def _shape(trace: list[dict]) -> list[tuple]:
    return [(t["hook"], t["rank"], t["step"], t["epoch"], tuple(t["args"])) for t in trace]


def test_real_train_network_through_kohya_ext(tmp_path, tadne_tiles):
    if not (Path(SD) / "train_network.py").is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no train_network.py")
    tiny = _tiny()
    real = tmp_path / "real"
    real.mkdir()
    # The tiny model trains at 64 px, too small for faces: the reference is 8 full-size portraits.
    ref = tmp_path / "reference"
    ref.mkdir()
    from PIL import Image

    for i in range(8):
        Image.fromarray(tadne_tiles[i]).save(ref / f"{i:02d}.png")
    ours = ["--consistency", "--consistency_backend", "nvxs", "--consistency_prompts", tiny["prompts_file"],
            "--consistency_reference", str(ref)]
    env = {"PYTHONPATH": str(_overlay(tmp_path)), "OMP_NUM_THREADS": "2"}
    proc = h.run_trainer(real, _args(tiny, real / "out") + ours, env=env, sd_scripts=Path(SD), python=PY, timeout=1500)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    out = real / "out"
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["kohya_step"], r["trigger"], r["checkpoint"]) for r in board] == [
        (2, "step_save", "tiny-step00000002.safetensors"), (4, "step_save", "tiny-step00000004.safetensors")]
    assert all(r["status"] == "ok" and 0 <= r["score"] <= 1 for r in board), board
    assert len(list((out / "consistency" / "eval-00000002").glob("[0-9][0-9].png"))) == 2
    assert len(list((out / "sample").glob("*.png"))) == 4  # the user's own samples, untouched by ours
    tb = h.read_tensorboard(out / "logs")
    assert sorted(s for s, _ in tb["consistency/score"]) == [2, 4] and {2, 4} <= {s for s, _ in tb["loss/average"]}
    from kohya_ext.training.best import read_metadata

    best = next(r for r in board if r["is_best"])
    meta = read_metadata(out / "tiny-best.safetensors")
    assert meta["kohya_ext_consistency_step"] == str(best["kohya_step"]) == meta["ss_steps"]

    # The stand-in, given the same run in the same module layout, must call the same hooks in the same
    # order with the same argument kinds.
    stand = tmp_path / "standin"
    stand.mkdir()
    train = stand / "train" / "1_tadne"
    train.mkdir(parents=True)
    for f in Path(tiny["train_data_dir"]).glob("*/*"):
        (train / f.name).symlink_to(f)
    sargs = [a.replace(str(real), str(stand)).replace(tiny["train_data_dir"], str(stand / "train")) for a in _args(tiny, real / "out")]
    from kohya_ext.patches.sd_scripts import detect_version

    layout = detect_version(Path(SD)).name.removesuffix(".x")  # the stand-in laid out as the real checkout is
    sproc = h.run_trainer(stand, sargs + ours, layout=layout)
    assert sproc.returncode == 0, sproc.stderr[-4000:]
    real_trace, stand_trace = h.read_trace(real / "trace.jsonl"), h.read_trace(stand / "trace.jsonl")
    print("\n".join(map(str, _shape(real_trace))))
    assert _shape(stand_trace) == _shape(real_trace)
