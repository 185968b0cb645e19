"""Landmark backends and the choice between them.

- ``hrnet``: anime-face-detector 0.1.0 (YOLOv3 / Faster R-CNN + HRNetV2, 28 points),
  batched in torch on CUDA or CPU; needs its weights (Hub cache or local files).
- ``nvxs``: the offline detector compiled into the animeface wheel (Linux x86-64),
  CPU only, no weights to download; no eyebrows, so six of the seven ratios.
- ``auto``: hrnet when its weights are available, else nvxs, with a one-line notice.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import KohyaExtError

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "hrnet", "nvxs")


def resolve_backend_name(name: str, **hrnet_options: Any) -> tuple[str, str]:
    """Turn ``auto`` into a concrete backend; returns ``(name, why)``."""
    if name not in BACKEND_NAMES:
        raise KohyaExtError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if name != "auto":
        return name, f"backend {name} (asked for)"
    from .weights import hrnet_weights_status

    ok, why = hrnet_weights_status(
        landmark_weights=hrnet_options.get("landmark_weights"),
        detector_weights=hrnet_options.get("detector_weights"),
        face_detector=hrnet_options.get("face_detector", "yolov3"),
    )
    if ok:
        return "hrnet", "backend auto -> hrnet (its weights are available)"
    return "nvxs", f"backend auto -> nvxs, because hrnet is unavailable: {why}"


def create_backend(name: str = "auto", *, device: str = "auto", threads: int | None = None, **hrnet_options: Any):
    """Build a backend by name. ``auto`` logs one line saying what it chose and why."""
    concrete, why = resolve_backend_name(name, **hrnet_options)
    if name == "auto":
        logger.warning(why)
    if concrete == "nvxs":
        from .nvxs import NvxsBackend

        return NvxsBackend(threads=threads)
    from .hrnet import HrnetBackend

    return HrnetBackend(device=device, **hrnet_options)
