"""Scoring on a GPU, through the scoring worker training uses: time per evaluation against the
CPU, the GPU memory the worker keeps between evaluations, and the real fallbacks.

What it runs (the hrnet backend with seeded random weights in the released layout,
tests/hrnet_fixtures.py; TADNE portraits from the demo grid as reference and samples):

1. time: a worker on the CPU and one on the GPU, each loading the reference once and
   scoring the same evaluation --repeats times (models dropped after each, as in training).
2. memory: free GPU memory (``torch.cuda.mem_get_info``, the whole card) seen from the trainer
   process before the worker starts, after it loaded the reference, during each scoring (the
   lowest value a 5 ms poll saw) and after it, and after the worker is closed; and what
   ``nvidia-smi`` says each process holds.
3. fallbacks, for real instead of simulated (the CI tests fake ``mem_get_info``):
   ``choose_device`` with the card filled to under 2 GiB free; a job sent to the GPU with too
   little free memory to score (out of memory: retried on the CPU, said so); a device-side
   assert inside scoring (the evaluation fails, the worker is replaced, the next evaluation
   scores on a fresh one).

Random weights find arbitrary faces, so the score means nothing; the timings and the memory
do not depend on it (the detector's NMS does: random weights pass ~10^4 candidate boxes).

    python bench/gpu_scoring.py [--grid ../shared/data/tadne/grid.jpg] [--json out.json]

Without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

GIB = 2**30
MIB = 2**20


class AssertingScorer:
    """A real scorer that triggers a CUDA device-side assert when an image's name starts
    with ``assert``: the worker's CUDA context is unusable afterwards, as after a real bug."""

    def __init__(self, cfg: dict) -> None:
        from kohya_ext.training.evaluation import build_scorer

        self.inner = build_scorer({k: v for k, v in cfg.items() if k != "scorer"})

    @property
    def backend(self):
        return self.inner.backend

    @backend.setter
    def backend(self, spec) -> None:
        self.inner.backend = spec

    @property
    def reference(self):
        return self.inner.reference

    def score_images(self, images, names):
        if any(n.startswith("assert") for n in names):
            import torch

            x = torch.arange(3, device="cuda")
            idx = torch.tensor([7], device="cuda")
            x[idx].sum().item()  # out of bounds on the device: device-side assert
        return self.inner.score_images(images, names)


def _portraits(grid: Path, folder: Path, n_ref: int, n_eval: int) -> tuple[Path, list[Path]]:
    from PIL import Image

    from kohya_ext.demo import grid_tiles
    from kohya_ext.images import load_image

    tiles = grid_tiles(load_image(grid))
    ref, ev = folder / "reference", folder / "samples"
    ref.mkdir(parents=True, exist_ok=True)
    ev.mkdir(parents=True, exist_ok=True)
    for i in range(n_ref):
        Image.fromarray(tiles[i % len(tiles)]).save(ref / f"ref{i:02d}.png")
    paths = []
    for i in range(n_eval):
        p = ev / f"{i:02d}.png"
        Image.fromarray(tiles[(n_ref + i) % len(tiles)]).save(p)
        paths.append(p)
    return ref, paths


