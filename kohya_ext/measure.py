"""Images -> per-image measurements: the primary face, its landmarks, its ratios, a perceptual hash.

This is where a backend's raw faces become the numbers the statistics use, and
where every image that cannot contribute is counted with its reason instead of
silently dropped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .backends.base import Backend, Face, ImageFaces
from .images import fit_for_detection, load_image
from .errors import ImageError
from .color import eye_centers, face_histogram, measure_colors
from .phash import copy_hashes, phash, phash_mirror
from .placed_copy import placed_thumb
from .ratios import RATIO_NAMES, ExclusionRules, compute_ratios

logger = logging.getLogger(__name__)

#: Bump when what a measurement holds changes (keys the on-disk cache; references of an older version are refused).
#: 4: copy-gate hashes of the drawn area and its windows, 256-bit face hashes, hair colour histogram (issue 9).
#: 5: the drawn area or the whole image kept small for the moved-onto-another-background search (kohya_ext.placed_copy).
MEASUREMENT_VERSION = 5

#: Status of one image. Only "ok" images contribute ratios.
STATUSES = ("ok", "unreadable", "no_face", "face_too_small", "face_too_turned", "degenerate_landmarks")
_REASON_TO_STATUS = {
    "face too small": "face_too_small",
    "face too turned": "face_too_turned",
    "degenerate landmarks": "degenerate_landmarks",
}


@dataclass
class ImageMeasurement:
    """What one image contributes. ``ratios`` maps ratio name -> value, or None when excluded."""

    name: str
    status: str
    error: str | None = None
    n_faces: int = 0
    face_score: float | None = None
    face_box: list[float] | None = None
    points: list[list[float]] | None = None
    point_scores: list[float] | None = None
    mean_point_score: float | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)
    #: 64-bit pHash of the whole image and of its mirror (not used by the copy gate since measurement version 4)
    phash: str | None = None
    phash_mirror: str | None = None
    #: copy gate (kohya_ext.phash.copy_hashes, GATE_BITS): hash of the drawn area (a plain canvas trimmed) and of
    #: its mirror, and of the drawn area's kohya_ext.phash.WINDOWS (crops and pads of a copy meet one of them)
    drawn_hash: str | None = None
    drawn_hash_mirror: str | None = None
    window_hashes: list[str] | None = None
    #: hash of a window placed by the eyes (kohya_ext.phash.face_window), and of its mirror:
    #: follows the face when a copy is cropped, padded or moved onto another background (docs/validity.md)
    face_phash: str | None = None
    face_phash_mirror: str | None = None
    #: the same window hashed at kohya_ext.phash.FACE_REFERENCE_SCALES (+ mirrors): used when this image is a reference
    face_phash_scaled: list[str] | None = None
    #: kohya_ext.placed_copy.placed_thumb: the drawn area (on a plain canvas) or the whole image, small
    placed: dict | None = None
    colors: dict[str, list[float]] | None = None
    #: colour histogram of the hair region (kohya_ext.color.face_histogram, HIST_BINS bins, sums to 1)
    hair_hist: list[float] | None = None
    width: int = 0
    height: int = 0
    #: [width, height] the detector saw when the image was over kohya_ext.images.MAX_DETECT_PIXELS (None: full size)
    detected_size: list[int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageMeasurement":
        """A measurement read back from a file (reference, cache); ValueError naming the first
        field that is missing, of the wrong type or not finite."""
        if not isinstance(d, dict):
            raise ValueError(f"an image entry is {type(d).__name__}, not an object")
        for key, kind in _FIELD_KINDS.items():
            if key in d and not _is_kind(d[key], kind):
                raise ValueError(f"field {key!r} = {_short_repr(d[key])} is not {kind.replace('?', ' or null')}")
        for key in ("name", "status"):
            if key not in d:
                raise ValueError(f"field {key!r} is missing")
        if d["status"] not in STATUSES:
            raise ValueError(f"field 'status' = {_short_repr(d['status'])} is not one of {', '.join(STATUSES)}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _short_repr(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _hex(v) -> bool:
    return isinstance(v, str) and len(v) <= 256 and all(c in "0123456789abcdefABCDEF" for c in v)


def _placed(v) -> bool:
    """kohya_ext.placed_copy.placed_thumb's dict: base64 PNG thumbnails (bounded) and the drawn share in (0, 1]."""
    if not isinstance(v, dict) or not v or any(k not in ("whole", "drawn", "mask", "share") for k in v):
        return False
    if any(not isinstance(v[k], str) or len(v[k]) > 65536 for k in ("whole", "drawn", "mask") if k in v):
        return False
    return "whole" in v or ({"drawn", "mask", "share"} <= set(v) and _num(v["share"]) and 0 < v["share"] <= 1)


