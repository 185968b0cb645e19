"""Metric validity: does the consistency score see what studios care about? (issue 3, docs/validity.md)

One synthetic "character" per TADNE portrait. Every image variant is detected
once with nvxs and cached under --cache (a rerun only re-analyses). Characters
on even tiles tune the formula, odd tiles report it. Ratios are recomputed from
the cached points with the current formulas (kohya_ext.ratios), so a formula
change needs no re-detection. Prints markdown tables: candidate ratio definitions
and ratio sets for the warp targets, formula candidates (tune half), then for the
shipped formula on both halves: pairwise
AUC (same vs other character, reference and samples built from DIFFERENT
benign variations), landmark-guided warp detection power, invariance to each
benign variation, recolour detection and the memorisation gate (whole-image,
face-aligned and combined hashes).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from metrics import blocks  # bench/metrics.py, bench/real_export.py (the script's folder is on sys.path)
from real_export import set_ratios

from kohya_ext.color import color_distances, face_colors, rgb_to_lab
from kohya_ext.backends.base import ImageFaces
from kohya_ext.measure import ImageMeasurement, measure_faces
from kohya_ext.phash import copy_hashes, hamming
from kohya_ext.ratios import RATIO_NAMES, ExclusionRules
from kohya_ext.reference import POPULATION_STD, ReferenceStats
from kohya_ext.demo import grid_tiles
from kohya_ext.comparison import MEMORIZATION_FACE_HAMMING, MEMORIZATION_HAMMING, compare, is_near_copy, reference_face_hashes, reference_hashes
from kohya_ext.similarity import BACKEND_RATIO_WEIGHTS

CACHE_VERSION = 1
NVXS_RATIOS = tuple(r for r in RATIO_NAMES if r != "eyebrow_height_ratio")


# --- benign variations --------------------------------------------------------------------------
def _pil(im: np.ndarray) -> Image.Image:
    return Image.fromarray(im)


def mirror(im: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(im[:, ::-1])


def crop(im: np.ndarray, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    h, w = im.shape[:2]
    return np.ascontiguousarray(im[int(top * h) : h - int(bottom * h), int(left * w) : w - int(right * w)])


def pad(im: np.ndarray, frac: float) -> np.ndarray:
    p = int(frac * im.shape[0])
    return np.pad(im, ((p, p), (p, p), (0, 0)), mode="edge")


def rescale(im: np.ndarray, f: float) -> np.ndarray:
    h, w = im.shape[:2]
    return np.asarray(_pil(im).resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS))


def jpeg(im: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    _pil(im).save(buf, "JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def roll(im: np.ndarray, deg: float) -> np.ndarray:
    """In-plane head roll: rotate about the image centre, edges replicated."""
    h, w = im.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(im, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# Reference side: mirror, crops, pads. Sample side: rescale, JPEG, roll. Blocks of 2 and 4 mix kinds.
REF_VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "orig": lambda im: im,
    "mirror": mirror,
    "crop_tl": lambda im: crop(im, 0.06, 0.06, 0, 0),
    "pad_8": lambda im: pad(im, 0.08),
    "crop_br": lambda im: crop(im, 0, 0, 0.06, 0.06),
    "mirror_pad_5": lambda im: pad(mirror(im), 0.05),
    "mirror_crop_tr": lambda im: crop(mirror(im), 0, 0.05, 0.05, 0),
    "crop_c": lambda im: crop(im, 0.04, 0.04, 0.04, 0.04),
}
SAMPLE_VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rescale_0.75": lambda im: rescale(im, 0.75),
    "roll_+5": lambda im: roll(im, 5),
    "jpeg_q70": lambda im: jpeg(im, 70),
    "roll_-5": lambda im: roll(im, -5),
    "rescale_1.25": lambda im: rescale(im, 1.25),
    "roll_+3_jpeg_q85": lambda im: jpeg(roll(im, 3), 85),
    "rescale_0.85_jpeg_q60": lambda im: jpeg(rescale(im, 0.85), 60),
    "roll_-3_rescale_0.9": lambda im: rescale(roll(im, -3), 0.9),
}
#: Measured for invariance only (not in any reference or sample set): the cost of ratios that mix axes.
INVARIANCE_ONLY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "stretch_h_5": lambda im: np.asarray(_pil(im).resize((round(im.shape[1] * 1.05), im.shape[0]), Image.Resampling.LANCZOS)),
}
ALL_VARIANTS = {**REF_VARIANTS, **SAMPLE_VARIANTS, **INVARIANCE_ONLY}
#: Warped and recoloured samples go through these (the first sample block of 4).
EDIT_SAMPLE_VARIANTS = tuple(SAMPLE_VARIANTS)[:4]


# --- landmark-guided local warps -----------------------------------------------------------------
def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _window(r: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """1 inside `inner`, 0 beyond `outer`, smooth between."""
    return 1.0 - _smoothstep((r - inner) / max(outer - inner, 1e-6))


def _frame(points: np.ndarray):
    el, er = points[0].astype(np.float64), points[1].astype(np.float64)
    ed = float(np.hypot(*(er - el)))
    x = (er - el) / ed
    y = np.array([-x[1], x[0]])
    return (el + er) / 2, x, y, ed


def _remap(im: np.ndarray, src_x: np.ndarray, src_y: np.ndarray) -> np.ndarray:
    # continuous coordinates (pixel i spans [i, i+1)) -> cv2 pixel-centre indices
    return cv2.remap(im, (src_x - 0.5).astype(np.float32), (src_y - 0.5).astype(np.float32), cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def warp(im: np.ndarray, points: np.ndarray, kind: str, f: float) -> np.ndarray:
    """Change one facial length by the factor (1 + f), guided by nvxs points (kohya_ext.landmarks.NVXS_POINTS).

    kind: "eyes" moves each eye region along the eye axis by f/2 eye distances (eye
    spacing x (1+f)); "chin" stretches the band between the mouth centre and the chin
    (chin-to-mouth length x (1+f), everything below follows); "mouth" widens the mouth
    region about its centre. Maps are built destination -> source, exact at the moved parts.
    """
    h, w = im.shape[:2]
    mid, x, y, ed = _frame(points)
    gx, gy = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    P = np.stack([gx, gy], -1)
    disp = np.zeros_like(P)
    if kind == "eyes":
        hw = float(np.mean([np.hypot(*(points[2] - points[0])), np.hypot(*(points[3] - points[1]))]))
        inner, outer = 1.15 * hw, min(1.15 * hw + 0.25 * ed, 0.5 * ed)
        for idx, sign in ((0, -1.0), (1, 1.0)):
            moved = points[idx] + sign * (f / 2) * ed * x
            r = np.hypot(*(P - moved).transpose(2, 0, 1))
            disp += (sign * (f / 2) * ed * _window(r, inner, outer))[..., None] * x
    elif kind == "chin":
        mouth, chin = points[7].astype(np.float64), points[8].astype(np.float64)
        v = (P - mouth) @ y  # height below the mouth centre, px
        u = (P - chin) @ x
        length = float((chin - mouth) @ y)
        along = np.where(v <= 0, 0.0, np.where(v < length * (1 + f), v * f / (1 + f), length * f))
        disp = (along * _window(np.abs(u), 0.7 * ed, 1.2 * ed))[..., None] * y
    elif kind == "mouth":
        mouth = points[7].astype(np.float64)
        hw = float(np.hypot(*(points[6] - points[5]))) / 2
        u = (P - mouth) @ x
        v = (P - mouth) @ y
        win = _window(np.abs(u), 1.4 * hw * (1 + max(f, 0)), 1.4 * hw + 0.3 * ed) * _window(np.abs(v), 0.1 * ed, 0.25 * ed)
        disp = (u * f / (1 + f) * win)[..., None] * x
    else:
        raise ValueError(kind)
    src = P - disp
    return _remap(im, src[..., 0], src[..., 1])


WARPS = {f"{k}_{s:+d}%": (k, s / 100) for k in ("eyes", "chin", "mouth") for s in (-10, -5, 5, 10)}


# --- recolouring ---------------------------------------------------------------------------------
def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    fx, fz = fy + lab[..., 1] / 500, fy - lab[..., 2] / 200
    d = 6 / 29
    inv = lambda t: np.where(t > d, t**3, 3 * d * d * (t - 4 / 29))
    xyz = np.stack([inv(fx) * 0.95047, inv(fy), inv(fz) * 1.08883], -1)
    m = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]])
    c = np.clip(xyz @ m.T, 0, 1)
    c = np.where(c > 0.0031308, 1.055 * c ** (1 / 2.4) - 0.055, 12.92 * c)
    return np.clip(np.round(c * 255), 0, 255).astype(np.uint8)


def _new_hue(lab: np.ndarray, turn_deg: float = 120.0, min_chroma: float = 30.0) -> np.ndarray:
    """Rotate hue by turn_deg; colours too grey to rotate get min_chroma in a fixed hue."""
    a, b = lab[..., 1], lab[..., 2]
    t = math.radians(turn_deg)
    na, nb = a * math.cos(t) - b * math.sin(t), a * math.sin(t) + b * math.cos(t)
    c = np.hypot(na, nb)
    grey = c < 1e-3
    na, nb = np.where(grey, 1.0, na), np.where(grey, 0.0, nb)
    c = np.hypot(na, nb)
    scale = np.maximum(c, min_chroma) / c
    out = lab.copy()
    out[..., 1], out[..., 2] = na * scale, nb * scale
    return out


def recolor(im: np.ndarray, points: np.ndarray, part: str, colors: dict | None) -> np.ndarray:
    """Hue-shift the hair (pixels near the measured hair colour) or the irises (inside the eye regions)."""
    lab = rgb_to_lab(im)
    if part == "hair":
        if not colors:
            return im
        de = np.linalg.norm(lab - np.asarray(colors["hair"]), axis=-1)
        wgt = np.clip((30 - de) / 10, 0, 1)
    else:
        h, w = im.shape[:2]
        gx, gy = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        hw = float(np.mean([np.hypot(*(points[2] - points[0])), np.hypot(*(points[3] - points[1]))]))
        wgt = np.zeros((h, w))
        for idx in (0, 1):
            r = np.hypot(gx - points[idx][0], gy - points[idx][1])
            wgt = np.maximum(wgt, _window(r, 0.9 * hw, 1.2 * hw))
        wgt *= (lab[..., 0] > 8) & (lab[..., 0] < 92)
    new = lab_to_rgb(_new_hue(lab)).astype(np.float64)
    return np.round(im * (1 - wgt[..., None]) + new * wgt[..., None]).astype(np.uint8)


# --- detection cache -----------------------------------------------------------------------------
@dataclass
class Item:
    m: ImageMeasurement
    colors: dict | None  # kohya_ext.color.face_colors (Lab) or None
    nv_colors: dict | None  # nvxs nv_face_analyze (Lab of hair, mean eyes) or None
    extra: dict[str, float] | None = None  # CANDIDATE_RATIOS, for usable faces


def _lengths(points, box) -> dict[str, float]:
    """Raw lengths of one nvxs face (px): eye distance, inner gap, mouth width, box side, heights below the eye line."""
    p = np.asarray(points, dtype=np.float64)
    ed = float(np.hypot(*(p[1] - p[0])))
    x = (p[1] - p[0]) / ed
    y = np.array([-x[1], x[0]])
    v = lambda q: float((q - (p[0] + p[1]) / 2) @ y)
    return {"ed": ed, "ic": float(np.hypot(*(p[3] - p[2]))), "mw": float(np.hypot(*(p[6] - p[5]))), "d": float(box[2] - box[0]),
            "vn": v(p[4]), "vm": v(p[7]), "vc": v(p[8])}


#: Ratio definitions tried for the warp targets (tune half): numerator / normaliser, from nvxs's points.
#: W = box side d; H = eye line to chin; H_m = eye line to mouth centre. "(v2)" = shipped in FORMULA_VERSION 2.
CANDIDATE_RATIOS: dict[str, Callable[[dict], float]] = {
    "eye dist / W (v1)": lambda L: L["ed"] / L["d"],
    "eye dist / H_m (v2)": lambda L: L["ed"] / L["vm"],
    "eye dist / H": lambda L: L["ed"] / L["vc"],
    "eye dist / v(nose)": lambda L: L["ed"] / L["vn"],
    "eye dist / (v(nose)+H_m)": lambda L: L["ed"] / (L["vn"] + L["vm"]),
    "inner gap / W (v1)": lambda L: L["ic"] / L["d"],
    "inner gap / H_m (v2)": lambda L: L["ic"] / L["vm"],
    "inner gap / H": lambda L: L["ic"] / L["vc"],
    "mouth-chin / H (v1, v2)": lambda L: (L["vc"] - L["vm"]) / L["vc"],
    "mouth-chin / eye dist": lambda L: (L["vc"] - L["vm"]) / L["ed"],
    "mouth-chin / H_m": lambda L: (L["vc"] - L["vm"]) / L["vm"],
    "mouth width / W (v1, v2)": lambda L: L["mw"] / L["d"],
    "mouth width / eye dist": lambda L: L["mw"] / L["ed"],
    "mouth width / H": lambda L: L["mw"] / L["vc"],
}
#: Across-character std of each candidate over the usable originals (the z floor for them), filled by main().
CANDIDATE_POP: dict[str, float] = {}


def value(i: Item, name: str) -> float:
    """A ratio of a usable face: a shipped one (kohya_ext.ratios) or a CANDIDATE_RATIOS one."""
    return i.extra[name] if name in CANDIDATE_RATIOS else i.m.ratios[name]


def pop_std(name: str) -> float:
    return CANDIDATE_POP[name] if name in CANDIDATE_RATIOS else POPULATION_STD["nvxs"][name]


def _nv_lab(c: dict | None) -> dict | None:
    if not c:
        return None
    eyes = (rgb_to_lab(np.array(c["left_eye"])) + rgb_to_lab(np.array(c["right_eye"]))) / 2
    return {"hair": rgb_to_lab(np.array(c["hair"])).round(2).tolist(), "eyes": eyes.round(2).tolist()}


class Store:
    """Measurements of every (tile, variant) image, detected once and kept in a JSON file."""

    def __init__(self, tiles: list[np.ndarray], cache_dir: Path, threads: int):
        from kohya_ext.backends.nvxs import NvxsBackend

        self.tiles = tiles
        self.backend = NvxsBackend(threads=threads)
        self.identity = self.backend.identity()
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / f"measurements_v{CACHE_VERSION}.json"
        self.data: dict[str, dict] = {}
        if self.path.exists():
            d = json.loads(self.path.read_text())
            if d.get("identity") == self.identity:
                self.data = d["items"]
        self.detected = 0
        self.memo: dict[str, Item] = {}
        self.dirty = False

    def image(self, tile: int, key: str) -> np.ndarray:
        """The image a key names: '<variant>', 'warp:<name>/<variant>' or 'recolor:<part>/<variant>'."""
        base = self.tiles[tile]
        if "/" in key:
            edit, variant = key.split("/")
            kind, name = edit.split(":")
            pts = np.asarray(self.get(tile, "orig").m.points, dtype=np.float64)
            if kind == "warp":
                base = warp(base, pts, *WARPS[name])
            else:
                base = recolor(base, pts, name, self.get(tile, "orig").colors)
        else:
            variant = key
        return np.ascontiguousarray(ALL_VARIANTS[variant](base))

    def ensure(self, wanted: list[tuple[int, str]], chunk: int = 24) -> None:
        todo = [(t, k) for t, k in wanted if f"{t}|{k}" not in self.data]
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            images = [self.image(t, k) for t, k in part]
            dets: list[ImageFaces] = self.backend.detect(images)
            ms = measure_faces("nvxs", [f"{t}|{k}" for t, k in part], images, dets, ExclusionRules())
            for (t, k), im, det, m in zip(part, images, dets, ms):
                face = det.primary()
                cols = face_colors(im, face.points[0], face.points[1]) if face is not None else None
                self.data[f"{t}|{k}"] = {"m": m.to_dict(), "colors": cols, "nv": _nv_lab(getattr(face, "colors", None))}
            self.detected += len(part)
            self.path.write_text(json.dumps({"identity": self.identity, "items": self.data}))
            print(f"  detected {self.detected}/{len(todo)}", file=sys.stderr, flush=True)

    def get(self, tile: int, key: str) -> Item:
        """The measurement of one image; ratios recomputed from the cached points with the current formulas."""
        k = f"{tile}|{key}"
        if k in self.memo:
            return self.memo[k]
        if k not in self.data:
            self.ensure([(tile, key)])
        d = self.data[k]
        m = ImageMeasurement.from_dict(d["m"])
        extra = None
        if m.points is not None and m.status != "no_face":
            set_ratios([m], "nvxs")
            if m.status == "ok":
                L = _lengths(m.points, m.face_box)
                extra = {n: fn(L) for n, fn in CANDIDATE_RATIOS.items()}
        self.memo[k] = Item(m, d["colors"], d["nv"], extra)
        return self.memo[k]

    def face_hashes(self, tile: int, key: str) -> dict:
        """The copy gate's hashes of one image (kohya_ext.phash.copy_hashes, as measure.py stores them), computed once and cached."""
        d = self.data[f"{tile}|{key}"]
        if "gate4" not in d:
            m = self.get(tile, key).m
            eyes = np.asarray(m.points)[:2] if m.points is not None and m.status != "no_face" else None
            d["gate4"] = copy_hashes(self.image(tile, key), eyes)
            self.dirty = True
        return d["gate4"]

    def save(self) -> None:
        if self.dirty:
            self.path.write_text(json.dumps({"identity": self.identity, "items": self.data}))
            self.dirty = False


