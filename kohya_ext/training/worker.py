"""Scoring in a separate, killable process with a deadline.

A native crash (the nvxs C library is called through ctypes), a CUDA error or a hang in
the scorer must not take training down: the worker is a spawned process, the trainer
waits on a pipe for at most ``deadline`` seconds, kills the worker past it, and starts a
new one at the next evaluation. A thread with a timeout could not be stopped.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import KohyaExtError
from ..io_utils import slug

logger = logging.getLogger(__name__)


# -- child side ---------------------------------------------------------------------------

def build_scorer(cfg: dict) -> Any:
    """The scorer for ``cfg``: ours, or ``cfg["scorer"]`` = "MODULE:CALLABLE" called with cfg.
    With ``cfg["characters"]`` (several class tokens), a dict {character: scorer}, each
    against that character's own reference."""
    if cfg.get("scorer"):
        mod, _, fn = cfg["scorer"].partition(":")
        return getattr(importlib.import_module(mod), fn)(cfg)
    from ..backends import BackendSpec
    from ..scorer import Scorer, load_references

    spec = BackendSpec(cfg.get("backend", "auto"), device=cfg.get("device", "auto"), threads=cfg.get("threads"))
    if cfg.get("characters"):
        refs = {r.name: r for r in load_references(cfg["reference"], spec, by_class=True, progress=False)}
        missing = [c for c in cfg["characters"] if c not in refs]
        if missing:
            raise KohyaExtError(f"{cfg['reference']}: no reference images for character(s) {', '.join(missing)} "
                                f"(class tokens found: {', '.join(refs)})")
        return {c: Scorer(refs[c], backend=spec, progress=False) for c in cfg["characters"]}
    return Scorer(cfg["reference"], backend=spec, progress=False)


