"""Colour identity: hair and iris colours sampled around the landmarks, and a set-level colour distance.

Anime characters are told apart first by hair and eye colour, and a cast drawn
by one artist shares its face geometry, so the score also compares colours
(docs/validity.md measures how much that adds). Colours are sampled from image
regions placed in the eye frame, so any backend with two eye centres and a
face box works (nvxs's own nv_face_analyze colours were measured too and are
noisier: see docs/validity.md).

All colours are CIELAB (D65, L in 0..100); distances are Euclidean (CIE76 dE).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Parts compared. Eyes are the mean of both irises, so mirroring cannot swap them.
COLOR_PARTS: tuple[str, ...] = ("hair", "eyes")
#: Bump when a region, a pixel filter or the distance below changes.
COLOR_VERSION = 2
#: Floor of the colour spread (dE): a reference of near-identical images has ~0 spread,
#: and dE below ~this is lighting/JPEG noise, not a different character (docs/validity.md).
COLOR_SPREAD_FLOOR = 8.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB uint8 or 0..255 floats -> (..., 3) CIELAB (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _region(image: np.ndarray, mid: np.ndarray, x: np.ndarray, y: np.ndarray, u: tuple[float, float], v: tuple[float, float], ed: float) -> np.ndarray:
    """RGB pixels whose eye-frame coordinates (in eye distances) fall in u x v; (K, 3)."""
    h, w = image.shape[:2]
    corners = [mid + (a * x + b * y) * ed for a in u for b in v]
    xs = [c[0] for c in corners]
    ys = [c[1] for c in corners]
    x0, x1 = max(int(math.floor(min(xs))), 0), min(int(math.ceil(max(xs))), w)
    y0, y1 = max(int(math.floor(min(ys))), 0), min(int(math.ceil(max(ys))), h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 3), np.uint8)
    gx, gy = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    d = np.stack([gx - mid[0], gy - mid[1]], -1) / ed
    pu, pv = d @ x, d @ y
    inside = (pu >= u[0]) & (pu <= u[1]) & (pv >= v[0]) & (pv <= v[1])
    return image[y0:y1, x0:x1][inside]


def _eye_frame(eye_left, eye_right) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """The face frame the eyes set: midpoint, unit eye axis x, unit down-the-face y, eye distance; None under 4 px."""
    el, er = np.asarray(eye_left, np.float64), np.asarray(eye_right, np.float64)
    axis = er - el
    ed = float(np.hypot(*axis))
    if ed < 4:
        return None
    x = axis / ed
    return (el + er) / 2, x, np.array([-x[1], x[0]]), ed


def _iris(lab: np.ndarray) -> np.ndarray | None:
    """Iris colour of an eye region: the more colourful half of the pixels that are not outline or highlight."""
    if len(lab) < 4:
        return None
    keep = lab[(lab[:, 0] > 8) & (lab[:, 0] < 92)]
    if len(keep) < 4:  # an all-black (or all-white) eye: its colour is that
        return np.median(lab, axis=0)
    chroma = np.hypot(keep[:, 1], keep[:, 2])
    return np.median(keep[chroma >= np.median(chroma)], axis=0)


def face_colors(image: np.ndarray, eye_left: Sequence[float], eye_right: Sequence[float]) -> dict[str, list[float]] | None:
    """Lab colours of ``hair``, ``eyes`` (mean of both irises) and ``skin`` of one face; None if off the image.

    Regions, in eye distances ``ed`` from the eye midpoint along the eye axis (u)
    and down the face (v): irises u = centre +-0.14, v = +-0.12; skin (cheeks
    below each eye) |u| in 0.35..0.6, v 0.45..0.6; hair (bangs above the eyes)
    |u| < 0.6, v -0.85..-0.4, minus pixels within dE 15 of the skin colour
    (a bare forehead is not hair).
    """
    frame = _eye_frame(eye_left, eye_right)
    if frame is None:
        return None
    mid, x, y, ed = frame
    irises = []
    for c in (-0.5, 0.5):
        px = _region(image, mid, x, y, (c - 0.14, c + 0.14), (-0.12, 0.12), ed)
        col = _iris(rgb_to_lab(px)) if len(px) else None
        if col is None:
            return None
        irises.append(col)
    skin_px = np.concatenate([_region(image, mid, x, y, u, (0.45, 0.6), ed) for u in ((-0.6, -0.35), (0.35, 0.6))])
    hair_px = _region(image, mid, x, y, (-0.6, 0.6), (-0.85, -0.4), ed)
    if len(skin_px) < 4 or len(hair_px) < 4:
        return None
    skin = np.median(rgb_to_lab(skin_px), axis=0)
    hair_lab = rgb_to_lab(hair_px)
    not_skin = hair_lab[np.linalg.norm(hair_lab - skin, axis=1) > 15]
    hair = np.median(not_skin if len(not_skin) >= 0.2 * len(hair_lab) else hair_lab, axis=0)
    eyes = (irises[0] + irises[1]) / 2
    return {k: [round(float(v), 2) for v in c] for k, c in (("hair", hair), ("eyes", eyes), ("skin", skin))}


def _center(colors: np.ndarray) -> np.ndarray:
    """Robust centre of (N, 3) Lab colours: the per-channel median."""
    return np.median(colors, axis=0)


def color_distances(reference: Sequence[dict | None], samples: Sequence[dict | None], floor: float = COLOR_SPREAD_FLOOR) -> dict[str, float | None]:
    """Per part: dE between the sample and reference median colours, in units of the reference spread.

    The spread is the RMS dE of the reference faces from their own median, with
    ``floor`` added in quadrature. None for a part that either side lacks.
    """
    out: dict[str, float | None] = {}
    for part in COLOR_PARTS:
        r = np.array([c[part] for c in reference if c and c.get(part) is not None], dtype=np.float64)
        s = np.array([c[part] for c in samples if c and c.get(part) is not None], dtype=np.float64)
        if len(r) == 0 or len(s) == 0:
            out[part] = None
            continue
        rc = _center(r)
        own = float(np.sqrt(np.mean(np.sum((r - rc) ** 2, axis=1)))) if len(r) > 1 else 0.0
        out[part] = float(np.linalg.norm(_center(s) - rc) / math.sqrt(own**2 + floor**2))
    return out


def eye_centers(backend: str, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-left and image-right eye centres from a backend's points (kohya_ext.landmarks layouts)."""
    p = np.asarray(points, dtype=np.float64)
    if backend == "hrnet":
        from .landmarks import HRNET_EYE_LEFT, HRNET_EYE_RIGHT

        return p[list(HRNET_EYE_LEFT)].mean(0), p[list(HRNET_EYE_RIGHT)].mean(0)
    return p[0], p[1]  # nvxs: eye_left_center, eye_right_center