# --- candidate formulas ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Formula:
    """One way to turn reference + sample measurements into d (lower = more alike)."""

    name: str
    ratios: tuple[str, ...] = NVXS_RATIOS
    weights: tuple[float, ...] | None = None  # None: 1 each (mouth 0.5 as in v1 when v1_weights)
    center: str = "mean"  # or "median"
    unit: str = "z"  # or "pct"
    floor: float = 0.5  # population-std fraction in the z unit
    cap: float = 3.0
    color: float = 0.0  # weight of each colour part (0: geometry only)
    color_src: str = "regions"  # or "nvxs"
    color_floor: float = 8.0

    def distance(self, ref: list[Item], smp: list[Item]) -> tuple[float, float]:
        """(d, detection rate) of the samples against the reference."""
        r_ok = [i for i in ref if i.m.status == "ok"]
        s_ok = [i for i in smp if i.m.status == "ok"]
        rate = len(s_ok) / len(smp) if smp else 0.0
        if not r_ok or not s_ok:
            return math.inf, rate
        items = []
        for j, name in enumerate(self.ratios):
            r = np.array([value(i, name) for i in r_ok])
            s = np.array([value(i, name) for i in s_ok])
            c = np.median if self.center == "median" else np.mean
            diff = c(s) - c(r)
            if self.unit == "pct":
                z = 100 * diff / abs(c(r)) / 5.0  # 5 % = 1 unit
            else:
                own = r.std(ddof=1) if len(r) > 1 else 0.0
                if self.center == "median" and len(r) > 2:
                    own = 1.4826 * np.median(np.abs(r - np.median(r)))
                z = diff / math.sqrt(own**2 + (self.floor * pop_std(name)) ** 2)
            wt = self.weights[j] if self.weights else 1.0
            items.append((wt, min(abs(z), self.cap)))
        if self.color > 0:
            get = (lambda i: i.colors) if self.color_src == "regions" else (lambda i: i.nv_colors)
            cd = color_distances([get(i) for i in r_ok], [get(i) for i in s_ok], floor=self.color_floor)
            items += [(self.color, min(v, self.cap)) for v in cd.values() if v is not None]
        w = np.array([a for a, _ in items])
        z = np.array([b for _, b in items])
        return float((w * z).sum() / w.sum()), rate

    def score(self, ref: list[Item], smp: list[Item]) -> float:
        d, rate = self.distance(ref, smp)
        return 0.0 if not math.isfinite(d) else rate * math.exp(-0.5 * d * d)