#: what each field of a stored measurement must hold ("?": or null); checked by ImageMeasurement.from_dict
_KINDS: dict[str, Callable[[object], bool]] = {
    "text": lambda v: isinstance(v, str),
    "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31,
    "number": _num,
    "numbers": lambda v: isinstance(v, list) and len(v) <= 4096 and all(_num(x) for x in v),
    "a box": lambda v: isinstance(v, list) and len(v) == 4 and all(_num(x) for x in v),
    "points": lambda v: isinstance(v, list) and len(v) <= 256 and all(isinstance(p, list) and len(p) == 2 and all(_num(x) for x in p) for p in v),
    "ratios": lambda v: isinstance(v, dict) and all(k in RATIO_NAMES and (x is None or _num(x)) for k, x in v.items()),
    "a hash": _hex,
    "hashes": lambda v: isinstance(v, list) and len(v) <= 64 and all(_hex(x) for x in v),
    "colours": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, list) and len(x) <= 16
                                                     and all(_num(c) for c in x) for k, x in v.items()),
    "a thumbnail": _placed,
    "a size": lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v),
}
_FIELD_KINDS = {
    "name": "text", "status": "text", "error": "text?", "n_faces": "count", "face_score": "number?", "face_box": "a box?",
    "points": "points?", "point_scores": "numbers?", "mean_point_score": "number?", "ratios": "ratios",
    "phash": "a hash?", "phash_mirror": "a hash?", "drawn_hash": "a hash?", "drawn_hash_mirror": "a hash?",
    "window_hashes": "hashes?", "face_phash": "a hash?", "face_phash_mirror": "a hash?", "face_phash_scaled": "hashes?",
    "placed": "a thumbnail?", "colors": "colours?", "hair_hist": "numbers?", "width": "count", "height": "count",
    "detected_size": "a size?",
}


def _is_kind(v, kind: str) -> bool:
    if kind.endswith("?"):
        return v is None or _KINDS[kind[:-1]](v)
    return _KINDS[kind](v)


def measure_faces(
    backend_name: str,
    names: Sequence[str],
    images: Sequence[np.ndarray],
    detections: Sequence[ImageFaces],
    rules: ExclusionRules = ExclusionRules(),
    min_face_score: float = 0.0,
) -> list[ImageMeasurement]:
    """Turn detections into measurements: primary face, ratios, exclusions, hashes."""
    out: list[ImageMeasurement] = []
    primaries: list[tuple[int, Face]] = []
    for i, (name, img, det) in enumerate(zip(names, images, detections)):
        h, w = img.shape[:2]
        m = ImageMeasurement(
            name=name, status="no_face", n_faces=len(det.faces), phash=phash(img), phash_mirror=phash_mirror(img), width=w, height=h
        )
        face = det.primary(min_face_score)
        eyes = eye_centers(backend_name, np.asarray(face.points)) if face is not None else None
        ch = copy_hashes(img, eyes)
        m.drawn_hash, m.drawn_hash_mirror, m.window_hashes = ch["drawn"], ch["drawn_mirror"], ch["windows"]
        m.face_phash, m.face_phash_mirror, m.face_phash_scaled = ch["face"], ch["face_mirror"], ch["face_scaled"]
        m.placed = placed_thumb(img)
        if face is not None:
            primaries.append((len(out), face))
            m.face_score = float(face.score)
            m.face_box = [float(v) for v in face.box[:4]]
            m.points = np.asarray(face.points, dtype=float).round(2).tolist()
            m.point_scores = np.asarray(face.point_scores, dtype=float).round(4).tolist()
            m.mean_point_score = float(np.mean(face.point_scores))
            m.colors = measure_colors(backend_name, img, np.asarray(face.points))
            m.hair_hist = (face_histogram(img, *eyes, regions=("hair",)) or {}).get("hair")
        out.append(m)
    if primaries:
        faces = [f for _, f in primaries]
        batch = compute_ratios(
            backend_name,
            np.stack([f.points for f in faces]),
            np.stack([f.point_scores for f in faces]),
            np.stack([f.box[:4] for f in faces]),
            rules,
        )
        for row, (idx, _) in enumerate(primaries):
            m = out[idx]
            reason = batch.face_excluded[row]
            m.status = "ok" if reason is None else _REASON_TO_STATUS[reason]
            m.ratios = {
                name: (float(batch.values[row, j]) if batch.valid[row, j] else None) for j, name in enumerate(RATIO_NAMES)
            }
    return out


