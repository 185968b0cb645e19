"""Run folders for the rank / compare / report tests, built from the shared portraits.

``make_sample_run``: a run trained WITHOUT kohya-ext: ``sample/`` named exactly as
sd-scripts' ``sample_image_inference`` names files (``{output_name}_{num}_{i:02d}_{ts}{_seed}.png``),
a kohya_ss-GUI style ``config_lora-*.toml`` naming the training data, one epoch checkpoint
whose ``ss_steps`` metadata gives that epoch's step.
``make_kohya_ext_run``: a run trained WITH kohya-ext: ``consistency/`` written by the training
modules themselves (evaluation.evaluate for each evaluation, the Leaderboard writer, a run record),
plus TensorBoard loss scalars under a sd-scripts style ``logging_dir/{prefix}{timestamp}/``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

OUTPUT_NAME = "sks_girl_v2_000100"  # underscores and a step-like number: parsing must take fields from the right
T0 = datetime(2024, 5, 6, 7, 8, 9)


def stretched(tile: np.ndarray) -> Image.Image:
    """The portrait squashed vertically: the same character drawn with wrong proportions."""
    im = Image.fromarray(tile).resize((512, 330))
    canvas = Image.new("RGB", (512, 512), (250, 250, 250))
    canvas.paste(im, (0, 91))
    return canvas


def write_reference(root: Path, tiles: list[np.ndarray], n: int = 12) -> Path:
    """A kohya train_data_dir (``10_sks girl``) with the first ``n`` portraits."""
    d = root / "train" / "10_sks girl"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(tiles[i]).save(d / f"{i:02d}.png")
    return d.parent


def sample_file(sample_dir: Path, num: str, idx: int, when: datetime, seed: int | None, output_name: str | None = OUTPUT_NAME) -> Path:
    """A path named the way sd-scripts names a sample (see kohya_ext.patches.sample_names)."""
    prefix = "" if output_name is None else output_name + "_"
    seed_suffix = "" if seed is None else f"_{seed}"
    return sample_dir / f"{prefix}{num}_{idx:02d}_{when:%Y%m%d%H%M%S}{seed_suffix}.png"


def write_safetensors_metadata(path: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 2), np.float32)}, str(path), metadata=metadata)


def make_sample_run(root: Path, tiles: list[np.ndarray], per_step: int = 4, config: bool = True) -> Path:
    """Step 100: new portraits; step 200: squashed ones; epoch 1 (step 250 per its checkpoint) and
    epoch 2 (no checkpoint left): new portraits. Prompt indices go past 99; step 200 has no seeds."""
    train = write_reference(root, tiles)
    run = root / "run"
    s = run / "sample"
    s.mkdir(parents=True, exist_ok=True)
    plan = [("000100", lambda t: Image.fromarray(t), 12, True), ("000200", stretched, 16, False),
            ("e000001", lambda t: Image.fromarray(t), 20, True), ("e000002", lambda t: Image.fromarray(t), 24, True)]
    for k, (num, make, first, seeded) in enumerate(plan):
        for j in range(per_step):
            idx = 98 + j  # 98, 99, 100, 101: wider than kohya's {i:02d} padding
            make(tiles[first + j]).save(sample_file(s, num, idx, T0 + timedelta(minutes=10 * k, seconds=j), 1000 + j if seeded else None))
    (s / "notes.png").write_bytes((s / next(p.name for p in s.iterdir())).read_bytes())  # a stray image, not a sample name
    write_safetensors_metadata(run / f"{OUTPUT_NAME}-000001.safetensors",
                               {"ss_steps": "250", "ss_epoch": "1", "ss_dataset_dirs": json.dumps({"10_sks girl": {"n_repeats": 10, "img_count": 12}})})
    if config:
        (run / "config_lora-20240506-070000.toml").write_text(
            f'[model]\noutput_name = "{OUTPUT_NAME}"\n[data]\ntrain_data_dir = "{train.as_posix()}"\n', encoding="utf-8")
    return run


def make_kohya_ext_run(root: Path, tiles: list[np.ndarray], cache_dir: Path) -> Path:
    """Three evaluations (steps 100, 200, 300) through the training modules; early stop at 300."""
    from kohya_ext.backends import BackendSpec
    from kohya_ext.scorer import Scorer
    from kohya_ext.training.leaderboard import Leaderboard
    from kohya_ext.training.evaluation import evaluate

    train = write_reference(root, tiles)
    run = root / "run_ext"
    folder = run / "consistency"
    scorer = Scorer(train, BackendSpec("nvxs"), cache_dir=cache_dir, progress=False)
    board = Leaderboard(folder)
    board.meta = {"output_name": "ext", "options": {"consistency_reference": str(train)}}
    best = None
    for k, (step, make, first) in enumerate([(100, Image.fromarray, 12), (200, Image.fromarray, 20), (300, stretched, 16)]):
        eval_dir = folder / f"eval-{step:08d}"
        eval_dir.mkdir(parents=True)
        paths = []
        for j in range(4):
            p = eval_dir / f"{j:02d}.png"
            make(tiles[first + j]).save(p)
            paths.append(str(p))
        r = evaluate(scorer, {"paths": paths, "out_dir": str(eval_dir), "cum_step": step})
        is_best = best is None or r["score"] > best
        best = max(best or 0.0, r["score"])
        row = {"status": "ok", "cum_step": step, "kohya_step": step, "epoch": 1, "trigger": "step_save",
               "checkpoint": f"ext-step{step:08d}.safetensors", "score": r["score"], "detection_rate": r["detection_rate"],
               "memorization": r["memorization"], "memorized": False, "is_best": is_best, "backend": r["backend"],
               "score_version": r["score_version"], "images_dir": eval_dir.name,
               "time": (T0 + timedelta(minutes=10 * (k + 1))).timestamp(),
               "stop": step == 300, "stop_reason": "patience_exhausted" if step == 300 else None,
               "message": "no improvement for 1 evaluation(s)" if step == 300 else ""}
        for name, v in r["ratios"].items():
            row[f"{name}_diff_pct"], row[f"{name}_z"] = v["diff_pct"], v["z"]
        board.add(row)
    tb = root / "logs" / f"ext{T0:%Y%m%d%H%M%S}" / "network_train"
    write_loss_events(tb, 300)
    (folder / "run.json").write_text(json.dumps({"format": "kohya-ext-run", "tensorboard_dir": str(tb),
                                                 "stopped": {"kohya_step": 300, "reason": "patience_exhausted"}}))
    return run


def write_loss_events(tb_dir: Path, steps: int) -> None:
    """loss/current and loss/average at every step, as sd-scripts logs them to TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tb_dir))
    rng = np.random.default_rng(0)
    avg = 0.0
    for step in range(1, steps + 1):
        cur = 0.15 * np.exp(-step / 120) + 0.05 + 0.02 * rng.standard_normal()
        avg += (cur - avg) / step
        w.add_scalar("loss/current", float(cur), step)
        w.add_scalar("loss/average", float(avg), step)
    w.close()
