"""The kohya_ss GUI path on the real sd-scripts: the stock train_network.py run with the command
the GUI builds (tests/gui_command.py: its TOML, ``accelerate launch``, the "Additional
parameters" text split on spaces), ``--network_module kohya_ext.gui_network`` in that text, on
the tiny random SD1.x model (CPU).

Needs KOHYA_SD_SCRIPTS, KOHYA_SD_PYTHON and TINY_SD_DIR as tests/test_train_sd_scripts.py does
(else skipped, saying which is missing). About 2-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


real = _load("real_sd_test", REPO / "tests" / "test_train_sd_scripts.py")  # overlay, tiny model, its arguments
sys.path.insert(0, str(REPO / "tests"))
import gui_command as gc  # noqa: E402  (the GUI's TOML and command, as lora_gui.train_model builds them)

h = real.h
SD, PY = real.SD, real.PY
pytestmark = real.pytestmark


def _settings(argv: list[str]) -> dict:
    """The tiny run's arguments as the LoRA tab's settings (typed as the GUI types them; a flag is ``true``)."""
    def typed(key: str, v: str):
        for t in (int, float):
            try:
                return v if key == "resolution" else t(v)
            except ValueError:
                pass
        return v

    data, i = {}, 0
    while i < len(argv):
        key = argv[i][2:]
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            data[key], i = typed(key, argv[i + 1]), i + 2
        else:
            data[key], i = True, i + 1
    data.pop("output_dir")
    data.pop("sample_prompts")  # the GUI writes its own, from the sample-prompts box
    return data


def _gui_run(tmp_path: Path, tadne_tiles, additional: str, tiny: dict | None = None, argv: list[str] | None = None,
             mixed_precision: str = "no") -> tuple[subprocess.CompletedProcess, Path, dict]:
    """The GUI's command (tests/gui_command.py) on the real checkout, accelerate launch included
    (default: the tiny SD1.x model and its arguments)."""
    tiny = tiny or real._tiny()
    run = tmp_path / "run"
    run.mkdir()
    out = run / "out"
    ref = tmp_path / "My Characters" / "ref"  # a reference under a folder with a space
    ref.mkdir(parents=True)
    from PIL import Image

    for i in range(8):
        Image.fromarray(tadne_tiles[i]).save(ref / f"{i:02d}.png")
    options = tmp_path / "kohya ext" / "mio.toml"
    options.parent.mkdir()
    options.write_text(f'consistency_reference = "{ref.as_posix()}"\nconsistency_backend = "nvxs"\nconsistency_num_prompts = 2\n')
    argv = argv(out) if argv else real._args(tiny, out)
    assert argv[argv.index("--network_module") + 1] == "networks.lora"
    cfg = gc.write_gui_toml(out, _settings(argv), "", sample_prompts=Path(tiny["prompts_file"]).read_text())
    accelerate = str(Path(PY).parent / "accelerate")
    cmd = gc.gui_command(accelerate, Path(SD), tiny.get("script", "train_network.py"), cfg,
                         additional.replace("{options}", options.as_posix().replace(" ", "%20")), mixed_precision=mixed_precision)
    env = gc.gui_env(tmp_path, Path(SD))
    env["PYTHONPATH"] = os.pathsep.join([str(real._overlay(tmp_path)), env["PYTHONPATH"]])
    env.update({"OMP_NUM_THREADS": "2", "KOHYA_EXT_TRACE": str(run / "trace.jsonl"), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True, timeout=5400)
    print(proc.stdout[-4000:])
    return proc, out, tiny


def test_real_train_network_from_the_gui_command(tmp_path, tadne_tiles):
    """A Standard LoRA whose user typed their own --network_args (conv_dim) in Additional
    parameters, the kohya-ext options in a consistency_config file (paths with spaces), no
    prompt file: the user's network_args reach networks.lora, the prompts are the captions."""
    if not (Path(SD) / "train_network.py").is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no train_network.py")
    additional = ('--network_args "conv_dim=2 conv_alpha=1" --network_module kohya_ext.gui_network '
                  '--network_args consistency_config={options}')
    proc, out, tiny = _gui_run(tmp_path, tadne_tiles, additional)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    # The GUI path finds the running trainer in train()'s frame (self, args, accelerator): if
    # sd-scripts renames those locals it only delegates, and says so; that must fail here.
    assert "delegating without evaluation" not in proc.stdout, "find_trainer no longer finds NetworkTrainer.train's locals"

    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["kohya_step"], r["trigger"], r["checkpoint"]) for r in board] == [
        (2, "step_save", "tiny-step00000002.safetensors"), (4, "step_save", "tiny-step00000004.safetensors")]
    assert all(r["status"] == "ok" and 0 <= r["score"] <= 1 for r in board), board
    assert len(list((out / "sample").glob("*.png"))) == 4  # the user's own samples, untouched by ours
    captions = {p.read_text().strip() for p in Path(tiny["train_data_dir"]).glob("*/*.txt")}
    prompts = [p["prompt"] for p in json.loads((out / "consistency" / "prompts.json").read_text())]
    assert len(prompts) == 2 and set(prompts) <= captions, (prompts, captions)
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
    assert [t["step"] for t in h.read_trace(out.parent / "trace.jsonl") if t["hook"] == "train_end"] == [4]