V1_WEIGHTS = tuple(0.5 if r == "mouth_width_ratio" else 1.0 for r in NVXS_RATIOS)


class Production:
    """The shipped formula, through kohya_ext.comparison.compare (what users get)."""

    name = "shipped (kohya_ext.comparison.compare)"

    def __init__(self, identity: dict):
        self.identity = identity
        self.rules = ExclusionRules().as_dict()

    def _ms(self, items: list[Item]) -> list[ImageMeasurement]:
        out = []
        for i in items:
            m = replace(i.m)
            m.colors = i.colors  # read by compare() when present
            out.append(m)
        return out

    def score(self, ref: list[Item], smp: list[Item]) -> float:
        rs = ReferenceStats(backend=self.identity, rules=self.rules, measurements=self._ms(ref))
        return compare(rs, self._ms(smp)).score


# --- experiments ------------------------------------------------------------------------------------
@dataclass
class Half:
    name: str
    chars: list[int]  # tiles whose original has a usable face
    store: Store

    def items(self, tile: int, keys) -> list[Item]:
        return [self.store.get(tile, k) for k in keys]


def auc(half: Half, f, n: int) -> float:
    """P(score(S_A vs R_A) > score(S_B vs R_A)) over ordered pairs A != B and disjoint blocks of n images."""
    wins = total = 0.0
    for rb, sb in zip(blocks(tuple(REF_VARIANTS), n), blocks(tuple(SAMPLE_VARIANTS), n)):
        for a in half.chars:
            ref = half.items(a, rb)
            own = f.score(ref, half.items(a, sb))
            for b in half.chars:
                if b == a:
                    continue
                other = f.score(ref, half.items(b, sb))
                wins += 1.0 if own > other else 0.5 if own == other else 0.0
                total += 1
    return wins / total