def _weighted(parts: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Per-key means of several scalar dicts, weighted (keys a part lacks are left out of its mean)."""
    keys = {k for _, d in parts for k in d}
    out = {}
    for k in sorted(keys):
        have = [(w, d[k]) for w, d in parts if d.get(k) is not None]
        if have and sum(w for w, _ in have) > 0:
            out[k] = sum(w * v for w, v in have) / sum(w for w, _ in have)
    return out


def evaluate(scorer: Any, job: dict) -> dict:
    """Score the job's images; write report.json and the landmark-overlay grid next to them.
    A dict scorer scores each character's images against its own reference; the combined
    values are the per-character ones weighted by their number of images."""
    if isinstance(scorer, dict):
        return _evaluate_characters(scorer, job)
    from ..images import load_image

    paths = [Path(p) for p in job["paths"]]
    images = [load_image(p) for p in paths]
    report = scorer.score_images(images, [p.name for p in paths])
    return _result(report, images, Path(job["out_dir"]))


def _evaluate_characters(scorers: dict, job: dict) -> dict:
    from ..images import load_image

    chars = job.get("characters") or []
    if len(chars) != len(job["paths"]):
        raise ValueError(f"{len(job['paths'])} images but {len(chars)} character labels")
    per: dict[str, dict] = {}
    for c in sorted(set(chars)):
        paths = [Path(p) for p, pc in zip(job["paths"], chars) if pc == c]
        images = [load_image(p) for p in paths]
        sub = Path(job["out_dir"]) / f"character-{slug(c)}"
        sub.mkdir(parents=True, exist_ok=True)
        r = _result(scorers[c].score_images(images, [p.name for p in paths]), images, sub)
        r["images"] = len(paths)
        per[c] = r
    parts = [(r["images"], r["scalars"]) for r in per.values()]
    combined = _weighted(parts)
    scalars = dict(combined)
    for c, r in per.items():
        for k in ("score", "detection_rate", "memorization"):
            if r.get(k) is not None:
                scalars[f"consistency/character/{slug(c)}/{k}"] = float(r[k])
    ratio_names = {n for r in per.values() for n in r["ratios"]}
    ratios = {n: {k: _weighted([(r["images"], {k: (r["ratios"].get(n) or {}).get(k)}) for r in per.values()]).get(k)
                  for k in ("diff_pct", "z")} for n in sorted(ratio_names)}
    mems = [(r["images"], {"m": r["memorization"]}) for r in per.values() if r.get("memorization") is not None]
    first = next(iter(per.values()))
    result = {
        "score": combined["consistency/score"], "detection_rate": combined.get("consistency/detection_rate", 0.0),
        "memorization": _weighted(mems).get("m") if mems else None, "score_version": first.get("score_version"),
        "backend": first.get("backend"), "ratios": ratios, "scalars": scalars,
        "characters": {c: {k: r.get(k) for k in ("score", "detection_rate", "memorization", "images")} for c, r in per.items()},
    }
    grids = [r["grid"] for r in per.values() if r.get("grid")]
    if grids:
        from PIL import Image

        ims = [Image.open(g).convert("RGB") for g in grids]
        canvas = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)))
        y = 0
        for im in ims:
            canvas.paste(im, (0, y))
            y += im.height
        canvas.save(Path(job["out_dir"]) / "overlay_grid.png")
        result["grid"] = str(Path(job["out_dir"]) / "overlay_grid.png")
    return result


def _result(report: Any, images: list, out: Path) -> dict:
    from ..io_utils import atomic_write_text

    result: dict[str, Any] = {
        "score": float(report.score),
        "scalars": {k: float(v) for k, v in report.scalars().items()},
        "detection_rate": float(report.detection_rate),
        "memorization": None if report.memorization is None else float(report.memorization),
        "score_version": str(report.score_version),
        "backend": (report.backend or {}).get("name") or (report.backend or {}).get("backend"),
        "ratios": {k: {"diff_pct": v.diff_pct, "z": v.z} for k, v in getattr(report, "ratios", {}).items()},
    }
    try:
        import json

        atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=1, ensure_ascii=False, default=str))
    except Exception as e:  # the report file is a convenience; the numbers are what counts
        result["report_error"] = str(e)
    samples = getattr(report, "samples", None)
    if samples:
        from ..overlay import draw_overlay, overlay_grid

        grid = overlay_grid([draw_overlay(img, m) for img, m in zip(images, samples)], columns=min(4, len(images)))
        grid.save(out / "overlay_grid.png")
        result["grid"] = str(out / "overlay_grid.png")
    return result


# -- device: models on the GPU only while scoring, the CPU when GPU memory is short ----------

DEFAULT_MIN_FREE_GIB = 2.0  # HRNetV2 + the YOLOv3 detector at batch size 8, with headroom


def choose_device(requested: str, min_free_gib: float = DEFAULT_MIN_FREE_GIB, mem_get_info: Any = None) -> tuple[str, str | None]:
    """(device, note) for the next scoring, decided in the trainer process (whose CUDA context
    exists anyway, so asking costs no GPU memory). ``auto``/``cuda`` fall back to the CPU when
    less than ``min_free_gib`` is free (a 24 GB card training FLUX in fp8 with block swap)."""
    if requested == "cpu":
        return "cpu", None
    if mem_get_info is None:
        try:
            import torch
        except ImportError:
            return "cpu", None
        if not torch.cuda.is_available():
            return "cpu", None if requested == "auto" else f"{requested} asked for but CUDA is not available: scoring on the CPU"
        mem_get_info = torch.cuda.mem_get_info
    device = "cuda" if requested == "auto" else requested
    try:
        free, total = mem_get_info(None if device == "cuda" else device)
    except Exception as e:  # a broken CUDA state in the trainer is not ours to fix
        return "cpu", f"cannot query GPU memory ({type(e).__name__}: {e}): scoring on the CPU"
    if free < min_free_gib * 2**30:
        return "cpu", f"GPU memory short ({free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB, scoring wants {min_free_gib:g} GiB): scoring on the CPU"
    return device, None


def _is_oom(e: BaseException) -> bool:
    try:
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return "out of memory" in str(e).lower() and "cuda" in str(e).lower()


def is_cuda_error(text: str) -> bool:
    """A CUDA error leaves the process's CUDA context unusable: the worker must be replaced."""
    t = text.lower()
    return any(k in t for k in ("cuda error", "cudnn_status", "cublas_status", "device-side assert", "illegal memory access"))


def _scorers(scorer: Any) -> list:
    return list(scorer.values()) if isinstance(scorer, dict) else [scorer]


def _to_device(scorer: Any, device: str) -> None:
    """Ours: a fresh backend on ``device`` (built at the next measurement, reference kept);
    a custom scorer may offer ``to(device)``."""
    for sc in _scorers(scorer):
        spec = getattr(sc, "backend", None)
        if spec is not None and hasattr(spec, "hrnet_options") and hasattr(spec, "create"):
            if getattr(spec, "device", None) != device:
                from ..backends import BackendSpec

                sc.backend = BackendSpec(spec.name, device=device, threads=spec.threads, **spec.hrnet_options)
        elif callable(getattr(sc, "to", None)):
            sc.to(device)


def _cuda_in_use() -> bool:
    try:
        import torch

        return torch.cuda.is_initialized()
    except Exception:
        return False


def _release(scorer: Any) -> None:
    """Drop the models (the next scoring builds them on its device) and return cached GPU
    memory; nothing to do in a worker that never touched CUDA (models stay loaded on the CPU)."""
    if not _cuda_in_use():
        return
    for sc in _scorers(scorer):
        spec = getattr(sc, "backend", None)
        if spec is not None and hasattr(spec, "_backend") and getattr(spec, "name", None) != "nvxs":
            spec._backend = None
        elif callable(getattr(sc, "release", None)):
            sc.release()
    import gc

    gc.collect()
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:
        pass


def evaluate_on_device(scorer: Any, job: dict) -> dict:
    """``evaluate`` on ``job["device"]`` (default: as built), models released afterwards; a CUDA
    out-of-memory error is retried once on the CPU and said so."""
    device = job.get("device")
    note = job.get("device_note")
    try:
        if device:
            _to_device(scorer, device)
        try:
            result = evaluate(scorer, job)
        except Exception as e:
            if not (device and device != "cpu" and _is_oom(e)):
                raise
            _release(scorer)
            note = f"GPU out of memory while scoring ({str(e).splitlines()[0][:120]}): scored on the CPU"
            device = "cpu"
            _to_device(scorer, "cpu")
            result = evaluate(scorer, job)
    finally:
        _release(scorer)
    result["device"] = device or "default"
    if note:
        result["device_note"] = note
    return result


def _child(conn: Any, cfg: dict) -> None:
    # The trainer handles Ctrl-C; the worker just dies with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cfg.get("threads"):
        try:
            import torch

            torch.set_num_threads(int(cfg["threads"]))
        except Exception:
            pass
    try:
        scorer = build_scorer(cfg)
        info: dict[str, Any] = {"pid": os.getpid()}
        for name, sc in (scorer.items() if isinstance(scorer, dict) else [(None, scorer)]):
            ref = getattr(sc, "reference", None)
            if ref is None:
                continue
            counts = dict(getattr(ref, "counts", {}) or {})
            if name is None:
                info.update(name=getattr(ref, "name", None), counts=counts)
            else:
                info.setdefault("characters", {})[name] = counts
                total = info.setdefault("counts", {})
                for k, v in counts.items():
                    if isinstance(v, (int, float)):
                        total[k] = total.get(k, 0) + v
        _release(scorer)  # models were on the GPU only to build the reference
        conn.send(("ready", info))
    except KohyaExtError as e:
        conn.send(("error", str(e)))
        return
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(("result", evaluate_on_device(scorer, job)))
        except BaseException as e:
            tb = traceback.format_exc(limit=4)
            conn.send(("failed", f"{type(e).__name__}: {e}".strip() + "\n" + tb))


# -- parent side --------------------------------------------------------------------------

def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ScoringWorker:
    """One scoring process at a time; ``score`` never raises and never waits past its deadline."""

    def __init__(self, cfg: dict, deadline_s: float):
        self.cfg = dict(cfg)
        self.deadline_s = float(deadline_s)
        self._ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None
        self.info: dict = {}
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        parent, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=_child, args=(child, self.cfg), name="kohya-ext-scorer", daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def _receive(self, timeout: float, deadline: float | None = None) -> tuple[str, Any]:
        """("kind", payload) from the worker; ("dead", why) or ("timeout", why) otherwise."""
        deadline = timeout if deadline is None else deadline
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self.kill()
                return "timeout", f"scoring worker passed its {deadline:g} s deadline and was killed"
            try:
                if self.conn.poll(min(left, 0.2)):
                    return self.conn.recv()
            except (EOFError, OSError):
                pass
            else:
                if self.proc.is_alive():
                    continue
                if self.conn.poll(0):  # it answered just before exiting
                    try:
                        return self.conn.recv()
                    except (EOFError, OSError):
                        pass
            self.proc.join(1)
            why = f"scoring worker died ({_describe_exit(self.proc.exitcode)})"
            self._drop()
            return "dead", why

    def wait_ready(self, timeout: float) -> dict:
        """Wait for the worker to load its scorer and reference; raise KohyaExtError if it cannot."""
        kind, payload = self._receive(timeout)
        if kind == "ready":
            self.info = payload
            return payload
        self.kill()
        if kind == "error":
            raise KohyaExtError(payload)
        raise KohyaExtError(f"{payload} while loading the scorer and reference")

    def score(self, job: dict, deadline_s: float | None = None) -> dict:
        """{"ok": True, ...result} or {"ok": False, "error": "..."}; restarts a dead worker first."""
        deadline = self.deadline_s if deadline_s is None else deadline_s
        t0 = time.monotonic()
        if not self.alive():
            if self.proc is not None:
                self._drop()
            self.restarts += 1
            self.start()
            try:
                self.wait_ready(deadline)
            except KohyaExtError as e:
                return {"ok": False, "error": f"restarting the scoring worker failed: {e}"}
        try:
            self.conn.send(job)
        except (OSError, BrokenPipeError) as e:
            self.kill()
            return {"ok": False, "error": f"scoring worker unreachable: {e}"}
        kind, payload = self._receive(max(0.1, deadline - (time.monotonic() - t0)), deadline)
        if kind == "result":
            return {"ok": True, **payload}
        if kind == "failed":
            if is_cuda_error(payload):
                self.kill()  # its CUDA context is broken: the next evaluation starts a fresh worker
                payload = payload.splitlines()[0] + " (CUDA error: scoring worker replaced)\n" + "\n".join(payload.splitlines()[1:])
            return {"ok": False, "error": payload.splitlines()[0], "traceback": payload}
        return {"ok": False, "error": payload}

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None
        if self.proc is not None and not self.proc.is_alive():
            self.proc = None

    def close(self) -> None:
        if self.alive():
            try:
                self.conn.send(None)
                self.proc.join(2)
            except (OSError, BrokenPipeError):
                pass
        self.kill()
