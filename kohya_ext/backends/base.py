"""The landmark-backend contract: what every detector returns, per image and per face.

Coordinates are image pixels, x to the right, y down. "Left" and "right" always
mean image-left and image-right (the character's right and left), whatever
the backend's own naming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: (4,) float32, x0, y0, x1, y1 in pixels.
        score: face-detector confidence in [0, 1].
        points: (K, 2) float32 landmark coordinates in pixels; K and the
            meaning of each index are fixed per backend (``Backend.point_names``).
        point_scores: (K,) float32 per-point confidence in [0, 1].
    """

    box: np.ndarray
    score: float
    points: np.ndarray
    point_scores: np.ndarray

    @property
    def size(self) -> float:
        """Geometric mean of the box sides, in pixels."""
        w = float(self.box[2] - self.box[0])
        h = float(self.box[3] - self.box[1])
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))


@dataclass
class ImageFaces:
    """Everything a backend found in one image (possibly nothing)."""

    faces: list[Face] = field(default_factory=list)
    width: int = 0
    height: int = 0

    def primary(self, min_score: float = 0.0) -> Face | None:
        """The face the metric uses: the largest one at or above ``min_score``.

        Character samples are portraits, so one face per image; images with
        several faces are counted by the caller, not averaged.
        """
        confident = [f for f in self.faces if f.score >= min_score]
        if not confident:
            return None
        return max(confident, key=lambda f: f.size)


class Backend(Protocol):
    """A landmark backend: images in, faces with landmarks out."""

    #: short name stored with every statistic ("hrnet", "nvxs")
    name: str
    #: names of the K landmark indices, in order
    point_names: tuple[str, ...]

    def identity(self) -> dict:
        """What produced the numbers: backend name, weights (file names and
        SHA-256 prefixes), settings that change the points. Stored in every
        reference and report so numbers of different origins are never compared."""
        ...

    def detect(self, images: Sequence[np.ndarray]) -> list[ImageFaces]:
        """Detect faces and landmarks in RGB uint8 images of shape (H, W, 3)."""
        ...


def check_sizes(backend: str, images: Sequence[np.ndarray]) -> None:
    """Refuse images over kohya_ext.images.MAX_DETECT_PIXELS before a detector allocates for them
    (libnvxs segfaults near 80 MP); kohya_ext.measure passes every image through the gate first."""
    from ..errors import KohyaExtError
    from ..images import MAX_DETECT_PIXELS

    too_large = [f"{im.shape[1]}x{im.shape[0]}" for im in images if im.shape[0] * im.shape[1] > MAX_DETECT_PIXELS]
    if too_large:
        raise KohyaExtError(f"{backend}: image(s) of {', '.join(too_large)} px are over {MAX_DETECT_PIXELS} pixels: "
                            "pass them through kohya_ext.images.fit_for_detection first")
