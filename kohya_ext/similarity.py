"""The overall consistency score: one number that early stopping, ranking and presets compare.

Contract (fixed; what goes inside is tuned by bench/validity.py, docs/validity.md):
- higher is better, in [0, 1], never NaN or inf;
- an effect size: it depends on how far the samples sit from the reference in
  reference-spread units, not on how many samples there are;
- it falls when faces stop being detected (multiplied by the detection rate);
- it is stored with its backend and formula version (`score_version`); scores of
  different backends or versions are never compared.

Formula (v4, same form as v3, weights refit on real drawings: docs/validity.md): score = detection_rate *
exp(-d^2 / 2), d = the weighted mean of capped |z| over the measured ratios and, when both sides have colours,
the colour distances (kohya_ext.color: color_distances for hair and iris, hist_distance for "hair_hist"), all in
reference spreads. The per-backend weights are printed by bench/fit_constants.py (from bench/validity_real.py's
measurements). Memorisation is NOT in the score: it is a separate gate (comparison.memorization_share).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import KohyaExtError

#: Bump when the formula below changes.
SCORE_VERSION = 4
#: Per-face |z| are capped here so one wild ratio cannot dominate.
Z_CAP = 3.0
#: Default ratio weights (hrnet: NOT validated, the real weights are unavailable here;
#: mouth_width is ill-conditioned for hrnet, one pixel ~ 3 %, so it counts half).
RATIO_WEIGHTS: dict[str, float] = {
    "interocular_ratio": 1.0,
    "eye_to_nose_ratio": 1.0,
    "nose_to_mouth_ratio": 1.0,
    "mouth_width_ratio": 0.5,
    "chin_length_ratio": 1.0,
    "eyebrow_height_ratio": 1.0,
    "intercanthal_ratio": 1.0,
}
#: Per-backend ratio weights (bench/fit_constants.py, real-drawing tune half of bench/validity_real.py):
#: within the geometry part proportional to each ratio's across-character / within-character spread;
#: the part's total (0.5 against hair 1) is the best tune AUC with the most geometry (docs/validity.md).
#: On real drawings nvxs geometry alone separates characters barely above chance (AUC 0.52-0.54).
BACKEND_RATIO_WEIGHTS: dict[str, dict[str, float]] = {
    "nvxs": {
        "interocular_ratio": 0.118,
        "eye_to_nose_ratio": 0.066,
        "nose_to_mouth_ratio": 0.066,
        "mouth_width_ratio": 0.075,
        "chin_length_ratio": 0.068,
        "intercanthal_ratio": 0.108,
    },
}
#: Weight of each colour part (hair, eyes, hair_hist) beside the ratio weights, for backends without their own (docs/validity.md).
COLOR_WEIGHT = 1.0
#: Per-backend colour-part weights (bench/fit_constants.py, real-drawing tune half).
BACKEND_COLOR_WEIGHTS: dict[str, dict[str, float]] = {
    "nvxs": {"hair": 1.0, "eyes": 2.0, "hair_hist": 8.0},
}


def score_version(backend: str, with_color: bool = True) -> str:
    """Version tag stored with every score; geometry-only scores (no colours on one side) are tagged apart."""
    return f"{backend}-v{SCORE_VERSION}" + ("" if with_color else "-geometry")


def geometry_distance(z_by_ratio: dict[str, float], backend: str | None = None, color_z: dict[str, float | None] | None = None) -> float | None:
    """Weighted mean of capped |z| over the ratios that could be measured (and colour parts, if given); None when none."""
    weights = BACKEND_RATIO_WEIGHTS.get(backend or "", RATIO_WEIGHTS)
    cw = BACKEND_COLOR_WEIGHTS.get(backend or "", {})
    bad = [k for k, z in [*z_by_ratio.items(), *(color_z or {}).items()] if z is not None and not math.isfinite(z)]
    if bad:  # a NaN dropped here would leave a confident score on the rest; the inputs are damaged
        raise KohyaExtError(f"cannot score: {', '.join(bad)} came out non-finite (a reference or sample measurement "
                            "holds a bad number); rebuild the reference from its images")
    items = [(weights.get(k, 1.0), min(abs(z), Z_CAP)) for k, z in z_by_ratio.items() if z is not None]
    if color_z:
        items += [(cw.get(k, COLOR_WEIGHT), min(abs(z), Z_CAP)) for k, z in color_z.items() if z is not None]
    items = [(w, z) for w, z in items if w > 0]
    if not items:
        return None
    w = np.array([a for a, _ in items])
    z = np.array([b for _, b in items])
    return float((w * z).sum() / w.sum())


def consistency_score(
    z_by_ratio: dict[str, float],
    detection_rate: float,
    backend: str | None = None,
    color_z: dict[str, float | None] | None = None,
) -> float:
    """Score in [0, 1]: detection rate x exp(-d^2 / 2), d = distance in spread units (geometry, plus colour if given)."""
    d = geometry_distance(z_by_ratio, backend, color_z)
    if d is None:
        return 0.0
    s = float(detection_rate) * math.exp(-0.5 * d * d)
    return min(max(s, 0.0), 1.0)
