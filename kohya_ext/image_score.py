"""Per-image consistency score: one image against the reference, for gating single generations.

Contract (the set score's, kohya_ext.similarity, applied to one image):
- higher is better, in [0, 1], never NaN or inf;
- an image without a usable face scores 0 and fails, with the reason (``status``:
  no_face, face_too_small, face_too_turned, degenerate_landmarks, unreadable);
- stored with its version (``image_score_version``): the set score's version
  (backend, formula, geometry-only or with colours) plus IMAGE_SCORE_VERSION.
  Scores of different versions are never compared.

Definition (image v1): the set score of a set of one image,
``kohya_ext.comparison.compare(reference, [image]).score``. The per-ratio z, the
weights, the caps, the colour part and the detection factor are the set score's
own (kohya_ext.comparison / kohya_ext.similarity), so this score follows every change of
the set score's formula without code here. With one image the "sample mean" is
that image's own ratio, so z measures how far this face sits from the reference
mean in reference spreads; a same-character image therefore scores lower than a
set of them would (its own pose and drawing noise are not averaged out): compare
per-image scores with per-image thresholds, never with set-score thresholds.
Measured (same vs other character, one image at a time): bench/image_score.py,
docs/comfyui.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .measure import ImageMeasurement
from .reference import ReferenceStats
from .comparison import compare

#: Bump when the definition above changes (not when the set score's formula does:
#: its version is part of every per-image version string).
IMAGE_SCORE_VERSION = 1

#: Default pass mark of the ComfyUI gate (kohya_ext.comfy), chosen on the tune halves of
#: bench/image_score.py: the largest same-minus-other pass-rate gap among images with a face on
#: the real drawings (0.6 and 0.7 tie at ~0.33; 0.6 keeps more of the character's own images)
#: and on the shared portraits (0.96 at 0.6). Report-half pass rates at it: docs/comfyui.md.
DEFAULT_THRESHOLD = 0.6

#: Why an image without a usable face fails, per measurement status.
FAIL_REASONS: dict[str, str] = {
    "unreadable": "image unreadable",
    "no_face": "no face detected",
    "face_too_small": "face too small",
    "face_too_turned": "face too turned",
    "degenerate_landmarks": "degenerate landmarks",
}


def image_score_version(set_score_version: str) -> str:
    """The per-image version tag: the set score's version plus this definition's."""
    return f"{set_score_version}+image{IMAGE_SCORE_VERSION}"


@dataclass
class ImageScore:
    """One image's score and what went into it."""

    index: int
    name: str
    score: float
    version: str
    status: str
    #: None for a scored face; otherwise why the image scores 0 (FAIL_REASONS, plus the reader's error)
    reason: str | None = None
    #: weighted mean |z| of the set score's distance (geometry only), None without a face
    geometry_distance: float | None = None
    z: dict[str, float] = field(default_factory=dict)
    color_distance: dict[str, float | None] | None = None
    #: the set score's copy gate applied to this image (kohya_ext.report.is_near_copy), None when unknown
    near_copy: bool | None = None
    face_box: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def image_score(reference: ReferenceStats, measurement: ImageMeasurement, index: int = 0) -> ImageScore:
    """Score one measured image against ``reference`` (measured with the same backend and rules)."""
    rep = compare(reference, [measurement])
    score = float(rep.score)
    if not math.isfinite(score):  # compare() guarantees this; the gate must never see NaN
        score = 0.0
    score = min(max(score, 0.0), 1.0)
    reason = None
    if measurement.status != "ok":
        reason = FAIL_REASONS.get(measurement.status, measurement.status.replace("_", " "))
        if measurement.error:
            reason = f"{reason}: {measurement.error}"
    elif rep.geometry_distance is None:
        reason = "no ratio could be measured on this face"
    return ImageScore(
        index=index,
        name=measurement.name,
        score=score,
        version=image_score_version(rep.score_version),
        status=measurement.status,
        reason=reason,
        geometry_distance=rep.geometry_distance,
        z={k: float(v.z) for k, v in rep.ratios.items() if v.z is not None},
        color_distance=rep.color_distance,
        near_copy=None if rep.memorization is None else rep.memorization > 0,
        face_box=measurement.face_box,
    )


def image_scores(reference: ReferenceStats, measurements: Sequence[ImageMeasurement]) -> list[ImageScore]:
    """Per-image scores of a batch, in order."""
    return [image_score(reference, m, i) for i, m in enumerate(measurements)]
