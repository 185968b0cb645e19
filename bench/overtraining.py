"""What each early-stopping signal shows on an over-trained run: real sd-scripts, tiny random SD1.x, CPU.

A LoRA is trained far past its best (high learning rate, few images, many steps) with sd-scripts'
validation loss on (``--validation_split``) and kohya-ext's evaluations at every save, with a patience
nothing exhausts, so the whole curves are recorded. The table lists, per evaluation step, the mean
training loss since the previous one, the validation loss and the consistency score; then what each
``--consistency_monitor`` would have done with patience 3 and 5, replayed with kohya-ext's own
``EarlyStopping`` over the recorded rows: where it stops and which step ``-best`` holds.

    KOHYA_SD_SCRIPTS=<checkout> KOHYA_SD_PYTHON=<its venv python> TINY_SD_DIR=~/.cache/kohya-ext/tiny-sd15 \\
      PYTHONPATH_FOR_SD=<folder where the sd venv imports kohya_ext from> .venv/bin/python bench/overtraining.py

kohya_ext must be importable by the sd-scripts venv (installed there, or a PYTHONPATH folder as
tests/standin/harness.py's ``working_tree_overlay`` builds, given as PYTHONPATH_FOR_SD). The tiny model
is the one tests/sd_tiny_model.py builds (its U-Net is SD1.x's full layout). Random weights draw no
faces: the consistency column says what kohya-ext measures on such renders, not on a real model's.
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

from kohya_ext.training.early_stop import StopConfig
from kohya_ext.callbacks.early_stopping import EarlyStopping

SHARED = Path(os.environ.get("KOHYA_EXT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GRID, TILE = SHARED / "data" / "tadne" / "grid.jpg", 512


def tiles(first: int, n: int, size: int | None) -> list[Image.Image]:
    grid = Image.open(GRID).convert("RGB")
    cols = grid.width // TILE
    out = []
    for i in range(first, first + n):
        t = grid.crop(((i % cols) * TILE, (i // cols) * TILE, (i % cols + 1) * TILE, (i // cols + 1) * TILE))
        out.append(t.resize((size, size), Image.BICUBIC) if size else t)
    return out


def train(work: Path, tiny: dict, a: argparse.Namespace) -> tuple[dict, list[dict], float]:
    data, ref = work / "train" / "1_tadne", work / "reference"
    data.mkdir(parents=True)
    ref.mkdir()
    for i, img in enumerate(tiles(0, a.images, tiny["resolution"])):
        img.save(data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text("tadne, 1girl, portrait, anime\n", encoding="utf-8")
    for i, img in enumerate(tiles(0, a.images, None)):  # the training drawings at full size: the reference
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
    seconds = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"overtraining: the training run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {}
    for f in (out / "logs").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    rows = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    return curves, rows, seconds


def replay(rows: list[dict], key: str, mode: str, patience: int) -> tuple[int | None, int | None]:
    """(stop step, best step) that EarlyStopping on ``key`` would have given over ``rows``."""
    es = EarlyStopping(StopConfig(patience, 0.0, 0, None, key, mode))
    best, best_value = None, None
    for r in rows:
        value = r.get(key)
        ok = value is not None
        if ok and (best_value is None or (value < best_value if mode == "min" else value > best_value)):
            best, best_value = r["kohya_step"], value
        if es.update(dict(r), ok, value=value):
            return r["kohya_step"], best
    return None, best


def replay_both(rows: list[dict], patience: int, slack: float) -> tuple[int | None, int | None]:
    """The ``both`` rule: stop when neither signal improved for ``patience``; crown by consistency among
    evaluations whose validation loss is within ``slack`` of the lowest so far."""
    c = EarlyStopping(StopConfig(patience, 0.0, 0, None, "score", "max"))
    v = EarlyStopping(StopConfig(patience, 0.0, 0, None, "val_loss", "min"))
    best, best_score, low = None, None, None
    for r in rows:
        if r.get("val_loss") is not None:
            low = r["val_loss"] if low is None else min(low, r["val_loss"])
            v.update({}, True, value=r["val_loss"], alone=False)
        s = r.get("score")
        healthy = r.get("val_loss") is None or r["val_loss"] <= low * (1 + slack)
        if s is not None and healthy and (best_score is None or s > best_score):
            best, best_score = r["kohya_step"], s
        c.update(dict(r), s is not None, value=s, alone=False)
        if c.exhausted and v.exhausted:
            return r["kohya_step"], best
    return None, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd_scripts", default=os.environ.get("KOHYA_SD_SCRIPTS"))
    ap.add_argument("--python", default=os.environ.get("KOHYA_SD_PYTHON"))
    ap.add_argument("--tiny", default=os.environ.get("TINY_SD_DIR", Path.home() / ".cache" / "kohya-ext" / "tiny-sd15"))
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--every", type=int, default=20, help="save, sample, validate and evaluate every N steps")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--validation_split", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--backend", default="nvxs")
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    a = ap.parse_args(argv)
    if not (a.sd_scripts and a.python):
        ap.error("give --sd_scripts and --python (or KOHYA_SD_SCRIPTS and KOHYA_SD_PYTHON)")
    if not GRID.exists():
        ap.error(f"{GRID} not found: the shared test portraits are needed (set KOHYA_EXT_SHARED)")
    tiny = json.loads((Path(a.tiny) / "tiny_sd.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        curves, rows, seconds = train(work, tiny, a)

    train_loss = sorted(curves.get("loss/current", []))
    print(f"sd-scripts {a.sd_scripts}, {a.steps} steps of LoRA dim {a.dim} at lr {a.lr} on {a.images} images "
          f"(validation split {a.validation_split}), evaluations every {a.every} steps, {a.backend}: {seconds:.0f} s\n")
    print("| step | training loss (mean since last) | validation loss | consistency | faces found | copies | status |")
    print("|---|---|---|---|---|---|---|")
    last = 0
    for r in rows:
        step = r["kohya_step"]
        window = [v for s, v in train_loss if last < s <= step]
        last = step
        tl = f"{sum(window) / len(window):.4f}" if window else "-"
        vl = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "-"
        sc = f"{r['score']:.4f}" if r.get("score") is not None else "-"
        rate, copies = r.get("detection_rate"), r.get("memorization")
        print(f"| {step} | {tl} | {vl} | {sc} | {'-' if rate is None else f'{rate:.0%}'} | "
              f"{'-' if copies is None else f'{copies:.0%}'} | {r.get('status')}{' ' + r['error'][:60] if r.get('error') else ''} |")
    print("\n| monitor | patience | stops at step | -best holds step |")
    print("|---|---|---|---|")
    for p in (3, 5):
        for name, (stop, best) in (("val_loss", replay(rows, "val_loss", "min", p)),
                                   ("consistency", replay(rows, "score", "max", p)),
                                   ("both", replay_both(rows, p, 0.05))):
            print(f"| {name} | {p} | {stop if stop is not None else 'no stop'} | {best if best is not None else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