def measure_colors(backend: str, image: np.ndarray, points: np.ndarray) -> dict[str, list[float]] | None:
    """face_colors of one detected face: what an ImageMeasurement keeps as ``colors``."""
    el, er = eye_centers(backend, points)
    return face_colors(image, el, er)


#: Face-region colour histograms (kohya_ext.color.face_histogram): regions in the eye frame, in eye distances
#: (u along the eye axis from the eye midpoint, v down the face), as (u range, v range).
#: "hair" (above the eyes, bangs and the top of the head) is the one measured: on the real-drawing tune half it
#: separated characters better than the whole face window or the face below the brows (docs/validity.md).
HIST_REGIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "hair": ((-1.6, 1.6), (-1.3, -0.35)),
    "window": ((-1.6, 1.6), (-1.3, 1.9)),
    "face": ((-0.9, 0.9), (-0.35, 1.2)),
}
#: Histogram bins: lightness in HIST_L_BINS equal steps, and per step one grey bin (chroma < HIST_GREY_CHROMA)
#: plus HIST_HUES hue sectors x 2 chroma levels (below / above HIST_STRONG_CHROMA).
HIST_L_BINS = 2
HIST_HUES = 12
HIST_GREY_CHROMA = 10.0
HIST_STRONG_CHROMA = 30.0
HIST_BINS = HIST_L_BINS * (1 + 2 * HIST_HUES)


def lab_bins(lab: np.ndarray) -> np.ndarray:
    """Histogram bin index (0..HIST_BINS-1) of each Lab colour."""
    L = np.clip((lab[:, 0] / (100.0 / HIST_L_BINS)).astype(int), 0, HIST_L_BINS - 1)
    c = np.hypot(lab[:, 1], lab[:, 2])
    hue = (np.degrees(np.arctan2(lab[:, 2], lab[:, 1])) % 360.0) // (360.0 / HIST_HUES)
    sub = np.where(c < HIST_GREY_CHROMA, 0, 1 + hue.astype(int) * 2 + (c >= HIST_STRONG_CHROMA))
    return L * (1 + 2 * HIST_HUES) + sub


def face_histogram(image: np.ndarray, eye_left, eye_right, regions=tuple(HIST_REGIONS)) -> dict[str, list[float]] | None:
    """Normalised Lab colour histograms (HIST_BINS bins) of face regions placed by the eyes; None when the eyes are < 4 px apart."""
    frame = _eye_frame(eye_left, eye_right)
    if frame is None:
        return None
    mid, x, y, ed = frame
    out = {}
    for name in regions:
        u, v = HIST_REGIONS[name]
        px = _region(np.asarray(image), mid, x, y, u, v, ed)
        if len(px) < 16:
            out[name] = None
            continue
        h = np.bincount(lab_bins(rgb_to_lab(px)), minlength=HIST_BINS).astype(np.float64)
        out[name] = [round(float(a), 4) for a in h / h.sum()]
    return out


#: Floor of the histogram distance spread (Hellinger units): a reference of near-identical images has ~0 spread.
HIST_SPREAD_FLOOR = 0.02


def _hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - (np.sqrt(p) * np.sqrt(q)).sum(-1), 0.0, None))


def hist_distance(reference: Sequence[Sequence[float] | None], samples: Sequence[Sequence[float] | None], floor: float = HIST_SPREAD_FLOOR) -> float | None:
    """How much farther the sample histograms sit from the reference's mean histogram than the reference's own do.

    Per sample image: the Hellinger distance of its histogram to the mean reference histogram;
    per reference image: the same to the mean of the others (leave one out). The result is
    (mean sample distance - mean reference distance) / sqrt(var(reference distances) + floor^2),
    at least 0: an effect size in reference spreads, independent of how many samples there are.
    None when the reference has fewer than 3 histograms or the samples none.
    """
    r = np.array([h for h in reference if h is not None], dtype=np.float64)
    s = np.array([h for h in samples if h is not None], dtype=np.float64)
    if len(r) < 3 or len(s) == 0:
        return None
    r = r / np.maximum(r.sum(1, keepdims=True), 1e-12)
    s = s / np.maximum(s.sum(1, keepdims=True), 1e-12)
    n = len(r)
    tot = r.sum(0)
    loo = _hellinger(r, (tot[None] - r) / (n - 1))
    ds = _hellinger(s, tot / n)
    return float(max(ds.mean() - loo.mean(), 0.0) / math.sqrt(loo.var(ddof=1) + floor**2))