def measure_arrays(
    backend: Backend,
    images: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    rules: ExclusionRules = ExclusionRules(),
) -> list[ImageMeasurement]:
    """Measure in-memory RGB uint8 images (e.g. samples rendered during training).

    Every image passes :func:`kohya_ext.images.fit_for_detection` first: one that no detector
    can use becomes ``status="unreadable"`` with its reason; one larger than detection needs is
    measured downscaled, its points and box mapped back to its own pixels.
    """
    names = list(names) if names is not None else [f"image_{i:04d}" for i in range(len(images))]
    results: list[ImageMeasurement | None] = [None] * len(images)
    fitted: list[np.ndarray] = []
    kept: list[int] = []
    for i, img in enumerate(images):
        try:
            fitted.append(fit_for_detection(img))
            kept.append(i)
        except ImageError as e:
            results[i] = ImageMeasurement(name=names[i], status="unreadable", error=f"{names[i]}: {e}")
    detections = backend.detect(fitted) if fitted else []
    for i, small, m in zip(kept, fitted, measure_faces(backend.name, [names[i] for i in kept], fitted, detections, rules)):
        if small is not images[i]:
            _to_original_pixels(m, images[i].shape[1], images[i].shape[0])
        results[i] = m
    return results  # type: ignore[return-value]


def _to_original_pixels(m: ImageMeasurement, width: int, height: int) -> None:
    """Map a measurement made on a downscaled copy back onto the image's own pixels (ratios are scale-free)."""
    sx, sy = width / m.width, height / m.height
    m.detected_size = [m.width, m.height]
    m.width, m.height = width, height
    if m.face_box is not None:
        m.face_box = [round(v * s, 2) for v, s in zip(m.face_box, (sx, sy, sx, sy))]
    if m.points is not None:
        m.points = [[round(x * sx, 2), round(y * sy, 2)] for x, y in m.points]


def measure_files(
    paths: Sequence[Path],
    backend_factory: Callable[[], Backend],
    backend_name: str,
    cache=None,
    rules: ExclusionRules = ExclusionRules(),
    batch_size: int = 16,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> list[ImageMeasurement]:
    """Measure image files, reading cached results first; the backend is built only on a cache miss.

    Unreadable files become ``status="unreadable"`` measurements naming the reason.
    """
    names = list(names) if names is not None else [str(p) for p in paths]
    results: list[ImageMeasurement | None] = [None] * len(paths)
    keys: list[str | None] = [None] * len(paths)
    todo: list[int] = []
    for i, p in enumerate(paths):
        if cache is not None:
            keys[i] = cache.file_key(p)
            hit = cache.get(keys[i]) if keys[i] else None
            if hit is not None:
                hit.name = names[i]
                results[i] = hit
                continue
        todo.append(i)
    if todo:
        backend = backend_factory()
        bar = tqdm(total=len(todo), desc=f"measuring faces ({backend_name})", unit="img", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            ok_idx, ok_imgs = [], []
            for i in chunk:
                try:
                    ok_imgs.append(load_image(paths[i]))
                    ok_idx.append(i)
                except ImageError as e:
                    results[i] = ImageMeasurement(name=names[i], status="unreadable", error=str(e))
            if ok_imgs:
                measured = measure_arrays(backend, ok_imgs, [names[i] for i in ok_idx], rules)
                for i, m in zip(ok_idx, measured):
                    results[i] = m
            for i in chunk:
                if cache is not None and keys[i] and results[i].status != "unreadable":
                    cache.put(keys[i], results[i])
            bar.update(len(chunk))
        bar.close()
        if cache is not None:
            cache.flush()
    return [r for r in results if r is not None]
