"""Seven facial proportion ratios from landmarks, batched in torch.

Every ratio is a length divided by a length measured on the same face, in a
frame built from the eyes, so it is exactly independent of image scale and
in-plane rotation. The formulas differ per backend because the backends
measure different points; docs/ratios.md gives each formula, why that
normaliser, and its weak spots. Both share one frame:

    E_l, E_r  image-left / image-right eye centres,  M = (E_l + E_r) / 2
    x = unit(E_r - E_l),  y = x rotated +90 deg (points down the face)
    v(P) = (P - M) . y    (height below the eye line)
    W  face width (horizontal normaliser),  H = v(chin) (vertical normaliser)

nvxs only (formula version 2): the eye-spacing ratios are normalised by the
eye-to-mouth height v(mouth) instead of W, because nvxs's W (its face-box side)
follows the eyes and hid eye-spacing drift (docs/validity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .landmarks import HRNET_BROW_LEFT, HRNET_BROW_RIGHT, HRNET_EYE_LEFT, HRNET_EYE_RIGHT

RATIO_NAMES: tuple[str, ...] = (
    "interocular_ratio",
    "eye_to_nose_ratio",
    "nose_to_mouth_ratio",
    "mouth_width_ratio",
    "chin_length_ratio",
    "eyebrow_height_ratio",
    "intercanthal_ratio",
)

#: Bump when a formula, a threshold or an exclusion rule changes: measurements of
#: different formula versions are never compared (and caches are keyed by it).
FORMULA_VERSION = 2

# Points each ratio depends on (a ratio is excluded when any of them scores below
# the point-score threshold). The eye centres and the frame use all eye points.
_HRNET_EYES = HRNET_EYE_LEFT + HRNET_EYE_RIGHT
HRNET_RATIO_POINTS: dict[str, tuple[int, ...]] = {
    "interocular_ratio": _HRNET_EYES + (0, 4),
    "eye_to_nose_ratio": _HRNET_EYES + (23, 2),
    "nose_to_mouth_ratio": _HRNET_EYES + (23, 25, 27, 2),
    "mouth_width_ratio": (24, 26, 0, 4),
    "chin_length_ratio": _HRNET_EYES + (25, 27, 2),
    "eyebrow_height_ratio": _HRNET_EYES + HRNET_BROW_LEFT + HRNET_BROW_RIGHT + (2,),
    "intercanthal_ratio": (13, 17, 0, 4),
}
#: Ratios a backend cannot measure at all, with the reason shown to users.
UNAVAILABLE: dict[str, dict[str, str]] = {
    "hrnet": {},
    "nvxs": {"eyebrow_height_ratio": "nvxs finds no eyebrows"},
}


@dataclass(frozen=True)
class ExclusionRules:
    """When a face, or one ratio of it, is left out (and counted) instead of averaged in."""

    #: faces whose box is smaller than this (geometric mean of sides, px) are excluded
    min_face_px: float = 48.0
    #: hrnet point scores below this exclude the ratios that use the point
    min_point_score: float = 0.3
    #: |horizontal nose offset from the eye midpoint| / eye distance above this = face too turned
    max_nose_offset: float = 0.45
    #: hrnet only: |(|P0-M| - |P4-M|)| / W above this = face too turned (contour asymmetry)
    max_contour_asymmetry: float = 0.35

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RatioBatch:
    """Ratios of N faces.

    values: (N, 7) float64, 0 where not valid. valid: (N, 7) bool.
    face_excluded: per face, None or the reason the whole face was left out.
    yaw: (N,) horizontal nose offset (signed), for diagnostics.
    """

    values: np.ndarray
    valid: np.ndarray
    face_excluded: list[str | None]
    yaw: np.ndarray


def _frame(eye_left: torch.Tensor, eye_right: torch.Tensor):
    mid = (eye_left + eye_right) / 2
    axis = eye_right - eye_left
    eye_dist = axis.norm(dim=-1)
    x = axis / eye_dist.clamp_min(1e-9)[..., None]
    y = torch.stack([-x[..., 1], x[..., 0]], dim=-1)
    return mid, x, y, eye_dist


def _height(p: torch.Tensor, mid: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((p - mid) * y).sum(-1)


def _seven_ratios(
    eye_left: torch.Tensor,
    eye_right: torch.Tensor,
    width: torch.Tensor,
    nose: torch.Tensor,
    mouth: torch.Tensor,
    mouth_left: torch.Tensor,
    mouth_right: torch.Tensor,
    chin: torch.Tensor,
    canthus_left: torch.Tensor,
    canthus_right: torch.Tensor,
    brow_gap: torch.Tensor | None,
    eyes_by_mouth_height: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The shared formulas, once the backend has named its anchor points (all (N, 2), float64).

    ``brow_gap`` is an (N,) height (upper-lid apex minus brow, in px), or None when the
    backend has no brows (the column is then 0 and marked invalid by the caller).
    ``eyes_by_mouth_height``: divide the eye spacings (interocular, intercanthal) by the
    eye-to-mouth height v(mouth) instead of W (nvxs, whose W follows the eyes).
    """
    mid, x, y, eye_dist = _frame(eye_left, eye_right)
    height = _height(chin, mid, y)
    v_nose = _height(nose, mid, y)
    v_mouth = _height(mouth, mid, y)
    w = width.clamp_min(1e-9)
    h = height.clamp_min(1e-9)
    eye_norm = v_mouth if eyes_by_mouth_height else width
    e = eye_norm.clamp_min(1e-9)
    values = torch.stack(
        [
            eye_dist / e,
            v_nose / h,
            (v_mouth - v_nose) / h,
            (mouth_right - mouth_left).norm(dim=-1) / w,
            (height - v_mouth) / h,
            brow_gap / h if brow_gap is not None else torch.zeros_like(width),
            (canthus_right - canthus_left).norm(dim=-1) / e,
        ],
        dim=1,
    )
    yaw = ((nose - mid) * x).sum(-1) / eye_dist.clamp_min(1e-9)
    return values, {"width": width, "height": height, "eye_norm": eye_norm, "yaw": yaw, "mid": mid, "y": y}


