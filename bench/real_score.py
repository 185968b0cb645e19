"""Candidate score formulas for the real-drawing benchmark (levers measured on the tune half).

A Formula turns reference and sample measurements into d (lower = more alike) and
a score detection x exp(-d^2/2), like kohya_ext.similarity, with switches for each lever:
set centre (mean / median / trimmed mean), spread (std / MAD), population floor,
ratio weights, colour parts and their spreads, face-region colour histograms
(kohya_ext.color.face_histogram, when measured), and how detection enters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kohya_ext.measure import ImageMeasurement
from kohya_ext.reference import POPULATION_STD

NVXS_RATIOS = ("interocular_ratio", "eye_to_nose_ratio", "nose_to_mouth_ratio", "mouth_width_ratio", "chin_length_ratio", "intercanthal_ratio")
PARTS = ("hair", "eyes", "skin")


@dataclass
class Face:
    ok: bool
    r: np.ndarray  # (6,) ratios (nan where missing)
    col: dict[str, np.ndarray]  # Lab per part
    hist: dict[str, np.ndarray]  # colour histograms per region (normalised)


def face_of(m: ImageMeasurement) -> Face:
    ok = m.status == "ok"
    r = np.array([m.ratios.get(n) if ok and m.ratios.get(n) is not None else np.nan for n in NVXS_RATIOS], float)
    cols = m.colors if ok and m.colors else {}
    col = {p: np.asarray(cols[p], float) for p in PARTS if cols.get(p) is not None}
    hist = {}
    hh = getattr(m, "hair_hist", None)
    if ok and hh is not None:
        h = np.asarray(hh, float)
        hist["hair"] = h / max(h.sum(), 1e-9)
    return Face(ok, r, col, hist)


def trimmed_mean(a: np.ndarray, frac: float = 0.2) -> float:
    a = np.sort(a)
    k = int(math.floor(frac * len(a)))
    return float(a[k : len(a) - k].mean()) if len(a) - 2 * k > 0 else float(np.median(a))


def center(a: np.ndarray, how: str) -> float:
    if how == "median":
        return float(np.median(a))
    if how == "trim":
        return trimmed_mean(a)
    return float(a.mean())


def spread(a: np.ndarray, how: str) -> float:
    if len(a) < 2:
        return 0.0
    if how == "mad":
        return float(1.4826 * np.median(np.abs(a - np.median(a))))
    return float(a.std(ddof=1))


def hellinger(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hellinger distance between histograms (last axis), 0..1."""
    return np.sqrt(np.clip(1 - (np.sqrt(p) * np.sqrt(q)).sum(-1), 0, None))


