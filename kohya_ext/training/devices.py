"""Where the scoring runs: the GPU only while scoring and only with memory to spare, else the
CPU; models released after each evaluation; a CUDA out-of-memory error retried on the CPU."""

from __future__ import annotations

from typing import Any

from .evaluation import evaluate


# Measured on an H200 (bench/gpu_scoring.py): the worker's CUDA context 0.7 GiB, 1.7 GiB at the peak of
# scoring 4 images; larger evaluations can pass it, and a CUDA out-of-memory error is retried on the CPU.
DEFAULT_MIN_FREE_GIB = 2.0


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


def cuda_in_use() -> bool:
    try:
        import torch

        return torch.cuda.is_initialized()
    except Exception:
        return False


def release(scorer: Any) -> None:
    """Drop the models (the next scoring builds them on its device) and return cached GPU
    memory; nothing to do in a worker that never touched CUDA (models stay loaded on the CPU)."""
    if not cuda_in_use():
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
            release(scorer)
            note = f"GPU out of memory while scoring ({str(e).splitlines()[0][:120]}): scored on the CPU"
            device = "cpu"
            _to_device(scorer, "cpu")
            result = evaluate(scorer, job)
    finally:
        release(scorer)
    result["device"] = device or "default"
    if note:
        result["device_note"] = note
    return result
