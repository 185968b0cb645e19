"""What each early-stopping signal shows on an over-trained run: real sd-scripts, tiny random SD1.x, CPU.

A LoRA is trained far past its best (by default learning rate 3e-3, 8 images, 300 steps) with sd-scripts'
validation loss on (``--validation_split``) and kohya-ext's evaluations at every save, with a patience
nothing exhausts, so the whole curves are recorded. The table lists, per evaluation step, the mean
training loss since the previous one, the validation loss and the consistency score; then what each
``--consistency_monitor`` would have done with patience 3, 5 and 10, replayed with kohya-ext's own
``EarlyStopping`` over the recorded evaluations and validations: where it stops and which step ``-best`` holds.

    KOHYA_SD_SCRIPTS=<checkout> KOHYA_SD_PYTHON=<its venv python> TINY_SD_DIR=~/.cache/kohya-ext/tiny-sd15 \\
      PYTHONPATH_FOR_SD=<folder where the sd venv imports kohya_ext from> .venv/bin/python bench/overtraining.py

kohya_ext must be importable by the sd-scripts venv (installed there, or a PYTHONPATH folder as
tests/standin/harness.py's ``working_tree_overlay`` builds, given as PYTHONPATH_FOR_SD). The tiny model
is the one tests/sd_tiny_model.py builds (its U-Net is SD1.x's full layout). Random weights draw no
faces: the consistency column says what kohya-ext measures on such renders, not on a real model's.
Results (v0.11.1, 300 steps at lr 3e-3, 55 min on 2 shared CPU cores): docs/training.md, "What each
signal shows on an over-trained run".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from kohya_ext.callbacks.early_stopping import EarlyStopping
from kohya_ext.demo import grid_tiles
from kohya_ext.images import load_image
from kohya_ext.posthoc.run_info import read_scalars
from kohya_ext.training.early_stop import StopConfig

SHARED = Path(os.environ.get("KOHYA_EXT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GRID = SHARED / "data" / "tadne" / "grid.jpg"


def tiles(n: int, size: int | None) -> list[Image.Image]:
    out = [Image.fromarray(t) for t in grid_tiles(load_image(GRID))[:n]]
    return [t.resize((size, size), Image.BICUBIC) for t in out] if size else out


def train(work: Path, tiny: dict, a: argparse.Namespace) -> float:
    data, ref = work / "train" / "1_tadne", work / "reference"
    data.mkdir(parents=True)
    ref.mkdir()
    for i, img in enumerate(tiles(a.images, tiny["resolution"])):
        img.save(data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text("tadne, 1girl, portrait, anime\n", encoding="utf-8")
    for i, img in enumerate(tiles(a.images, None)):  # the training drawings at full size: the reference
        img.save(ref / f"{i:02d}.png")
    out = work / "out"
    every = str(a.every)
    args = ["--pretrained_model_name_or_path", tiny["model_dir"], "--tokenizer_cache_dir", tiny["tokenizer_cache_dir"],
            "--train_data_dir", str(data.parent), "--caption_extension", ".txt", "--resolution", str(tiny["resolution"]),
            "--network_module", "networks.lora", "--network_dim", str(a.dim), "--network_alpha", str(a.dim),
            "--optimizer_type", "AdamW", "--learning_rate", str(a.lr), "--train_batch_size", "1",
            "--max_train_steps", str(a.steps), "--mixed_precision", "no", "--save_precision", "float", "--seed", "0",
            "--max_data_loader_n_workers", "0", "--output_dir", str(out), "--output_name", "over",
            "--save_model_as", "safetensors", "--save_every_n_steps", every, "--sample_every_n_steps", every,
            "--sample_prompts", tiny["prompts_file"], "--sample_sampler", "euler_a",
            "--logging_dir", str(out / "logs"), "--log_with", "tensorboard",
            "--validation_split", str(a.validation_split), "--validate_every_n_steps", every, "--validation_seed", "7",
            "--consistency", "--consistency_monitor", "both", "--consistency_patience", "100000",
            "--consistency_backend", a.backend, "--consistency_reference", str(ref),
            "--consistency_prompts", tiny["prompts_file"]]
    env = {**os.environ, "KOHYA_SD_SCRIPTS": a.sd_scripts, "OMP_NUM_THREADS": str(os.cpu_count() or 2)}
    if os.environ.get("PYTHONPATH_FOR_SD"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH_FOR_SD"]
    t0 = time.time()
    proc = subprocess.run([a.python, "-m", "kohya_ext", "train_network.py", *args], cwd=work, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"overtraining: the training run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t0


def read_run(out: Path) -> tuple[list[tuple[int, float]], list[dict], list[dict]]:
    """(training loss per step, evaluation rows, every validation sd-scripts logged) of a finished run."""
    loss = read_scalars(out / "logs", "loss/current").get("loss/current", [])
    rows = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    validations = json.loads((out / "consistency" / "run.json").read_text()).get("validation") or []
    return loss, rows, validations


def replay(rows: list[dict], validations: list[dict], monitor: str, patience: int, slack: float = 0.05
           ) -> tuple[int | None, int | None]:
    """(stop step, step -best holds) had the run used ``monitor`` with ``patience``: kohya-ext's EarlyStopping over
    the recorded evaluations (consistency, at the saves) and validations (every step and epoch validation), in the
    order training met them (a step's evaluation before its validation)."""
    score = EarlyStopping(StopConfig(patience, 0.0, 0, None, "consistency/score", "max"))
    val = EarlyStopping(StopConfig(patience, 0.0, 0, None, "loss/validation", "min"))
    events = sorted([(r["cum_step"], 0, r) for r in rows] + [(v["cum_step"], 1, v) for v in validations], key=lambda e: e[:2])
    best = best_value = low = None
    for _, is_validation, e in events:
        if is_validation:
            low = e["value"] if low is None else min(low, e["value"])
            if monitor == "consistency":
                continue
            if monitor == "val_loss" and (best_value is None or e["value"] < best_value):
                best, best_value = e["kohya_step"], e["value"]
            stop = val.update({}, True, value=e["value"], alone=monitor == "val_loss")
        else:
            if monitor == "val_loss":
                continue
            s = e.get("score")
            healthy = monitor == "consistency" or e.get("val_loss") is None or e["val_loss"] <= low * (1 + slack)
            if s is not None and healthy and (best_value is None or s > best_value):
                best, best_value = e["kohya_step"], s
            stop = score.update(dict(e), s is not None, value=s, alone=monitor == "consistency")
        if stop or (monitor == "both" and score.exhausted and val.exhausted):
            return e["kohya_step"], best
    return None, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd_scripts", default=os.environ.get("KOHYA_SD_SCRIPTS"))
    ap.add_argument("--python", default=os.environ.get("KOHYA_SD_PYTHON"))
    ap.add_argument("--tiny", default=os.environ.get("TINY_SD_DIR", Path.home() / ".cache" / "kohya-ext" / "tiny-sd15"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25, help="save, sample, validate and evaluate every N steps")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--validation_split", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--backend", default="nvxs")
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    ap.add_argument("--read", help="print the tables of a kept run's output folder (KEEP/out) without training")
    a = ap.parse_args(argv)
    if a.read:
        out, seconds = Path(a.read), None
    else:
        if not (a.sd_scripts and a.python):
            ap.error("give --sd_scripts and --python (or KOHYA_SD_SCRIPTS and KOHYA_SD_PYTHON)")
        if not GRID.exists():
            ap.error(f"{GRID} not found: the shared test portraits are needed (set KOHYA_EXT_SHARED)")
        tiny = json.loads((Path(a.tiny) / "tiny_sd.json").read_text())
        work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="kohya_ext_overtraining_"))
        seconds = train(work, tiny, a)
        out = work / "out"
        print(f"sd-scripts {a.sd_scripts}, {a.steps} steps of LoRA dim {a.dim} at lr {a.lr} on {a.images} images "
              f"(validation split {a.validation_split}), evaluations every {a.every} steps, {a.backend}: {seconds:.0f} s; "
              f"output kept in {work}\n")
    loss, rows, validations = read_run(out)
    print("| step | training loss (mean since last) | validation loss (its step) | consistency | faces found | copies |")
    print("|---|---|---|---|---|---|")
    last = 0
    for r in rows:
        step = r["kohya_step"]
        window = [v for s, v in loss if last < s <= step]
        last = step
        tl = f"{sum(window) / len(window):.4f}" if window else "-"
        vl = f"{r['val_loss']:.4f} ({r['val_loss_step']})" if r.get("val_loss") is not None else "-"
        sc = f"{r['score']:.4f}" if r.get("score") is not None else r.get("error", "-")[:40]
        rate, copies = r.get("detection_rate"), r.get("memorization")
        print(f"| {step} | {tl} | {vl} | {sc} | {'-' if rate is None else f'{rate:.0%}'} | {'-' if copies is None else f'{copies:.0%}'} |")
    low = min(validations, key=lambda v: v["value"]) if validations else None
    if low:
        print(f"\n{len(validations)} validations; the lowest {low['value']:.4f} at step {low['kohya_step']}")
    print("\n| monitor | patience | stops at step | -best holds step |")
    print("|---|---|---|---|")
    for p in (3, 5, 10):
        for monitor in ("val_loss", "consistency", "both"):
            stop, best = replay(rows, validations, monitor, p)
            print(f"| {monitor} | {p} | {stop if stop is not None else 'no stop'} | {best if best is not None else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