def edit_power(half: Half, f, edit: str, n: int) -> float:
    """Share of (character, block) trials where the edited samples score strictly below the unedited ones."""
    hits = total = 0
    for rb, sb in zip(blocks(tuple(REF_VARIANTS), n), blocks(EDIT_SAMPLE_VARIANTS, n)):
        for a in half.chars:
            ref = half.items(a, rb)
            plain = f.score(ref, half.items(a, sb))
            edited = f.score(ref, half.items(a, [f"{edit}/{v}" for v in sb]))
            hits += edited < plain
            total += 1
    return hits / total


def ratio_moves(half: Half, edit: str, names: tuple[str, ...] = NVXS_RATIOS) -> dict[str, float]:
    """Mean paired % change of each ratio, edited vs unedited, over characters and the 4 edit variants."""
    out = {}
    for name in names:
        ch = []
        for a in half.chars:
            for v in EDIT_SAMPLE_VARIANTS:
                p, e = half.store.get(a, v), half.store.get(a, f"{edit}/{v}")
                if p.m.status == "ok" and e.m.status == "ok":
                    ch.append(100 * (value(e, name) - value(p, name)) / value(p, name))
        out[name] = float(np.mean(ch)) if ch else float("nan")
    return out


def point_moves(half: Half, edit: str) -> tuple[float, float, float]:
    """Mean paired % change of raw detected lengths (px): eye distance, mouth-to-chin, face-box side.

    Shows whether a warp moved the detected points at all, and how much of it the box absorbed.
    """
    out = []
    for a in half.chars:
        for v in EDIT_SAMPLE_VARIANTS:
            p, e = half.store.get(a, v).m, half.store.get(a, f"{edit}/{v}").m
            if p.status == "ok" and e.status == "ok":
                lengths = []
                for m in (p, e):
                    q = np.asarray(m.points)
                    lengths.append((np.hypot(*(q[1] - q[0])), np.hypot(*(q[8] - q[7])), m.face_box[2] - m.face_box[0]))
                out.append([100 * (b / a_ - 1) for a_, b in zip(*lengths)])
    return tuple(np.mean(out, axis=0)) if out else (math.nan,) * 3