@dataclass(frozen=True)
class Formula:
    name: str
    center: str = "mean"
    spread: str = "std"
    floor: float = 0.5
    pop: tuple | None = None  # population std per ratio (None: kohya_ext POPULATION_STD nvxs)
    weights: tuple = (1.0, 0.69, 0.98, 0.88, 0.64, 0.90)
    cap: float = 3.0
    parts: tuple = ("hair", "eyes")
    part_weights: tuple = (1.0, 1.0, 1.0)
    color_center: str = "median"
    color_spread: str = "rms"  # rms | mad
    color_floor: float = 8.0
    hist: str | None = None  # region name of a colour histogram
    hist_weight: float = 0.0
    hist_mode: str = "mean"  # mean: distance to the reference mean histogram; knn: mean of the 3 nearest references
    hist_floor: float = 0.02
    detection: str = "rate"  # rate: x detection rate; relative: x min(1, rate / reference rate); none; z: a part of d (det_weight)
    det_weight: float = 1.0
    det_floor: float = 0.2
    geometry: bool = True

    def _pop(self, j: int, name: str) -> float:
        return self.pop[j] if self.pop else POPULATION_STD["nvxs"][name]

    def distance(self, ref: list[Face], smp: list[Face]) -> tuple[float, float, float]:
        """(d, sample detection rate, reference detection rate)."""
        r_ok = [f for f in ref if f.ok]
        s_ok = [f for f in smp if f.ok]
        rate = len(s_ok) / len(smp) if smp else 0.0
        rrate = len(r_ok) / len(ref) if ref else 0.0
        if not r_ok or not s_ok:
            return math.inf, rate, rrate
        items: list[tuple[float, float]] = []
        if self.geometry:
            R = np.stack([f.r for f in r_ok])
            S = np.stack([f.r for f in s_ok])
            for j, name in enumerate(NVXS_RATIOS):
                rv, sv = R[:, j][~np.isnan(R[:, j])], S[:, j][~np.isnan(S[:, j])]
                if len(rv) == 0 or len(sv) == 0 or self.weights[j] <= 0:
                    continue
                own = spread(rv, self.spread)
                z = (center(sv, self.center) - center(rv, self.center)) / math.sqrt(own**2 + (self.floor * self._pop(j, name)) ** 2)
                items.append((self.weights[j], min(abs(z), self.cap)))
        for part, w in zip(PARTS, self.part_weights):
            if part not in self.parts or w <= 0:
                continue
            rc = np.array([f.col[part] for f in r_ok if part in f.col])
            sc = np.array([f.col[part] for f in s_ok if part in f.col])
            if len(rc) == 0 or len(sc) == 0:
                continue
            c = np.median(rc, 0)
            dev = np.linalg.norm(rc - c, axis=1)
            own = float(np.sqrt(np.mean(dev**2))) if self.color_spread == "rms" else float(1.4826 * np.median(dev))
            s_c = np.median(sc, 0) if self.color_center == "median" else sc.mean(0)
            z = float(np.linalg.norm(s_c - c)) / math.sqrt(own**2 + self.color_floor**2)
            items.append((w, min(z, self.cap)))
        if self.hist and self.hist_weight > 0:
            rh = np.array([f.hist[self.hist] for f in r_ok if self.hist in f.hist])
            sh = np.array([f.hist[self.hist] for f in s_ok if self.hist in f.hist])
            if len(rh) > 2 and len(sh):
                z = hist_z(rh, sh, self.hist_mode, self.hist_floor)
                items.append((self.hist_weight, min(max(z, 0.0), self.cap)))
        if self.detection == "z":
            # detection shortfall against the reference, in per-image binomial spread units (floored)
            sd = math.sqrt(max(rrate * (1 - rrate), self.det_floor**2))
            items.append((self.det_weight, min(max(rrate - rate, 0.0) / sd, self.cap)))
        if not items:
            return math.inf, rate, rrate
        w = np.array([a for a, _ in items])
        z = np.array([b for _, b in items])
        return float((w * z).sum() / w.sum()), rate, rrate

    def score(self, ref, smp) -> float:
        ref = [x if isinstance(x, Face) else face_of(x) for x in ref]
        smp = [x if isinstance(x, Face) else face_of(x) for x in smp]
        d, rate, rrate = self.distance(ref, smp)
        if not math.isfinite(d):
            return 0.0
        if self.detection == "relative":
            det = min(1.0, rate / rrate) if rrate > 0 else rate
        elif self.detection in ("none", "z"):
            det = 1.0 if rate > 0 else 0.0
        else:
            det = rate
        return det * math.exp(-0.5 * d * d)


def hist_z(rh: np.ndarray, sh: np.ndarray, mode: str, floor: float) -> float:
    """How much farther the sample histograms sit from the reference than the reference images do (leave-one-out), in their spread."""
    n = len(rh)
    if mode == "knn":
        k = min(3, n - 1)
        D = hellinger(rh[:, None], rh[None])
        np.fill_diagonal(D, np.inf)
        loo = np.sort(D, axis=1)[:, :k].mean(1)
        ds = np.sort(hellinger(sh[:, None], rh[None]), axis=1)[:, :k].mean(1)
    else:
        tot = rh.sum(0)
        loo = np.array([hellinger(rh[i], (tot - rh[i]) / (n - 1)) for i in range(n)])
        ds = hellinger(sh, tot / n)
    return float((ds.mean() - loo.mean()) / math.sqrt(loo.var(ddof=1) + floor**2))
