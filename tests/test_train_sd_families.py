"""Real sd-scripts, other families than SD1.x, through kohya-ext on randomly initialised models (CPU).

Each family's model is built once by tests/sd_tiny_model.py (``--family``) with the sd-scripts venv
and cached outside the repository (``$TINY_MODELS_DIR/tiny-<family>``, default ~/.cache/kohya-ext);
its layout is the one sd-scripts loads, shrunk only where sd-scripts reads the size from the files.

Needs KOHYA_SD_SCRIPTS and KOHYA_SD_PYTHON (else skipped, saying which); run by
scripts/test_sd_checkout.sh. What each family costs here: docs/training.md, "Families".

Per family, with that family's usual options (tests/sd_tiny_model.FAMILY_ARGS): two evaluations at the
step saves, consistency curves in TensorBoard at those steps next to the loss, the leaderboard, a
``-best`` copy whose metadata names the crowned step, and an early stop (patience 1) before the last
step; and the same hook trace from the stand-in loop given the same run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("real_sd_test", REPO / "tests" / "test_train_sd_scripts.py")
real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real)  # the harness, the checkout and venv variables and their skip reasons (as test_gui_sd_scripts)

h = real.h
SD, PY = real.SD, real.PY
pytestmark = real.pytestmark
MODELS = Path(os.environ.get("TINY_MODELS_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kohya-ext"))


#: family -> extra options of a variant (the family's base options are FAMILY_ARGS in sd_tiny_model.py)
VARIANTS = {
    "sdxl": [],
    "sdxl-vpred": ["--v_parameterization", "--zero_terminal_snr"],  # NoobAI-style v-prediction bases
    "anima": [],  # the 2 B DiT, Qwen3 folder and Qwen-Image VAE; model options in TinySD.models
    "flux": [],  # FLUX.1 dev with 1 double + 1 single block, full CLIP-L and T5-XXL
    "sd3": [],  # SD3.5 Large's MMDiT layout at depth 2, full CLIP-L, CLIP-G and T5-XXL
    "lumina": [],  # NextDiT 2B, Gemma2-2B and the AE, all full size; a substitute Gemma tokenizer
}


def _model(family: str) -> dict:
    root = MODELS / f"tiny-{family}"
    if not (root / "tiny_sd.json").exists():
        subprocess.run([PY, str(REPO / "tests" / "sd_tiny_model.py"), str(root), "--family", family],
                       check=True, capture_output=True, timeout=1800)
    return json.loads((root / "tiny_sd.json").read_text())


#: steps between saves (and so evaluations) where 2 costs too much here: a LoRA step of Lumina's 2.6 B NextDiT takes
#: ~22 min on an AVX2-only CPU (bf16 matmuls for input gradients take a kernel ~126x slower than fp32's:
#: bench/cpu_matmul_dtypes.py)
SAVE_EVERY = {"lumina": 1}


def _every(tiny: dict) -> int:
    return SAVE_EVERY.get(tiny["family"], 2)


def _args(root: str, out: Path, steps: int, every: int) -> list[str]:
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from sd_tiny_model import load_tiny_sd; "
            f"print(chr(10).join(load_tiny_sd({root!r}).train_network_args({str(out)!r}, steps={steps}, save_every={every}, sample_every={every})))")
    return subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()


def _ours(tiny: dict, reference: Path) -> list[str]:
    return ["--consistency", "--consistency_backend", "nvxs", "--consistency_prompts", tiny["prompts_file"],
            "--consistency_reference", str(reference)]


def _train(tmp_path: Path, tiny: dict, tadne_tiles, steps: int, extra: list[str], every: int | None = None):
    """``python -m kohya_ext <family script>`` with the family's usual options and kohya-ext on (nvxs, a reference of
    8 full-size portraits: 64 px renders hold no face), output in ``tmp_path/out``. Asserts exit 0."""
    from PIL import Image

    ref = tmp_path / "reference"
    if not ref.is_dir():
        ref.mkdir()
        for i in range(8):
            Image.fromarray(tadne_tiles[i]).save(ref / f"{i:02d}.png")
    ours = _ours(tiny, ref)
    # HF_HUB_OFFLINE: every tokenizer and model is local; a missing one must fail at once, not wait on the network
    env = {"PYTHONPATH": str(h.working_tree_overlay(tmp_path, PY)), "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    proc = h.run_trainer(tmp_path, _args(tiny["root"], tmp_path / "out", steps, every or _every(tiny)) + ours + extra, env=env, script=tiny["script"],
                         sd_scripts=Path(SD), python=PY, timeout=3 * 3600)  # Lumina took 83 min here
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


#: the stand-in script that follows each family's hook path: SDXL encodes prompts when it samples, as SD1.x does, with
#: two text encoders handed to the hooks as a list; the others cache the sample prompts' encodings at setup
#: (docs/training.md, "Families that cache the sample prompts"), and Anima loads its DiT only after that
STANDIN_SCRIPT = {"sdxl": "sdxl_train_network.py", "anima": "anima_train_network.py", "flux": "cached_train_network.py",
                  "sd3": "cached_train_network.py", "lumina": "cached_train_network.py"}


def standin_trace(tmp_path: Path, tiny: dict, steps: int, ours_and_extra: list[str]) -> list[tuple]:
    """The hook trace of the stand-in loop given the same run (images, prompts, steps, saves, kohya-ext options) as
    ``tiny``'s real family run, in the stand-in family of the same shape and the module layout of the checkout."""
    from kohya_ext.patches.sd_scripts import detect_version

    every = _every(tiny)
    stand = tmp_path / "standin"
    train = stand / "train" / "1_tadne"
    train.mkdir(parents=True)
    for f in Path(tiny["train_data_dir"]).glob("*/*"):
        (train / f.name).symlink_to(f)
    args = ["--train_data_dir", str(stand / "train"), "--caption_extension", ".txt", "--output_dir", str(stand / "out"),
            "--output_name", "tiny", "--network_module", "networks.lora", "--network_dim", "4", "--max_train_steps", str(steps),
            "--save_every_n_steps", str(every), "--sample_every_n_steps", str(every), "--sample_prompts", tiny["prompts_file"],
            "--resolution", "64", "--seed", "0", "--logging_dir", str(stand / "out" / "logs"), "--log_with", "tensorboard"]
    family_args = _args(tiny["root"], tmp_path / "out", steps, every)
    for flag in ("--mixed_precision", "--save_precision"):  # they set the argument kinds of the save hook; last one wins
        args += [flag, family_args[max(i for i, a in enumerate(family_args) if a == flag) + 1]]
    # with both, the caching families free their text encoders and the hooks get None for them
    args += [flag for flag in ("--cache_text_encoder_outputs", "--network_train_unet_only") if flag in family_args]
    layout = detect_version(Path(SD)).name.removesuffix(".x")
    proc = h.run_trainer(stand, args + ours_and_extra, layout=layout, script=STANDIN_SCRIPT[tiny["family"]])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return real._shape(h.read_trace(stand / "trace.jsonl"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_family_trains_evaluates_keeps_best_and_stops_early(variant, tmp_path, tadne_tiles):
    family = variant.split("-")[0]
    tiny = _model(family)
    if not (Path(SD) / tiny["script"]).is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no {tiny['script']}")
    out = tmp_path / "out"
    stop = ["--consistency_patience", "1", "--consistency_warmup", "1"]
    every = _every(tiny)
    proc = _train(tmp_path, tiny, tadne_tiles, 3 * every, VARIANTS[variant] + stop)
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["kohya_step"], r["trigger"], r["checkpoint"]) for r in board] == [
        (s, "step_save", f"tiny-step{s:08d}.safetensors") for s in (every, 2 * every)], board
    assert all(r["status"] == "ok" and 0 <= r["score"] <= 1 for r in board), board
    assert board[-1]["stop"] is True and board[-1]["stop_reason"] == "patience_exhausted", board[-1]
    assert not (out / f"tiny-step{3 * every:08d}.safetensors").exists()  # stopped at the second evaluation, before the last step
    assert "stopped early" in proc.stdout + proc.stderr
    tb = h.read_tensorboard(out / "logs")
    assert sorted(s for s, _ in tb["consistency/score"]) == [every, 2 * every]
    assert {every, 2 * every} <= {s for s, _ in tb["loss/average"]}
    from kohya_ext.training.best import read_metadata

    best = next(r for r in board if r["is_best"])
    meta = read_metadata(out / "tiny-best.safetensors")
    assert meta["kohya_ext_consistency_step"] == str(best["kohya_step"]) == meta["ss_steps"]
    # The stand-in must call the same hooks in the same order with the same argument kinds as this family does.
    real_trace = real._shape(h.read_trace(tmp_path / "trace.jsonl"))
    print("\n".join(map(str, real_trace)))
    assert standin_trace(tmp_path, tiny, 3 * every, _ours(tiny, tmp_path / "reference") + stop) == real_trace