def invariance(half: Half, variant: str, names: tuple[str, ...] = NVXS_RATIOS) -> tuple[dict[str, tuple[float, float]], float]:
    """Per ratio: set-mean drift of the variant vs the originals (%, in population-std units of the half), and detection rate."""
    origs = [half.store.get(a, "orig") for a in half.chars]
    vars_ = [half.store.get(a, variant) for a in half.chars]
    pairs = [(o, v) for o, v in zip(origs, vars_) if o.m.status == "ok" and v.m.status == "ok"]
    out = {}
    for name in names:
        o = np.array([value(p[0], name) for p in pairs])
        v = np.array([value(p[1], name) for p in pairs])
        sd = np.array([value(i, name) for i in origs if i.m.status == "ok"]).std(ddof=1)
        out[name] = (100 * (v.mean() - o.mean()) / o.mean(), (v.mean() - o.mean()) / sd)
    return out, sum(v.m.status == "ok" for v in vars_) / len(vars_)


def noise_table(half: Half, names: tuple[str, ...] = NVXS_RATIOS) -> dict[str, tuple[float, float]]:
    """Per ratio: within-character std over all 16 benign variants (pooled) and the across-character std."""
    keys = tuple(REF_VARIANTS) + tuple(SAMPLE_VARIANTS)
    out = {}
    for name in names:
        within, means = [], []
        for a in half.chars:
            v = np.array([value(i, name) for i in half.items(a, keys) if i.m.status == "ok"])
            if len(v) > 2:
                within.append(v.var(ddof=1))
                means.append(v.mean())
        out[name] = (math.sqrt(np.mean(within)), float(np.std(means, ddof=1)))
    return out


MEM_COPIES = {
    "exact": ["orig"],
    "jpeg/rescale/roll": list(SAMPLE_VARIANTS),
    "crop/pad": [k for k in REF_VARIANTS if "mirror" not in k and k != "orig"],
    "mirrored (+crop/pad)": [k for k in REF_VARIANTS if "mirror" in k],
}
MEM_KEYS = tuple(REF_VARIANTS) + tuple(SAMPLE_VARIANTS)


def _mem_measurement(half: Half, tile: int, key: str) -> ImageMeasurement:
    """The measurement with the copy gate's hashes, as kohya_ext.measure keeps them (measurement version 4)."""
    m = replace(half.store.get(tile, key).m)
    ch = half.store.face_hashes(tile, key)
    m.drawn_hash, m.drawn_hash_mirror, m.window_hashes = ch["drawn"], ch["drawn_mirror"], ch["windows"]
    m.face_phash, m.face_phash_mirror, m.face_phash_scaled = ch["face"], ch["face_mirror"], ch["face_scaled"]
    return m


#: Limits shown in the memorisation tables (256-bit hashes since measurement version 4; shipped: MEMORIZATION_HAMMING).
MEM_THRESHOLDS = (32, 40, 48, 56)