class FreePoll:
    """The lowest free GPU memory seen while it runs (the card's, all processes)."""

    def __init__(self, torch) -> None:
        self.torch, self.low, self._stop = torch, None, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            free = self.torch.cuda.mem_get_info()[0]
            self.low = free if self.low is None else min(self.low, free)
            time.sleep(0.005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def _smi_apps() -> dict[int, int]:
    """{pid: MiB} per process on the GPU, as nvidia-smi reports it (empty if it cannot)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    apps = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            apps[int(parts[0])] = int(parts[1])
    return apps


def _worker(cfg: dict):
    from kohya_ext.training.worker import ScoringWorker

    w = ScoringWorker(cfg, deadline_s=600)
    w.start()
    t = time.perf_counter()
    w.wait_ready(1800)
    return w, time.perf_counter() - t


def _job(paths: list[Path], out: Path, device: str) -> dict:
    """A job as callbacks/evaluator.py sends it, its device forced (no choose_device)."""
    out.mkdir(parents=True, exist_ok=True)  # the trainer makes the evaluation folder before the job
    return {"paths": [str(p) for p in paths], "out_dir": str(out), "device": device, "device_note": None}


def time_and_memory(torch, cfg: dict, paths: list[Path], tmp: Path, repeats: int, cpu_repeats: int) -> dict:
    """The GPU first: its worker measures the reference into the cache the CPU worker then reads."""
    res: dict = {}
    free0 = torch.cuda.mem_get_info()[0]
    for device in ("cuda", "cpu"):
        w, ready_s = _worker({**cfg, "device": device})
        free_ready = torch.cuda.mem_get_info()[0]
        rows = []
        for r in range(repeats if device == "cuda" else cpu_repeats):
            with FreePoll(torch) as poll:
                t = time.perf_counter()
                out = w.score(_job(paths, tmp / f"eval-{device}-{r}", device))
                dt = time.perf_counter() - t
            if not out["ok"]:
                raise SystemExit(f"scoring on {device} failed: {out['error']}")
            rows.append({"seconds": dt, "device": out["device"], "score": out["score"],
                         "free_low": poll.low, "free_after": torch.cuda.mem_get_info()[0]})
        apps = _smi_apps()
        worker_pid = w.pid
        w.close()
        time.sleep(1.0)
        res[device] = {"ready_s": ready_s, "free_ready": free_ready, "evals": rows, "smi_worker_mib": apps.get(worker_pid),
                       "smi_trainer_mib": apps.get(os.getpid()), "free_closed": torch.cuda.mem_get_info()[0]}
    res["free_before"] = free0
    return res


def fallbacks(torch, cfg: dict, paths: list[Path], tmp: Path, worker_ctx_bytes: int) -> dict:
    from kohya_ext.training.devices import DEFAULT_MIN_FREE_GIB, choose_device
    out: dict = {}
    # 1. choose_device with the card filled to 1 GiB free
    free = torch.cuda.mem_get_info()[0]
    hog = torch.empty(int(free - 1 * GIB), dtype=torch.uint8, device="cuda")
    out["choose_full"] = choose_device("auto")
    del hog
    torch.cuda.empty_cache()
    out["choose_empty"] = choose_device("auto")
    # 2. a job sent to the GPU with room for the worker's context and little else
    w, _ = _worker({**cfg, "device": "cpu"})
    free = torch.cuda.mem_get_info()[0]
    leave = worker_ctx_bytes + 64 * MIB
    hog = torch.empty(int(free - leave), dtype=torch.uint8, device="cuda")
    r = w.score(_job(paths, tmp / "eval-oom", "cuda"))
    out["oom"] = {"left_free_mib": leave / MIB, "ok": r["ok"], "device": r.get("device"), "note": r.get("device_note"),
                  "error": r.get("error")}
    del hog
    torch.cuda.empty_cache()
    r2 = w.score(_job(paths, tmp / "eval-after-oom", "cuda"))
    out["after_oom"] = {"ok": r2["ok"], "device": r2.get("device"), "restarts": w.restarts}
    w.close()
    # 3. a device-side assert inside scoring
    w, _ = _worker({**cfg, "device": "cuda", "scorer": "gpu_scoring:AssertingScorer"})
    pid0 = w.pid
    bad = tmp / "assert00.png"
    bad.write_bytes(paths[0].read_bytes())
    r = w.score(_job([bad], tmp / "eval-assert", "cuda"))
    out["cuda_error"] = {"ok": r["ok"], "error": r.get("error"), "worker_alive_after": w.alive()}
    r = w.score(_job(paths, tmp / "eval-after-assert", "cuda"))
    out["after_cuda_error"] = {"ok": r["ok"], "device": r.get("device"), "restarts": w.restarts,
                               "new_pid": w.pid is not None and w.pid != pid0}
    w.close()
    out["min_free_gib"] = DEFAULT_MIN_FREE_GIB
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(REPO.parent / "shared" / "data" / "tadne" / "grid.jpg"))
    ap.add_argument("--reference-images", type=int, default=12)
    ap.add_argument("--eval-images", type=int, default=4, help="images per evaluation (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="evaluations timed on the GPU (default 3)")
    ap.add_argument("--cpu-repeats", type=int, default=1, help="evaluations timed on the CPU (default 1: slow with random weights)")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_scoring: no CUDA device here: nothing to measure (run it on a machine with a GPU)")
        return 2
    import hrnet_fixtures
    from machine_info import cpu_line

    tmp = Path(tempfile.mkdtemp(prefix="kohya_ext_gpu_"))
    wdir = hrnet_fixtures.random_weights_dir(tmp / "weights", ("hrnetv2", "yolov3"))
    os.environ["KOHYA_EXT_WEIGHTS_DIR"] = str(wdir)  # the spawned workers inherit it
    os.environ.setdefault("KOHYA_EXT_CACHE", str(tmp / "cache"))
    ref, paths = _portraits(Path(args.grid), tmp, args.reference_images, args.eval_images)
    # the trainer's own CUDA context, as in a training run
    torch.zeros(1, device="cuda")
    # the worker's cfg as callbacks/evaluator.py builds it
    cfg = {"reference": str(ref), "backend": "hrnet", "threads": max(1, (os.cpu_count() or 2) // 4), "scorer": None,
           "characters": None}
    props = torch.cuda.get_device_properties(0)
    print(f"GPU {props.name}, {props.total_memory / GIB:.1f} GiB, torch {torch.__version__}; CPU {cpu_line()}; "
          f"worker threads {cfg['threads']}; {args.eval_images} images per evaluation, reference {args.reference_images}, "
          f"hrnet + yolov3 random weights\n", flush=True)

    tm = time_and_memory(torch, cfg, paths, tmp, args.repeats, args.cpu_repeats)
    print("| scoring on | worker ready s (start + reference; the CPU's from the GPU's measurement cache) | first evaluation s | best evaluation s | images/s | device reported |")
    print("|---|---:|---:|---:|---:|---|")
    for d in ("cuda", "cpu"):
        ev = tm[d]["evals"]
        best = min(e["seconds"] for e in ev)
        ready = f"{tm[d]['ready_s']:.2f}"
        print(f"| {d} | {ready} | {ev[0]['seconds']:.3f} | {best:.3f} (of {len(ev)}) | {args.eval_images / best:.1f} | {ev[-1]['device']} |")
    c = tm["cuda"]
    base = tm["free_before"]
    ctx = base - c["free_ready"]
    peak = base - min(e["free_low"] for e in c["evals"])
    kept = base - c["evals"][-1]["free_after"]
    print("\n| GPU memory (card-wide, from the trainer) | MiB |")
    print("|---|---:|")
    print(f"| worker after loading the reference (models dropped) | {ctx / MIB:.0f} |")
    print(f"| worker while scoring (peak seen) | {peak / MIB:.0f} |")
    print(f"| worker between evaluations (models dropped, cache emptied) | {kept / MIB:.0f} |")
    print(f"| after the worker closed | {(base - c['free_closed']) / MIB:.0f} |")
    print(f"| nvidia-smi: worker / trainer process | {c['smi_worker_mib']} / {c['smi_trainer_mib']} |")
    print(f"| CPU worker (never touches CUDA) | {(base - tm['cpu']['evals'][-1]['free_after']) / MIB:.0f} |", flush=True)

    fb = fallbacks(torch, cfg, paths, tmp, max(kept, ctx))
    print("\n| fallback, real | outcome |")
    print("|---|---|")
    print(f"| choose_device(auto), card filled to 1 GiB free | {fb['choose_full'][0]}: {fb['choose_full'][1]} |")
    print(f"| choose_device(auto), card free again | {fb['choose_empty'][0]} |")
    o = fb["oom"]
    print(f"| job on cuda with {o['left_free_mib']:.0f} MiB free | ok={o['ok']}, scored on {o['device']}: {o['note'] or o['error']} |")
    print(f"| next job on cuda, memory free again | ok={fb['after_oom']['ok']}, on {fb['after_oom']['device']}, restarts {fb['after_oom']['restarts']} |")
    e = fb["cuda_error"]
    print(f"| device-side assert while scoring | ok={e['ok']}: {e['error']}; worker alive after: {e['worker_alive_after']} |")
    a = fb["after_cuda_error"]
    print(f"| next evaluation | ok={a['ok']}, on {a['device']}, restarts {a['restarts']}, new worker process: {a['new_pid']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"time_memory": tm, "fallbacks": fb}, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
