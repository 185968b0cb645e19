"""Full fp32 arithmetic for the scoring networks on CUDA, so the GPU gives the CPU's points.

PyTorch lets cuDNN convolutions use TF32 by default. Measured on an H200 (torch 2.11,
bench/gpu_parity.py), that moves HRNetV2 heatmaps by ~1.5e-3 against the CPU, for the package
and for our backend alike; in full fp32 both match the CPU to 2e-6, at 5-8 % less landmark
throughput. Points must not depend on the device: a run scores on the GPU or, when memory is
short, on the CPU, and the measurement cache serves both.

The switch is process-wide in torch, so it is set only around our forwards and put back after.
A torch that refuses leaves its setting as it was: slightly different points, never a failed
evaluation.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch

logger = logging.getLogger(__name__)


def _knobs() -> list[tuple[Any, str, Any]]:
    """(object, attribute, full-fp32 value) for cuDNN convolutions and cuBLAS matmuls.

    The legacy ``allow_tf32`` flags where they can be read: they set conv and RNN together,
    as torch's own legacy getter expects (with the two apart it raises for whoever reads it).
    Where they cannot (the host set the new per-operator API), that API's ``fp32_precision``.
    """
    knobs = []
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    for legacy, new in ((cudnn, getattr(cudnn, "conv", None)), (matmul, matmul)):
        try:
            getattr(legacy, "allow_tf32")
            knobs.append((legacy, "allow_tf32", False))
        except Exception:
            if new is not None:
                knobs.append((new, "fp32_precision", "ieee"))
    return knobs


@contextlib.contextmanager
def full_fp32(device: torch.device | str) -> Iterator[None]:
    """No TF32 inside, on a CUDA ``device``; the previous settings restored on exit."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = []
    for obj, name, value in _knobs():
        try:
            old = getattr(obj, name)
            if old == value:
                continue  # already fp32: leave torch's state untouched
            setattr(obj, name, value)
            saved.append((obj, name, old))
        except Exception as e:  # a torch that refuses: its setting stays
            logger.debug("cannot turn TF32 off (%s.%s): %s", type(obj).__name__, name, e)
    try:
        yield
    finally:
        for obj, name, old in reversed(saved):
            try:
                setattr(obj, name, old)
            except Exception as e:
                logger.debug("cannot restore %s.%s: %s", type(obj).__name__, name, e)