def memorisation(half: Half, mode: str, thresholds=MEM_THRESHOLDS) -> dict[str, list[float]]:
    """Per-image flag rates of kohya_ext.comparison.is_near_copy per limit T, each character's training image = its original.

    mode: "image" (drawn-area/window hashes <= T), "face" (face-window hash <= T) or
    "either" (drawn-area/window hashes <= MEMORIZATION_HAMMING or face hash <= T: what compare() does,
    without the reference-set cap, which needs several training images).
    """
    ms = {(a, k): _mem_measurement(half, a, k) for a in half.tiles_all for k in MEM_KEYS}
    refs = {a: (reference_hashes([ms[(a, "orig")]]), reference_face_hashes([ms[(a, "orig")]])) for a in half.tiles_all}

    def flagged(m: ImageMeasurement, a: int, t: int) -> bool:
        img, face = refs[a]
        if mode == "image":
            return is_near_copy(m, img, None, max_bits=t)
        if mode == "face":
            return is_near_copy(m, [], face, max_face_bits=t)
        return is_near_copy(m, img, face, max_bits=MEMORIZATION_HAMMING, max_face_bits=t)

    with_face = [a for a in half.tiles_all if refs[a][1]]
    out = {}
    for label, keys in MEM_COPIES.items():
        out[f"copies: {label}"] = [float(np.mean([flagged(ms[(a, k)], a, t) for a in half.tiles_all for k in keys])) for t in thresholds]
    for label in ("crop/pad", "mirrored (+crop/pad)"):
        out[f"copies: {label}, training image has a face"] = [
            float(np.mean([flagged(ms[(a, k)], a, t) for a in with_face for k in MEM_COPIES[label]])) for t in thresholds
        ]
    out["other characters (any variant)"] = [
        float(np.mean([flagged(ms[(b, k)], a, t) for a in half.tiles_all for b in half.tiles_all if b != a for k in MEM_KEYS]))
        for t in thresholds
    ]
    return out


