"""Landmark backends and the choice between them (the contract they share: ``base``).

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


class BackendSpec:
    """A backend choice that can say what it is (``identity``) without loading any model.

    The identity keys caches and is stored in references and reports; ``create``
    builds the backend only when images actually need measuring.
    """

    def __init__(self, name: str = "auto", *, device: str = "auto", threads: int | None = None, **hrnet_options: Any):
        if name not in BACKEND_NAMES:
            raise KohyaExtError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
        self.requested = name
        self.device = device
        self.threads = threads
        self.hrnet_options = {k: v for k, v in hrnet_options.items() if v is not None}
        self._name: str | None = None
        self._identity: dict | None = None
        self._backend = None

    @property
    def name(self) -> str:
        if self._name is None:
            self._name, why = resolve_backend_name(self.requested, **self.hrnet_options)
            if self.requested == "auto":
                logger.warning(why)
        return self._name

    def identity(self) -> dict:
        if self._identity is None:
            if self.name == "nvxs":
                self._identity = self.create().identity()
            else:
                from . import hrnet

                if hasattr(hrnet, "hrnet_identity"):
                    self._identity = hrnet.hrnet_identity(**self.hrnet_options)
                else:
                    self._identity = self.create().identity()
        return self._identity

    def create(self):
        if self._backend is None:
            if self.name == "nvxs":
                from .nvxs import NvxsBackend

                self._backend = NvxsBackend(threads=self.threads)
            else:
                from .hrnet import HrnetBackend

                self._backend = HrnetBackend(device=self.device, **self.hrnet_options)
        return self._backend
