"""The overall consistency score: one number that early stopping, ranking and presets compare.

Contract (fixed; what goes inside is tuned by bench/validity.py, docs/validity.md):
- higher is better, in [0, 1], never NaN or inf;
- an effect size: it depends on how far the samples sit from the reference in
  reference-spread units, not on how many samples there are;
- it falls when faces stop being detected (multiplied by the detection rate);
- it is stored with its backend and formula version (`score_version`); scores of
  different backends or versions are never compared.
"""

from __future__ import annotations

import math

import numpy as np

#: Bump when the formula below changes.
SCORE_VERSION = 1
#: Per-face |z| are capped here so one wild ratio cannot dominate.
Z_CAP = 3.0
#: Weights per ratio. mouth_width is ill-conditioned (one pixel ~ 3%), so it counts half.
RATIO_WEIGHTS: dict[str, float] = {
    "interocular_ratio": 1.0,
    "eye_to_nose_ratio": 1.0,
    "nose_to_mouth_ratio": 1.0,
    "mouth_width_ratio": 0.5,
    "chin_length_ratio": 1.0,
    "eyebrow_height_ratio": 1.0,
    "intercanthal_ratio": 1.0,
}


def score_version(backend: str) -> str:
    return f"{backend}-v{SCORE_VERSION}"


def geometry_distance(z_by_ratio: dict[str, float]) -> float | None:
    """Weighted mean of capped |z| over the ratios that could be measured; None when none could."""
    items = [(RATIO_WEIGHTS.get(k, 1.0), min(abs(z), Z_CAP)) for k, z in z_by_ratio.items() if z is not None and math.isfinite(z)]
    if not items:
        return None
    w = np.array([a for a, _ in items])
    z = np.array([b for _, b in items])
    return float((w * z).sum() / w.sum())


def consistency_score(z_by_ratio: dict[str, float], detection_rate: float) -> float:
    """Score in [0, 1]: detection rate x exp(-d^2 / 2), d = geometry distance in spread units."""
    d = geometry_distance(z_by_ratio)
    if d is None:
        return 0.0
    s = float(detection_rate) * math.exp(-0.5 * d * d)
    return min(max(s, 0.0), 1.0)
