"""The kohya_ss GUI path on the real sd-scripts: the stock train_network.py run as the GUI runs it
(``--config_file`` TOML with network_module/network_args, then the "Additional parameters" text),
with ``--network_module kohya_ext.gui_network`` appended, on the tiny random SD1.x model (CPU).

Needs KOHYA_SD_SCRIPTS, KOHYA_SD_PYTHON and TINY_SD_DIR as tests/test_train_sd_scripts.py does
(else skipped, saying which is missing). About 2-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


real = _load("real_sd_test", REPO / "tests" / "test_train_sd_scripts.py")  # overlay, tiny model, its arguments
gui = _load("gui_standin_test", REPO / "tests" / "test_gui_network.py")  # gui_split, as the GUI splits the text
h = real.h
SD, PY = real.SD, real.PY
pytestmark = real.pytestmark


def _toml(argv: list[str], network_args: list[str]) -> str:
    """The tiny run's arguments as the flat TOML the GUI writes (every item there has a value)."""
    def typed(key: str, v: str):  # TOML values skip argparse's type=: write numbers as numbers
        for t in (int, float):
            try:
                return v if key == "resolution" else t(v)
            except ValueError:
                pass
        return v

    data = {argv[i][2:]: typed(argv[i][2:], argv[i + 1]) for i in range(0, len(argv), 2)}
    data["network_args"] = network_args
    return "".join(f"{k} = {json.dumps(data[k])}\n" for k in sorted(data))


def test_real_train_network_from_the_gui_command(tmp_path, tadne_tiles):
    if not (Path(SD) / "train_network.py").is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no train_network.py")
    tiny = real._tiny()
    run = tmp_path / "run"
    run.mkdir()
    out = run / "out"
    ref = tmp_path / "reference"
    ref.mkdir()
    from PIL import Image

    for i in range(8):
        Image.fromarray(tadne_tiles[i]).save(ref / f"{i:02d}.png")
    argv = real._args(tiny, out)
    assert argv[argv.index("--network_module") + 1] == "networks.lora"
    cfg = out / "config_lora-20260101-000000.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(_toml(argv, ["conv_dim=2", "conv_alpha=1"]))  # "Kohya LoCon"-style settings of the GUI
    additional = (f"--network_module kohya_ext.gui_network --network_args consistency_backend=nvxs "
                  f"consistency_prompts={tiny['prompts_file']} \"consistency_reference={ref}\"")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(real._overlay(tmp_path)), SD]), "OMP_NUM_THREADS": "2",
           "KOHYA_EXT_TRACE": str(run / "trace.jsonl"), "PYTHONUNBUFFERED": "1"}
    env.pop("KOHYA_SD_SCRIPTS", None)
    cmd = [PY, str(Path(SD) / "train_network.py"), "--config_file", str(cfg), *gui.gui_split(additional)]
    proc = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True, timeout=1500)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]

    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["kohya_step"], r["trigger"], r["checkpoint"]) for r in board] == [
        (2, "step_save", "tiny-step00000002.safetensors"), (4, "step_save", "tiny-step00000004.safetensors")]
    assert all(r["status"] == "ok" and 0 <= r["score"] <= 1 for r in board), board
    assert len(list((out / "sample").glob("*.png"))) == 4  # the user's own samples, untouched by ours
    tb = h.read_tensorboard(out / "logs")
    assert sorted(s for s, _ in tb["consistency/score"]) == [2, 4] and {2, 4} <= {s for s, _ in tb["loss/average"]}

    from safetensors import safe_open

    from kohya_ext.training.best import read_metadata

    best = next(r for r in board if r["is_best"])
    assert read_metadata(out / "tiny-best.safetensors")["kohya_ext_consistency_step"] == str(best["kohya_step"])
    meta = read_metadata(out / "tiny.safetensors")
    assert meta["ss_network_module"] == "networks.lora"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1", "dropout": None}
    with safe_open(str(out / "tiny.safetensors"), "pt") as f:  # conv_dim reached networks.lora: 3x3 conv LoRA modules
        shapes = [f.get_slice(k).get_shape() for k in f.keys() if k.endswith("lora_down.weight")]
    assert any(len(s) == 4 and s[2:] == [3, 3] and s[0] == 2 for s in shapes), shapes
    assert [t["step"] for t in h.read_trace(run / "trace.jsonl") if t["hook"] == "train_end"] == [4]
