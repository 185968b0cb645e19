"""What one consistency evaluation costs against one training step, per sd-scripts model family.

    KOHYA_SD_SCRIPTS=/work/sd/v011 KOHYA_SD_PYTHON=/work/sd/v011/venv/bin/python \
        .venv/bin/python bench/family_eval_cost.py sd15 sdxl anima flux

Each family trains 4 LoRA steps on its tiny random model (tests/sd_tiny_model.py, built once and
cached as the family tests do: $TINY_MODELS_DIR/tiny-<family>, default ~/.cache/kohya-ext) with its
usual options, evaluating at steps 2 and 4. A step's time is the median interval between the
TensorBoard ``loss/current`` events of steps with no save or evaluation before them; render and
score seconds are the leaderboard's own per-evaluation timings; peak RSS is the trainer's. Prints
the machine and a markdown table. On a lent GPU, run the same command there for the GPU column.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine_info import cpu_line

REPO = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("TINY_MODELS_DIR", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kohya-ext"))
# Runs the trainer as a child and prints its peak RSS: this process's own children's peak would mix families.
_PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def _tiny(family: str, py: str) -> dict:
    root = MODELS / f"tiny-{family}"
    if not (root / "tiny_sd.json").exists():
        subprocess.run([py, str(REPO / "tests" / "sd_tiny_model.py"), str(root), "--family", family], check=True, timeout=3600)
    return json.loads((root / "tiny_sd.json").read_text())


def train_args(py: str, root: str, out: Path, steps: int = 4, save_every: int = 2) -> list[str]:
    """The tiny model's train_network.py arguments (tests/sd_tiny_model.py, run by the sd venv's ``py``), without samples."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from sd_tiny_model import load_tiny_sd; print(chr(10).join("
            f"load_tiny_sd({root!r}).train_network_args({str(out)!r}, steps={steps}, save_every={save_every}, sample_every=0)))")
    args = subprocess.run([py, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()
    i = args.index("--sample_every_n_steps")
    return args[:i] + args[i + 2 :]  # no user samples: the renders measured are kohya-ext's own


def _step_seconds(logs: Path, eval_steps: set[int]) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times: dict[int, float] = {}
    for f in logs.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if "loss/current" in acc.Tags()["scalars"]:
            times.update({e.step: e.wall_time for e in acc.Scalars("loss/current")})
    steps = sorted(times)
    pure = [times[b] - times[a] for a, b in zip(steps, steps[1:]) if a not in eval_steps]
    return statistics.median(pure) if pure else float("nan")


def measure(family: str, sd: str, py: str, reference: Path, work: Path, log_dir: Path | None = None) -> dict:
    tiny = _tiny(family, py)
    run = work / family
    out = run / "out"
    run.mkdir()
    spec = importlib.util.spec_from_file_location("standin_harness", REPO / "tests" / "standin" / "harness.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)  # its overlay lends this working tree's kohya_ext to sd-scripts' venv

    # HF_HUB_OFFLINE as the family tests: every tokenizer is local (Lumina's Gemma one in the builder's HF cache)
    env = {**os.environ, "PYTHONPATH": str(harness.working_tree_overlay(run, py)), "OMP_NUM_THREADS": str(os.cpu_count() or 2),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", _PEAK, py, "-m", "kohya_ext", tiny.get("script", "train_network.py"), *train_args(py, tiny["root"], out),
           "--consistency", "--consistency_backend", "nvxs", "--consistency_prompts", tiny["prompts_file"],
           "--consistency_reference", str(reference)]
    proc = subprocess.run(cmd, cwd=sd, env=env, capture_output=True, text=True)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{family}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        said = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("peak_rss_kb")]
        return {"family": family, "error": (said or ["?"])[-1][:120]}
    peak_kb = int(proc.stderr.rsplit("peak_rss_kb", 1)[1].split()[0])
    board = json.loads((out / "consistency" / "leaderboard.json").read_text())["evaluations"]
    step = _step_seconds(out / "logs", {r["kohya_step"] for r in board})
    render = statistics.mean(r["seconds_render"] for r in board)
    score = statistics.mean(r["seconds_score"] for r in board)
    return {"family": family, "script": tiny.get("script", "train_network.py"), "step": step, "render": render, "score": score,
            "ratio": (render + score) / step, "peak_gb": peak_kb / 1024**2, "evaluations": len(board)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("families", nargs="+", help="sd15, sdxl, anima, flux, ... (tests/sd_tiny_model.py BUILDERS)")
    ap.add_argument("--log-dir", type=Path, default=None, help="write each family's training output to <family>.log here")
    a = ap.parse_args()
    sd, py = os.environ.get("KOHYA_SD_SCRIPTS"), os.environ.get("KOHYA_SD_PYTHON")
    if not sd or not py:
        print("family_eval_cost: set KOHYA_SD_SCRIPTS (an sd-scripts checkout) and KOHYA_SD_PYTHON (its venv's python)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import GRID, _grid_tiles  # the shared TADNE portraits; 64 px renders hold no face of their own
    from PIL import Image

    if not GRID.exists():
        print(f"family_eval_cost: {GRID} is missing (../shared): the reference is built from it", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "-C", sd, "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {cpu_line()}; sd-scripts {sd} ({commit or '?'})\n")
    with tempfile.TemporaryDirectory(prefix="kohya_ext_family_cost_") as tmp:
        work = Path(tmp)
        reference = work / "reference"
        reference.mkdir()
        for i, tile in enumerate(_grid_tiles()[:8]):
            Image.fromarray(tile).save(reference / f"{i:02d}.png")
        print("| family | script | s / step | render s / eval | score s / eval | eval / step | peak RSS GB |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for family in a.families:
            r = measure(family, sd, py, reference, work, a.log_dir)
            if "error" in r:
                print(f"| {family} | failed: {r['error']} | | | | | |", flush=True)
                continue
            print(f"| {family} | {r['script']} | {r['step']:.1f} | {r['render']:.1f} | {r['score']:.2f} | {r['ratio']:.2f}x | "
                  f"{r['peak_gb']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