def test_real_gui_value_cut_at_a_space_is_one_kohya_ext_line(tmp_path, tadne_tiles):
    """What a user types first: the path with its space. sd-scripts would crash on the split
    item (ValueError: not enough values to unpack); kohya-ext says what to write instead."""
    if not (Path(SD) / "train_network.py").is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no train_network.py")
    proc, out, _ = _gui_run(tmp_path, tadne_tiles, "--network_module kohya_ext.gui_network "
                                                   "--network_args consistency_reference=D:/My Characters/mio")
    assert proc.returncode != 0
    err = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("kohya-ext: error:")]
    assert len(err) == 1 and "'Characters/mio' is not key=value" in err[0] and "%20" in err[0], proc.stderr[-4000:]
    assert "not enough values to unpack" not in proc.stderr
    assert not list(out.glob("*.safetensors"))


def test_real_sdxl_from_the_gui_command(tmp_path, tadne_tiles):
    """SDXL selected in the GUI: sdxl_train_network.py under ``accelerate launch --mixed_precision bf16``, the SDXL
    options (cached text-encoder outputs, U-Net only, full bf16) as TOML booleans, kohya_ext.gui_network and a
    patience of 1 in Additional parameters, on the random full-size SDXL U-Net (tests/test_train_sd_families.py):
    evaluations at the saves, ``-best`` with the crowned step, the early stop before the last step."""
    fam = _load("real_sd_families", REPO / "tests" / "test_train_sd_families.py")
    if not (Path(SD) / "sdxl_train_network.py").is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no sdxl_train_network.py")
    tiny = fam._model("sdxl")
    additional = ("--network_module kohya_ext.gui_network --network_args consistency_config={options} "
                  "consistency_patience=1 consistency_warmup=1")
    proc, out, _ = _gui_run(tmp_path, tadne_tiles, additional, tiny=tiny, argv=lambda o: fam._args(tiny["root"], o, 6, 2),
                            mixed_precision="bf16")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    assert "delegating without evaluation" not in proc.stdout
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["kohya_step"], r["checkpoint"]) for r in board] == [
        (2, "tiny-step00000002.safetensors"), (4, "tiny-step00000004.safetensors")], board
    assert all(r["status"] == "ok" for r in board) and board[-1]["stop_reason"] == "patience_exhausted", board
    assert not (out / "tiny-step00000006.safetensors").exists()  # stopped at step 4 of 6
    from kohya_ext.training.best import read_metadata

    best = next(r for r in board if r["is_best"])
    assert read_metadata(out / "tiny-best.safetensors")["kohya_ext_consistency_step"] == str(best["kohya_step"])
    assert read_metadata(out / "tiny.safetensors")["ss_base_model_version"].startswith("sdxl")
    tb = h.read_tensorboard(out / "logs")
    assert sorted(s for s, _ in tb["consistency/score"]) == [2, 4]
