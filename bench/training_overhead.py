"""Cost of consistency evaluation inside training: one evaluation split into rendering and
scoring, and the wall-time overhead of a run with --consistency on vs off (default cadence).

    python bench/training_overhead.py                      # the stand-in loop (CI-sized, no sd-scripts)
    KOHYA_SD_SCRIPTS=... KOHYA_SD_PYTHON=... TINY_SD_DIR=... python bench/training_overhead.py --real

--real runs sd-scripts' train_network.py on the tiny random SD1.x model (CPU, several minutes
per run); on a lent GPU pass your own model arguments after `--` instead.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("standin_harness", REPO / "tests" / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)


def _tiles(n: int) -> list:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import GRID, _grid_tiles

    return _grid_tiles()[:n] if GRID.exists() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="store_true", help="sd-scripts train_network.py on the tiny model")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--save-every", type=int, default=4)
    ap.add_argument("--backend", default="nvxs")
    ap.add_argument("extra", nargs="*", help="extra trainer arguments (after --)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kohya_ext_bench_"))
    tiles = _tiles(16)
    ref = root / "reference"
    ref.mkdir()
    from PIL import Image

    for i, t in enumerate(tiles[:8] if tiles else []):
        Image.fromarray(t).save(ref / f"{i:02d}.png")
    rows = []
    for on in (False, True):
        run = root / ("on" if on else "off")
        run.mkdir()
        if a.real:
            from family_eval_cost import train_args  # bench/family_eval_cost.py (the script's folder is on sys.path)

            tiny_dir = os.environ["TINY_SD_DIR"]
            args = train_args(os.environ["KOHYA_SD_PYTHON"], tiny_dir, run / "out", a.steps, a.save_every)
            prompts = json.loads((Path(tiny_dir) / "tiny_sd.json").read_text())["prompts_file"]
            kw = dict(sd_scripts=Path(os.environ["KOHYA_SD_SCRIPTS"]), python=os.environ["KOHYA_SD_PYTHON"], timeout=3600)
            env = {"PYTHONPATH": str(h.working_tree_overlay(root, os.environ["KOHYA_SD_PYTHON"]))}
        else:
            h.make_dataset(run, 8, tiles[8:16] if tiles else None, size=128)
            args = h.base_args(run, steps=a.steps, save_every=a.save_every) + ["--resolution", "128"]
            prompts, kw, env = None, {}, {}
            if tiles:
                faces = run / "faces"
                faces.mkdir()
                for i, t in enumerate(tiles[8:12]):
                    Image.fromarray(t).resize((128, 128)).save(faces / f"{i:02d}.png")
                args += ["--standin_faces", str(faces)]
        if on:
            args += ["--consistency", "--consistency_backend", a.backend, "--consistency_reference", str(ref)]
            if prompts:
                args += ["--consistency_prompts", prompts]
        t0 = time.monotonic()
        proc = h.run_trainer(run, args + a.extra, env=env, **kw)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        board = []
        if on:
            board = json.loads((run / "out" / "consistency" / "leaderboard.json").read_text())["evaluations"]
        rows.append((on, wall, board))
    off_wall = rows[0][1]
    on_wall, board = rows[1][1], rows[1][2]
    n = len(board)
    render = sum(r["seconds_render"] for r in board) / max(1, n)
    score = sum(r["seconds_score"] for r in board) / max(1, n)
    print("| loop | steps | evaluations | wall off (s) | wall on (s) | overhead (s) | overhead | render / eval (s) | score / eval (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {'sd-scripts tiny SD1.x' if a.real else 'stand-in'} | {a.steps} | {n} | {off_wall:.1f} | {on_wall:.1f} | "
          f"{on_wall - off_wall:.1f} | {100 * (on_wall - off_wall) / off_wall:.0f}% | {render:.2f} | {score:.2f} |")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