def hamming_distribution(half: Half, face: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Bits from each character's training image: its non-mirrored copies, and the other characters' originals."""
    def h(a, k):
        return half.store.face_hashes(a, k)["face" if face else "drawn"]

    ref_hash = {a: h(a, "orig") for a in half.tiles_all}
    non_mirror = [k for k in MEM_KEYS if "mirror" not in k]
    same = np.array([hamming(h(a, k), ref_hash[a]) for a in half.tiles_all for k in non_mirror if ref_hash[a] and h(a, k)])
    other = np.array([hamming(h(b, "orig"), ref_hash[a]) for a in half.tiles_all for b in half.tiles_all if b != a and ref_hash[a] and h(b, "orig")])
    return same, other


# --- main ----------------------------------------------------------------------------------------------
def load_tiles(grid_path: Path) -> list[np.ndarray]:
    from kohya_ext.images import load_image

    return grid_tiles(load_image(grid_path))


def candidates() -> list[Formula]:
    out = [Formula("v1: mean |z|, floor 0.5, mouth 1/2", weights=V1_WEIGHTS)]
    for center, unit, floor in itertools.product(("mean", "median"), ("z", "pct"), (0.25, 0.5, 1.0)):
        if unit == "pct" and floor != 0.5:
            continue
        out.append(Formula(f"{center} {unit}" + (f" floor {floor}" if unit == "z" else ""), center=center, unit=unit, floor=floor, weights=V1_WEIGHTS))
    drop = lambda r: tuple(x for x in NVXS_RATIOS if x != r)
    for r in NVXS_RATIOS:
        out.append(Formula(f"v1 without {r}", ratios=drop(r)))
    return out


#: Ratio sets compared for the warp targets (tune half), by CANDIDATE_RATIOS / shipped names.
_E2N, _N2M, _MW, _CH = "eye_to_nose_ratio", "nose_to_mouth_ratio", "mouth_width_ratio", "chin_length_ratio"
RATIO_SETS: dict[str, tuple[str, ...]] = {
    "v1: eye spacings / W (shipped before)": ("eye dist / W (v1)", _E2N, _N2M, _MW, _CH, "inner gap / W (v1)"),
    "eye dist / H_m, inner gap / W": ("eye dist / H_m (v2)", _E2N, _N2M, _MW, _CH, "inner gap / W (v1)"),
    "eye dist / H, inner gap / W": ("eye dist / H", _E2N, _N2M, _MW, _CH, "inner gap / W (v1)"),
    "eye dist / (v(nose)+H_m), inner gap / W": ("eye dist / (v(nose)+H_m)", _E2N, _N2M, _MW, _CH, "inner gap / W (v1)"),
    "v2: eye spacings / H_m (shipped)": NVXS_RATIOS,
    "eye dist / H, inner gap / H_m": ("eye dist / H", _E2N, _N2M, _MW, _CH, "inner gap / H_m (v2)"),
    "eye spacings / H": ("eye dist / H", _E2N, _N2M, _MW, _CH, "inner gap / H"),
    "eye spacings and mouth / H": ("eye dist / H", _E2N, _N2M, "mouth width / H", _CH, "inner gap / H"),
    "v2 + mouth-chin / eye dist": NVXS_RATIOS + ("mouth-chin / eye dist",),
    "v2, chin -> mouth-chin / eye dist": ("interocular_ratio", _E2N, _N2M, _MW, "mouth-chin / eye dist", "intercanthal_ratio"),
}
#: Score v2's ratio weights, for the "v1 ratios as shipped before" rows.
V2_WEIGHTS_OLD_RATIOS = (0.42, 0.70, 1.0, 0.90, 0.66, 0.53)


def snr_weights(noise: dict[str, tuple[float, float]], names: tuple[str, ...]) -> tuple[float, ...]:
    """Across-character std / within-character std per ratio, scaled to max 1 (how similarity.py's weights are set)."""
    snr = np.array([noise[n][1] / noise[n][0] for n in names])
    return tuple(float(v) for v in np.round(snr / snr.max(), 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(Path(__file__).resolve().parents[2] / "shared/data/tadne/grid.jpg"))
    ap.add_argument("--cache", default="/tmp/kohya_validity")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    tiles = load_tiles(Path(args.grid))
    store = Store(tiles, Path(args.cache), args.threads)
    n = len(tiles)
    store.ensure([(t, "orig") for t in range(n)])
    usable = [t for t in range(n) if store.get(t, "orig").m.status == "ok"]
    wanted = [(t, k) for t in range(n) for k in ALL_VARIANTS]
    wanted += [(t, f"{e}/{v}") for t in usable for e in [f"warp:{w}" for w in WARPS] + ["recolor:hair", "recolor:eyes"] for v in EDIT_SAMPLE_VARIANTS]
    store.ensure(wanted)
    for name in CANDIDATE_RATIOS:  # the z floor of a candidate, like POPULATION_STD: its spread over all usable originals
        CANDIDATE_POP[name] = float(np.std([value(store.get(t, "orig"), name) for t in usable], ddof=1))
    halves = {}
    for name, parity in (("tune (even tiles)", 0), ("report (odd tiles)", 1)):
        h = Half(name, [t for t in usable if t % 2 == parity], store)
        h.tiles_all = [t for t in range(n) if t % 2 == parity]
        halves[name] = h
    tune, rep = halves["tune (even tiles)"], halves["report (odd tiles)"]
    print(f"# kohya-ext metric validity (nvxs)\n\n{n} portraits, {len(usable)} with a usable face; "
          f"tune = {len(tune.chars)} characters (even tiles), report = {len(rep.chars)} (odd tiles).\n")
    benign = tuple(REF_VARIANTS)[1:] + tuple(SAMPLE_VARIANTS)

    # 1. ratio definitions for the warp targets: noise, invariance, and how far each warp moves them
    print("## Ratio definitions (tune half)\n")
    print("W = nvxs box side, H = eye line to chin, H_m = eye line to mouth centre. within / across = std within one character"
          " over 16 benign variants / across characters; worst benign = worst set-mean drift over the 15 benign variations;"
          " warp columns = mean paired % change; effect = mean |change| under eyes ±10 % in within-stds.\n")
    cands = tuple(CANDIDATE_RATIOS)
    cnoise = noise_table(tune, cands)
    inv = {v: invariance(tune, v, cands)[0] for v in benign + tuple(INVARIANCE_ONLY)}
    cmoves = {e: ratio_moves(tune, f"warp:{e}", cands) for e in ("eyes_-10%", "eyes_+10%", "chin_-10%", "chin_+10%", "mouth_-10%", "mouth_+10%")}
    print("| ratio | mean | within | across | across / within | worst benign % / sd | h-stretch 5 % | eyes -10 % | eyes +10 % | chin -10 % | chin +10 % | mouth ±10 % | eyes effect |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cands:
        wi, ac = cnoise[c]
        mean = float(np.mean([value(store.get(t, "orig"), c) for t in tune.chars]))
        wp = max(abs(inv[v][c][0]) for v in benign)
        wz = max(abs(inv[v][c][1]) for v in benign)
        mv = {e: cmoves[e][c] for e in cmoves}
        eff = (abs(mv["eyes_-10%"]) + abs(mv["eyes_+10%"])) / 2 / 100 * mean / wi
        print(f"| {c} | {mean:.3f} | {wi:.4f} | {ac:.4f} | {ac / wi:.2f} | {wp:.1f} / {wz:.2f} | {inv['stretch_h_5'][c][0]:+.1f} | "
              f"{mv['eyes_-10%']:+.1f} | {mv['eyes_+10%']:+.1f} | {mv['chin_-10%']:+.1f} | {mv['chin_+10%']:+.1f} | "
              f"{mv['mouth_-10%']:+.1f} / {mv['mouth_+10%']:+.1f} | {eff:.2f} |")

    # 2. ratio sets, each with its own SNR weights and colour weight 1 (as shipped)
    print("\n## Ratio sets (tune half): SNR weights, colour weight 1; geometry-only AUC beside\n")
    print("| ratio set | weights | AUC n=2 geometry | AUC n=4 geometry | AUC n=4 | eyes -10% | eyes +10% | eyes ±5% | chin -10% | chin +10% | mouth ±10% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    set_rows = [(k, rs, snr_weights(noise_table(tune, rs), rs)) for k, rs in RATIO_SETS.items()]
    for label, rs, w in set_rows:
        g, c = Formula(label, ratios=rs, weights=w), Formula(label, ratios=rs, weights=w, color=1.0)
        p = {e: edit_power(tune, c, f"warp:{e}", 4) for e in ("eyes_-10%", "eyes_+10%", "eyes_-5%", "eyes_+5%", "chin_-10%", "chin_+10%", "mouth_-10%", "mouth_+10%")}
        print(f"| {label} | {', '.join(f'{x:g}' for x in w)} | {auc(tune, g, 2):.3f} | {auc(tune, g, 4):.3f} | {auc(tune, c, 4):.3f} | "
              f"{p['eyes_-10%']:.2f} | {p['eyes_+10%']:.2f} | {(p['eyes_-5%'] + p['eyes_+5%']) / 2:.2f} | {p['chin_-10%']:.2f} | "
              f"{p['chin_+10%']:.2f} | {(p['mouth_-10%'] + p['mouth_+10%']) / 2:.2f} |")

    # 3. per-ratio noise of the shipped ratios -> the shipped weights
    print("\n## Ratio noise (tune half, shipped formulas): within-character std over 16 benign variants vs across-character std\n")
    print("| ratio | within | across | across / within |\n|---|---|---|---|")
    noise = noise_table(tune)
    for name, (wi, ac) in noise.items():
        print(f"| {name} | {wi:.4f} | {ac:.4f} | {ac / wi:.2f} |")
    snr_w = snr_weights(noise, NVXS_RATIOS)
    snr2_w = tuple(round(v * v, 2) for v in snr_w)
    print(f"\nSNR weights (across/within, max 1): {dict(zip(NVXS_RATIOS, snr_w))}")

    # 4. formula candidates on the tune half (shipped ratios)
    prod = Production(store.identity)
    cands_f = candidates()
    cands_f += [Formula("SNR weights", weights=snr_w), Formula("SNR^2 weights", weights=snr2_w)]
    cands_f += [Formula(f"v1 + colour w={c} ({src})", weights=V1_WEIGHTS, color=c, color_src=src) for c in (0.5, 1.0, 2.0) for src in ("regions", "nvxs")]
    cands_f += [Formula(f"SNR weights + colour w={c} floor {fl}", weights=snr_w, color=c, color_floor=fl) for c in (0.5, 1.0) for fl in (5.0, 8.0, 12.0)]
    print("\n## Candidates (tune half, shipped ratio formulas)\n")
    print("| formula | AUC n=2 | AUC n=4 | eyes ±10% n=4 | chin ±10% n=4 | mouth ±10% n=4 | hair recolour n=4 | iris recolour n=4 |\n|---|---|---|---|---|---|---|---|")
    for f in cands_f + [prod]:
        pw = {k: np.mean([edit_power(tune, f, f"warp:{k}_{s}%", 4) for s in ("-10", "+10")]) for k in ("eyes", "chin", "mouth")}
        print(f"| {f.name} | {auc(tune, f, 2):.3f} | {auc(tune, f, 4):.3f} | {pw['eyes']:.2f} | {pw['chin']:.2f} | {pw['mouth']:.2f} | {edit_power(tune, f, 'recolor:hair', 4):.2f} | {edit_power(tune, f, 'recolor:eyes', 4):.2f} |")

    # 5. the shipped formula on both halves
    geom = Formula("geometry only (shipped weights)", weights=tuple(BACKEND_RATIO_WEIGHTS["nvxs"][r] for r in NVXS_RATIOS))
    old = Formula("v1 ratios, score-v2 weights, colour", ratios=RATIO_SETS["v1: eye spacings / W (shipped before)"], weights=V2_WEIGHTS_OLD_RATIOS, color=1.0)
    old_geo = Formula("v1 ratios, score-v2 weights", ratios=RATIO_SETS["v1: eye spacings / W (shipped before)"], weights=V2_WEIGHTS_OLD_RATIOS)
    for h in (tune, rep):
        print(f"\n## Shipped score, {h.name}\n")
        print("| n per side | AUC shipped | AUC shipped, geometry only | AUC before (v1 ratios, score v2) | AUC before, geometry only |\n|---|---|---|---|---|")
        for k in (2, 4, 8):
            print(f"| {k} | {auc(h, prod, k):.3f} | {auc(h, geom, k):.3f} | {auc(h, old, k):.3f} | {auc(h, old_geo, k):.3f} |")
        print("\n| edit | power n=2 | power n=4 | power before n=4 | eye dist px % | mouth-chin px % | box side % | " + " | ".join(r.replace("_ratio", "") + " %" for r in NVXS_RATIOS) + " |")
        print("|---|---|---|---|---|---|---|" + "---|" * len(NVXS_RATIOS))
        for e in [f"warp:{w}" for w in WARPS] + ["recolor:hair", "recolor:eyes"]:
            mv = ratio_moves(h, e)
            px = point_moves(h, e)
            print(f"| {e.split(':')[1]} | {edit_power(h, prod, e, 2):.2f} | {edit_power(h, prod, e, 4):.2f} | {edit_power(h, old, e, 4):.2f} | {px[0]:+.1f} | {px[1]:+.1f} | {px[2]:+.1f} | " + " | ".join(f"{mv[r]:+.1f}" for r in NVXS_RATIOS) + " |")
        print("\n| benign variation | detected | worst |%| | worst |sd| | " + " | ".join(r.replace("_ratio", "") for r in NVXS_RATIOS) + " |")
        print("|---|---|---|---|" + "---|" * len(NVXS_RATIOS))
        for v in benign + tuple(INVARIANCE_ONLY):
            inv_v, rate = invariance(h, v)
            wp = max(abs(a) for a, _ in inv_v.values())
            wz = max(abs(b) for _, b in inv_v.values())
            print(f"| {v} | {rate:.2f} | {wp:.1f} | {wz:.2f} | " + " | ".join(f"{a:+.1f}% / {b:+.2f}" for a, b in inv_v.values()) + " |")
        print()
        for face in (False, True):
            same, other = hamming_distribution(h, face)
            print(f"{'face-window' if face else 'drawn-area'} hash bits (256): copies (non-mirrored) median {np.median(same):.0f}, 95th pct {np.percentile(same, 95):.0f}, "
                  f"max {same.max()}; other characters min {other.min()}, 5th pct {np.percentile(other, 5):.0f}, median {np.median(other):.0f}\n")
        for mode, title in (("image", "drawn-area/window hashes (+mirror) <= T"), ("face", "face-window hash (+mirror) <= T"),
                            ("either", f"drawn-area/windows <= {MEMORIZATION_HAMMING} OR face window <= T (shipped T = {MEMORIZATION_FACE_HAMMING})")):
            print(f"| memorisation flag: {title} | " + " | ".join(f"T={t}" for t in MEM_THRESHOLDS) + " |\n|---|---|---|---|---|")
            for k, v in memorisation(h, mode).items():
                print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
            print()
    store.save()
    print(f"\n{store.detected} images detected this run (the rest from {store.path}); {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
