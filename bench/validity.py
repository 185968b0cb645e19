"""Metric validity: does the consistency score see what studios care about? (issue 3, docs/validity.md)

Usage:
    python bench/validity.py [--grid ../shared/data/tadne/grid.jpg] [--cache /tmp/kohya_validity] [--threads 2]

One synthetic "character" per TADNE portrait. Every image variant is detected
once with nvxs and cached under --cache (a rerun only re-analyses). Characters
on even tiles tune the formula, odd tiles report it. Prints markdown tables:
candidates (tune half), then for the shipped formula on both halves: pairwise
AUC (same vs other character, reference and samples built from DIFFERENT
benign variations), landmark-guided warp detection power, invariance to each
benign variation, recolour detection and the memorisation gate.
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

from kohya_ext.color import color_distances, face_colors, rgb_to_lab
from kohya_ext.detection import ImageFaces
from kohya_ext.measure import ImageMeasurement, measure_faces
from kohya_ext.phash import hamming, phash, phash_mirror
from kohya_ext.ratios import RATIO_NAMES, ExclusionRules
from kohya_ext.reference import POPULATION_STD, ReferenceStats
from kohya_ext.report import compare
from kohya_ext.score import BACKEND_RATIO_WEIGHTS

TILE = 512
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
#: Which ratio each warp is meant to move, and its geometric change (%), for the "which ratios move" table.
WARP_TARGET = {"eyes": "interocular_ratio", "chin": "chin_length_ratio", "mouth": "mouth_width_ratio"}


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
        fn = REF_VARIANTS.get(variant) or SAMPLE_VARIANTS[variant]
        return np.ascontiguousarray(fn(base))

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
        k = f"{tile}|{key}"
        if k not in self.data:
            self.ensure([(tile, key)])
        d = self.data[k]
        return Item(ImageMeasurement.from_dict(d["m"]), d["colors"], d["nv"])


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
            r = np.array([i.m.ratios[name] for i in r_ok])
            s = np.array([i.m.ratios[name] for i in s_ok])
            c = np.median if self.center == "median" else np.mean
            diff = c(s) - c(r)
            if self.unit == "pct":
                z = 100 * diff / abs(c(r)) / 5.0  # 5 % = 1 unit
            else:
                own = r.std(ddof=1) if len(r) > 1 else 0.0
                if self.center == "median" and len(r) > 2:
                    own = 1.4826 * np.median(np.abs(r - np.median(r)))
                z = diff / math.sqrt(own**2 + (self.floor * POPULATION_STD["nvxs"][name]) ** 2)
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
    """The shipped formula, through kohya_ext.report.compare (what users get)."""

    name = "shipped (kohya_ext.report.compare)"

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
def blocks(names: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    return [names[k : k + n] for k in range(0, len(names) - n + 1, n)]


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


def ratio_moves(half: Half, edit: str) -> dict[str, float]:
    """Mean paired % change of each ratio, edited vs unedited, over characters and the 4 edit variants."""
    out = {}
    for name in NVXS_RATIOS:
        ch = []
        for a in half.chars:
            for v in EDIT_SAMPLE_VARIANTS:
                p, e = half.store.get(a, v).m, half.store.get(a, f"{edit}/{v}").m
                if p.status == "ok" and e.status == "ok":
                    ch.append(100 * (e.ratios[name] - p.ratios[name]) / p.ratios[name])
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


def invariance(half: Half, variant: str) -> tuple[dict[str, tuple[float, float]], float]:
    """Per ratio: set-mean drift of the variant vs the originals (%, in population-std units of the half), and detection rate."""
    origs = [half.store.get(a, "orig").m for a in half.chars]
    vars_ = [half.store.get(a, variant).m for a in half.chars]
    pairs = [(o, v) for o, v in zip(origs, vars_) if o.status == "ok" and v.status == "ok"]
    out = {}
    for name in NVXS_RATIOS:
        o = np.array([p[0].ratios[name] for p in pairs])
        v = np.array([p[1].ratios[name] for p in pairs])
        sd = np.array([m.ratios[name] for m in origs if m.status == "ok"]).std(ddof=1)
        out[name] = (100 * (v.mean() - o.mean()) / o.mean(), (v.mean() - o.mean()) / sd)
    return out, sum(v.status == "ok" for v in vars_) / len(vars_)


def noise_table(half: Half) -> dict[str, tuple[float, float]]:
    """Per ratio: within-character std over all 16 benign variants (pooled) and the across-character std."""
    keys = tuple(REF_VARIANTS) + tuple(SAMPLE_VARIANTS)
    out = {}
    for name in NVXS_RATIOS:
        within, means = [], []
        for a in half.chars:
            v = np.array([i.m.ratios[name] for i in half.items(a, keys) if i.m.status == "ok"])
            if len(v) > 2:
                within.append(v.var(ddof=1))
                means.append(v.mean())
        out[name] = (math.sqrt(np.mean(within)), float(np.std(means, ddof=1)))
    return out


def face_phash(image: np.ndarray, box, context: float = 1.6, mirrored: bool = False) -> str:
    """(Experiment, not shipped.) pHash of a square around a face box (side ``context`` x the box's larger side, edges replicated).

    Whole-image hashes break under crops and pads (the content shifts); a hash of
    the face's surroundings follows the face instead (docs/validity.md measures both).
    """
    img = np.asarray(image)
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    side = context * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(int(round(side)), 1)
    h, w = img.shape[:2]
    ys = np.clip(np.arange(top, top + s), 0, h - 1)
    xs = np.clip(np.arange(left, left + s), 0, w - 1)
    patch = np.ascontiguousarray(img[ys][:, xs])
    return phash_mirror(patch) if mirrored else phash(patch)


MEM_COPIES = {
    "exact": ["orig"],
    "jpeg/rescale/roll": list(SAMPLE_VARIANTS),
    "crop/pad": [k for k in REF_VARIANTS if "mirror" not in k and k != "orig"],
    "mirrored (+crop/pad)": [k for k in REF_VARIANTS if "mirror" in k],
}


def hashes(half: Half, kind: str) -> dict[tuple[int, str], str]:
    """Hash of every (tile, variant) of the half: 'image' (stored whole-image pHash) or 'face' (face-crop pHash)."""
    out = {}
    for a in half.tiles_all:
        for k in tuple(REF_VARIANTS) + tuple(SAMPLE_VARIANTS):
            m = half.store.get(a, k).m
            if kind == "image":
                out[(a, k)] = m.phash
            elif m.face_box is not None:
                out[(a, k)] = face_phash(half.store.image(a, k), m.face_box)
    return out


def reference_hashes(half: Half, kind: str) -> dict[int, list[str]]:
    """Each character's training image (its original) hashed as is and mirrored."""
    out = {}
    for a in half.tiles_all:
        m = half.store.get(a, "orig").m
        im = half.store.image(a, "orig")
        if kind == "image":
            out[a] = [m.phash, phash_mirror(im)]
        else:
            out[a] = [face_phash(im, m.face_box), face_phash(im, m.face_box, mirrored=True)] if m.face_box else []
    return out


def memorisation(half: Half, kind: str, thresholds=(8, 10, 12, 14)) -> dict[str, list[float]]:
    """Per-image flag rates (a copy of character A's image within T bits of A's training image) per threshold T."""
    hs, refs = hashes(half, kind), reference_hashes(half, kind)

    def flagged(h: str | None, ref: list[str], t: int) -> bool:
        return h is not None and any(hamming(h, r) <= t for r in ref)

    out = {}
    for label, keys in MEM_COPIES.items():
        out[f"copies: {label}"] = [float(np.mean([flagged(hs.get((a, k)), refs[a], t) for a in half.tiles_all for k in keys])) for t in thresholds]
    keys = tuple(REF_VARIANTS) + tuple(SAMPLE_VARIANTS)
    out["other characters (any variant)"] = [
        float(np.mean([flagged(hs.get((b, k)), refs[a], t) for a in half.tiles_all for b in half.tiles_all if b != a for k in keys]))
        for t in thresholds
    ]
    return out


def hamming_distribution(half: Half) -> tuple[np.ndarray, np.ndarray]:
    ref_hash = {a: half.store.get(a, "orig").m.phash for a in half.tiles_all}
    non_mirror = [k for k in tuple(REF_VARIANTS) + tuple(SAMPLE_VARIANTS) if "mirror" not in k]
    same = np.array([hamming(half.store.get(a, k).m.phash, ref_hash[a]) for a in half.tiles_all for k in non_mirror])
    other = np.array([hamming(half.store.get(b, "orig").m.phash, ref_hash[a]) for a in half.tiles_all for b in half.tiles_all if b != a])
    return same, other


# --- main ----------------------------------------------------------------------------------------------
def load_tiles(grid_path: Path) -> list[np.ndarray]:
    from kohya_ext.images import load_image

    g = load_image(grid_path)
    return [g[r : r + TILE, c : c + TILE].copy() for r in range(0, g.shape[0], TILE) for c in range(0, g.shape[1], TILE)]


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
    wanted = [(t, k) for t in range(n) for k in tuple(REF_VARIANTS) + tuple(SAMPLE_VARIANTS)]
    wanted += [(t, f"{e}/{v}") for t in usable for e in [f"warp:{w}" for w in WARPS] + ["recolor:hair", "recolor:eyes"] for v in EDIT_SAMPLE_VARIANTS]
    store.ensure(wanted)
    halves = {}
    for name, parity in (("tune (even tiles)", 0), ("report (odd tiles)", 1)):
        h = Half(name, [t for t in usable if t % 2 == parity], store)
        h.tiles_all = [t for t in range(n) if t % 2 == parity]
        halves[name] = h
    tune, rep = halves["tune (even tiles)"], halves["report (odd tiles)"]
    print(f"# kohya-ext metric validity (nvxs)\n\n{n} portraits, {len(usable)} with a usable face; "
          f"tune = {len(tune.chars)} characters (even tiles), report = {len(rep.chars)} (odd tiles).\n")

    # 1. per-ratio noise: within one character under benign variation vs across characters
    print("## Ratio noise (tune half): within-character std over 16 benign variants vs across-character std\n")
    print("| ratio | within | across | across / within |\n|---|---|---|---|")
    noise = noise_table(tune)
    for name, (wi, ac) in noise.items():
        print(f"| {name} | {wi:.4f} | {ac:.4f} | {ac / wi:.2f} |")
    snr = np.array([ac / wi for wi, ac in noise.values()])
    snr_w = tuple(float(v) for v in np.round(snr / snr.max(), 2))
    snr2_w = tuple(float(v) for v in np.round((snr / snr.max()) ** 2, 2))
    print(f"\nSNR weights (across/within, max 1): {dict(zip(NVXS_RATIOS, snr_w))}")

    # 2. candidates on the tune half
    prod = Production(store.identity)
    cands = candidates()
    cands += [Formula("SNR weights", weights=snr_w), Formula("SNR^2 weights", weights=snr2_w)]
    cands += [Formula(f"v1 + colour w={c} ({src})", weights=V1_WEIGHTS, color=c, color_src=src) for c in (0.5, 1.0, 2.0) for src in ("regions", "nvxs")]
    cands += [Formula(f"SNR weights + colour w={c} floor {fl}", weights=snr_w, color=c, color_floor=fl) for c in (0.5, 1.0) for fl in (5.0, 8.0, 12.0)]
    print("\n## Candidates (tune half)\n")
    print("| formula | AUC n=2 | AUC n=4 | eyes ±10% n=4 | chin ±10% n=4 | mouth ±10% n=4 | hair recolour n=4 | iris recolour n=4 |\n|---|---|---|---|---|---|---|---|")
    for f in cands + [prod]:
        pw = {k: np.mean([edit_power(tune, f, f"warp:{k}_{s}%", 4) for s in ("-10", "+10")]) for k in ("eyes", "chin", "mouth")}
        print(f"| {f.name} | {auc(tune, f, 2):.3f} | {auc(tune, f, 4):.3f} | {pw['eyes']:.2f} | {pw['chin']:.2f} | {pw['mouth']:.2f} | {edit_power(tune, f, 'recolor:hair', 4):.2f} | {edit_power(tune, f, 'recolor:eyes', 4):.2f} |")

    # 3. the shipped formula on both halves
    geom = Formula("geometry only (shipped weights)", weights=tuple(BACKEND_RATIO_WEIGHTS["nvxs"][r] for r in NVXS_RATIOS))
    for h in (tune, rep):
        print(f"\n## Shipped score, {h.name}\n")
        print("| n per side | AUC shipped | AUC shipped weights, geometry only | AUC v1 (geometry only) |\n|---|---|---|---|")
        for k in (2, 4, 8):
            print(f"| {k} | {auc(h, prod, k):.3f} | {auc(h, geom, k):.3f} | {auc(h, cands[0], k):.3f} |")
        print("\n| edit | power n=2 | power n=4 | eye dist px % | mouth-chin px % | box side % | " + " | ".join(r.replace("_ratio", "") + " %" for r in NVXS_RATIOS) + " |")
        print("|---|---|---|---|---|---|" + "---|" * len(NVXS_RATIOS))
        for e in [f"warp:{w}" for w in WARPS] + ["recolor:hair", "recolor:eyes"]:
            mv = ratio_moves(h, e)
            px = point_moves(h, e)
            print(f"| {e.split(':')[1]} | {edit_power(h, prod, e, 2):.2f} | {edit_power(h, prod, e, 4):.2f} | {px[0]:+.1f} | {px[1]:+.1f} | {px[2]:+.1f} | " + " | ".join(f"{mv[r]:+.1f}" for r in NVXS_RATIOS) + " |")
        print("\n| benign variation | detected | worst |%| | worst |sd| | " + " | ".join(r.replace("_ratio", "") for r in NVXS_RATIOS) + " |")
        print("|---|---|---|---|" + "---|" * len(NVXS_RATIOS))
        for v in tuple(REF_VARIANTS)[1:] + tuple(SAMPLE_VARIANTS):
            inv, rate = invariance(h, v)
            wp = max(abs(a) for a, _ in inv.values())
            wz = max(abs(b) for _, b in inv.values())
            print(f"| {v} | {rate:.2f} | {wp:.1f} | {wz:.2f} | " + " | ".join(f"{a:+.1f}% / {b:+.2f}" for a, b in inv.values()) + " |")
        same, other = hamming_distribution(h)
        print(f"\nphash Hamming bits: copies (non-mirrored) median {np.median(same):.0f}, 95th pct {np.percentile(same, 95):.0f}, max {same.max()}; "
              f"other characters min {other.min()}, 5th pct {np.percentile(other, 5):.0f}, median {np.median(other):.0f}\n")
        for kind in ("image", "face"):
            print(f"| memorisation flag, {kind} pHash (+mirror) | <=8 bits | <=10 | <=12 | <=14 |\n|---|---|---|---|---|")
            for k, v in memorisation(h, kind).items():
                print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
            print()
    print(f"\n{store.detected} images detected this run (the rest from {store.path}); {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