@pytest.mark.parametrize("family", sorted({v.split("-")[0] for v in VARIANTS}))
def test_resume_continues_the_history(family, tmp_path, tadne_tiles):
    """``--save_state``: leg 1 trains 4 steps (evaluations at 2 and 4); leg 2 ``--resume``s the step-4 state
    (``--max_train_steps 8``: one more epoch of 4 steps). kohya-ext's state rides in sd-scripts' state folder, so
    the history goes on at cumulative steps 6 and 8 although sd-scripts counts its steps afresh; the checkpoints
    leg 2 writes again under leg 1's names are flagged, and ``-best`` keeps the crowned weights. Saves every 2
    steps in every family (4 images, so leg 1 ends on an epoch boundary, the only place sd-scripts resumes)."""
    from kohya_ext.training.best import read_metadata

    tiny = _model(family)
    if not (Path(SD) / tiny["script"]).is_file():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no {tiny['script']}")
    out = tmp_path / "out"
    _train(tmp_path, tiny, tadne_tiles, 4, ["--save_state"], every=2)
    state = out / "tiny-step00000004-state"
    assert (state / "kohya_ext_consistency.json").is_file()
    # sd-scripts needs max_train_steps above the state's step; it skips leg 1's epoch and counts from 0 again
    proc = _train(tmp_path, tiny, tadne_tiles, 8, ["--save_state", "--resume", str(state)], every=2)
    assert "resumed from" in proc.stdout and "cumulative step 4" in proc.stdout
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["cum_step"], r["segment"]) for r in board] == [(2, 0), (4, 0), (6, 1), (8, 1)], board
    assert all(r["status"] == "ok" for r in board), board
    assert [r["kohya_step"] for r in board[2:]] == [2, 4]  # sd-scripts restarted its count: leg 1's files written again
    assert all(r.get("checkpoint_overwritten") for r in board[:2]) and not any(r.get("checkpoint_overwritten") for r in board[2:])
    best = next(r for r in board if r["is_best"])
    assert read_metadata(out / "tiny-best.safetensors")["kohya_ext_consistency_step"] == str(best["kohya_step"])