def hrnet_ratios(points: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Ratios from (N, 28, 2) HRNetV2 points. Returns (N, 7) values and frame diagnostics."""
    p = points.to(torch.float64)
    eye_left = p[:, list(HRNET_EYE_LEFT)].mean(1)
    eye_right = p[:, list(HRNET_EYE_RIGHT)].mean(1)
    mid, _, y, _ = _frame(eye_left, eye_right)
    brow_left = p[:, list(HRNET_BROW_LEFT)].mean(1)
    brow_right = p[:, list(HRNET_BROW_RIGHT)].mean(1)
    brow_gap = (
        (_height(p[:, 12], mid, y) - _height(brow_left, mid, y)) + (_height(p[:, 18], mid, y) - _height(brow_right, mid, y))
    ) / 2
    width = (p[:, 4] - p[:, 0]).norm(dim=-1)
    values, diag = _seven_ratios(
        eye_left, eye_right, width, nose=p[:, 23], mouth=(p[:, 25] + p[:, 27]) / 2, mouth_left=p[:, 24],
        mouth_right=p[:, 26], chin=p[:, 2], canthus_left=p[:, 13], canthus_right=p[:, 17], brow_gap=brow_gap,
    )
    diag["asymmetry"] = ((p[:, 0] - mid).norm(dim=-1) - (p[:, 4] - mid).norm(dim=-1)) / width.clamp_min(1e-9)
    return values, diag


def nvxs_ratios(points: torch.Tensor, face_width: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Ratios from (N, 9) nvxs points (kohya_ext.landmarks.NVXS_POINTS) and the face box side.

    nvxs has no face contour, so W is the side of its square face box; it has no
    brows, so eyebrow_height is 0 here and always marked invalid. The box side is
    picked on a 9.5 % scale grid and follows the eyes, so the eye spacings are divided
    by the eye-to-mouth height instead (measured in docs/validity.md: a 10 % eye-spacing
    warp moved interocular/W by 1-3 %, interocular/v(mouth) by ~3 %, with less benign noise).
    """
    p = points.to(torch.float64)
    width = face_width.to(torch.float64)
    values, diag = _seven_ratios(
        p[:, 0], p[:, 1], width, nose=p[:, 4], mouth=p[:, 7], mouth_left=p[:, 5], mouth_right=p[:, 6],
        chin=p[:, 8], canthus_left=p[:, 2], canthus_right=p[:, 3], brow_gap=None, eyes_by_mouth_height=True,
    )
    diag["asymmetry"] = torch.zeros_like(width)
    return values, diag


def compute_ratios(
    backend: str,
    points: np.ndarray,
    point_scores: np.ndarray,
    boxes: np.ndarray,
    rules: ExclusionRules = ExclusionRules(),
) -> RatioBatch:
    """Ratios for N faces of one backend, with exclusions applied.

    Args:
        backend: "hrnet" or "nvxs" (selects the formulas and the point layout).
        points: (N, K, 2) landmark coordinates in pixels.
        point_scores: (N, K) per-point confidence.
        boxes: (N, 4) face boxes x0, y0, x1, y1 (face size; nvxs face width).
    """
    n = len(points)
    if n == 0:
        return RatioBatch(np.zeros((0, 7)), np.zeros((0, 7), bool), [], np.zeros(0))
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64))
    box = np.asarray(boxes, dtype=np.float64)
    bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    if backend == "hrnet":
        values, diag = hrnet_ratios(pts)
        scores = np.asarray(point_scores, dtype=np.float64)
        valid = np.ones((n, 7), bool)
        for j, name in enumerate(RATIO_NAMES):
            valid[:, j] = scores[:, list(HRNET_RATIO_POINTS[name])].min(1) >= rules.min_point_score
    elif backend == "nvxs":
        values, diag = nvxs_ratios(pts, torch.as_tensor(bw))
        valid = np.ones((n, 7), bool)
    else:
        raise ValueError(f"no ratio formulas for backend {backend!r}")
    for name in UNAVAILABLE[backend]:
        valid[:, RATIO_NAMES.index(name)] = False

    values_np = values.numpy()
    yaw = diag["yaw"].numpy()
    asym = diag["asymmetry"].numpy()
    width = diag["width"].numpy()
    height = diag["height"].numpy()
    eye_norm = diag["eye_norm"].numpy()
    excluded: list[str | None] = []
    for i in range(n):
        size = float(np.sqrt(max(bw[i], 0) * max(bh[i], 0)))
        if size < rules.min_face_px:
            reason = "face too small"
        elif not (width[i] > 1e-6 and height[i] > 1e-6 and eye_norm[i] > 1e-6) or not np.all(np.isfinite(values_np[i])):
            reason = "degenerate landmarks"
        elif abs(yaw[i]) > rules.max_nose_offset or abs(asym[i]) > rules.max_contour_asymmetry:
            reason = "face too turned"
        else:
            reason = None
        excluded.append(reason)
        if reason is not None:
            valid[i] = False
    values_np = np.where(valid, values_np, 0.0)
    return RatioBatch(values_np, valid, excluded, yaw)
