"""What the ComfyUI nodes do, without ComfyUI: tensors in, the scorer's objects and tensors out.

Everything here works on plain torch tensors in ComfyUI's IMAGE layout ([B, H, W, C] float in 0..1)
so it can be tested and benchmarked without a ComfyUI installation; kohya_ext.comfy.nodes wraps it in
ComfyUI's node API. Built references and measured batches are kept in memory (reference_from_path,
measure_tensor say for how long). The set score is kohya_ext.comparison.compare on the batch (the
same number as ``kohya-ext score`` on the same pixels); per-image scores are kohya_ext.image_score.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..backends import BACKEND_NAMES, BackendSpec
from ..comparison import compare
from ..datasets import ImageGroup
from ..errors import KohyaExtError
from ..image_score import ImageScore, image_scores
from ..images import MIN_IMAGE_SIDE
from ..measure import ImageMeasurement, measure_arrays, measure_files
from ..ratios import ExclusionRules
from ..reference import ReferenceStats
from ..report import ConsistencyReport
from . import folders

#: progress(done, total): called as work advances (ComfyUI's progress bar in the nodes)
Progress = Callable[[int, int], None]
#: images measured per backend call: a progress step, and a batch for hrnet
CHUNK = 8
#: file paths measured per step while a reference is built (each step also flushes the cache)
REFERENCE_CHUNK = 32


def _noop(done: int, total: int) -> None:
    pass


# -- tensors <-> arrays ---------------------------------------------------------------------------

def tensor_to_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE -> RGB uint8 arrays, one per batch item.

    Accepts [B, H, W, C] (or one [H, W, C] image) with C = 1 (grey), 2 (grey +
    alpha), 3 (RGB) or 4 (RGBA); floats in 0..1 (NaN -> 0, clipped) or uint8.
    Alpha is composited on white, as the CLI does for image files with
    transparency. Floats are rounded to the nearest of 256 levels, so an image
    that ComfyUI's LoadImage made from an 8-bit file (value / 255) comes back
    bit-exact: the score is the CLI's on that file. Converted one image at a
    time in numpy (cache-sized work; torch's threaded ops cost more than the
    work on small batches); the input is never written to.
    """
    if not isinstance(images, torch.Tensor):
        raise KohyaExtError(f"expected an IMAGE tensor [B, H, W, C], got {type(images).__name__}")
    t = images.detach()
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] not in (1, 2, 3, 4):
        raise KohyaExtError(f"expected an IMAGE tensor [B, H, W, C] with C = 1..4 channels, got shape {list(images.shape)}")
    if t.shape[0] == 0:
        return []
    t = t.cpu()
    c = t.shape[-1]
    if t.dtype == torch.uint8:
        if c == 3:
            return [np.ascontiguousarray(a) for a in t.numpy()]
        t = t.to(torch.float32) / 255.0
    elif t.dtype != torch.float32:
        t = t.to(torch.float32)  # half / bfloat16 / float64 IMAGEs
    batch = t.numpy()
    out = []
    for x in batch:  # a view: never modified
        if c in (2, 4):
            x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
            alpha = x[..., -1:]
            y = x[..., :-1] * alpha + (1.0 - alpha)
            y *= 255.0
        else:
            y = x * np.float32(255.0)
            np.nan_to_num(y, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        y += 0.5
        np.clip(y, 0.0, 255.0, out=y)
        u8 = y.astype(np.uint8)
        out.append(np.ascontiguousarray(np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 else u8))
    return out


def arrays_to_tensor(images: Sequence[np.ndarray | Image.Image], height: int = 64, width: int = 64) -> torch.Tensor:
    """RGB uint8 arrays or PIL images of one size -> ComfyUI IMAGE [B, H, W, 3] float32 in 0..1 (value / 255, as LoadImage).

    An empty list gives a [0, height, width, 3] tensor.
    """
    if not images:
        return torch.zeros((0, height, width, 3), dtype=torch.float32)
    first = np.asarray(images[0])
    out = np.empty((len(images), *first.shape[:2], 3), dtype=np.float32)
    for i, im in enumerate(images):
        a = np.asarray(im.convert("RGB") if isinstance(im, Image.Image) and im.mode != "RGB" else im, dtype=np.uint8)
        if a.shape[:2] != first.shape[:2]:
            raise KohyaExtError(f"images of one IMAGE batch must share one size: {a.shape[1]}x{a.shape[0]} vs {first.shape[1]}x{first.shape[0]}")
        out[i] = a
        out[i] /= np.float32(255.0)
    return torch.from_numpy(out)


def select(images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Batch items ``indices`` of an IMAGE (an empty selection keeps H, W, C with B = 0)."""
    t = images if images.ndim == 4 else images.unsqueeze(0)
    return t[list(indices)] if indices else t[:0]


# -- backends and references ----------------------------------------------------------------------

_LOCK = threading.RLock()
_SPECS: dict[tuple, BackendSpec] = {}


def backend_spec(backend: str = "auto", device: str = "auto", face_detector: str | None = None,
                 landmark_weights: str | None = None, detector_weights: str | None = None) -> BackendSpec:
    """One BackendSpec (and so one loaded model) per choice, kept for the life of the process."""
    if backend not in BACKEND_NAMES:
        raise KohyaExtError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_NAMES)}")
    key = (backend, device or "auto", face_detector or None, landmark_weights or None, detector_weights or None)
    with _LOCK:
        spec = _SPECS.get(key)
        if spec is None:
            spec = BackendSpec(backend, device=device or "auto", face_detector=face_detector or None,
                               landmark_weights=landmark_weights or None, detector_weights=detector_weights or None)
            _SPECS[key] = spec
        return spec


@dataclass
class CharacterReference:
    """The CHARACTER_REFERENCE a ComfyUI workflow passes around: reference statistics + the backend to measure with."""

    stats: ReferenceStats
    spec: BackendSpec
    rules: ExclusionRules
    source: str

    @property
    def identity(self) -> dict:
        return self.stats.backend

    def describe(self) -> str:
        c = self.stats.counts
        return (f"reference {self.stats.name!r} from {self.source}: {c['images']} images, {c['usable']} usable faces, "
                f"backend {self.stats.backend_name}")

    def __repr__(self) -> str:  # ComfyUI prints inputs with str() in error reports
        return f"<CharacterReference {self.describe()}>"


def resolve_source(path: str, roots: Sequence[Path]) -> Path:
    """A reference path as the user typed it (quotes trimmed), relative to one of ``roots``: its real path (folders.resolve)."""
    text = (path or "").strip().strip('"').strip("'")
    if not text:
        raise KohyaExtError("no reference path given: enter a folder, a kohya dataset config .toml or a ref.json "
                            "(relative to ComfyUI's input folder; docs/comfyui.md, Folder rules)")
    return folders.resolve(text, roots)


def _image_groups(path: Path, roots: Sequence[Path] | None) -> list[ImageGroup]:
    """The source's image groups: confined and capped with ``roots`` (the nodes), as the CLI's without."""
    from ..datasets import resolve_image_groups

    return resolve_image_groups(path) if roots is None else folders.image_groups(path, roots)


def source_fingerprint(path: Path, roots: Sequence[Path] | None = None) -> str:
    """Changes when the reference's files change (their paths, sizes and mtimes); errors fingerprint as themselves.

    ``roots``: confine and cap the walk (folders.image_groups); None walks as the CLI does.
    """
    from ..scorer import is_reference_file

    try:
        files = [path] if is_reference_file(path) else [p for g in _image_groups(path, roots) for p in g.paths]
        if path.is_file():
            files.append(path)
        stats = []
        for f in files:
            st = os.stat(f)
            stats.append((str(Path(f).resolve()), st.st_size, st.st_mtime_ns))
        return json.dumps(sorted(set(stats)))
    except (KohyaExtError, OSError) as e:
        return f"error: {e}"


_REFERENCES: "OrderedDict[tuple, CharacterReference]" = OrderedDict()
_MAX_REFERENCES = 8


def reference_from_path(
    path: str | os.PathLike,
    spec: BackendSpec,
    rules: ExclusionRules = ExclusionRules(),
    use_cache: bool = True,
    cache_dir: Path | None = None,
    progress: Progress = _noop,
    roots: Sequence[Path] | None = None,
) -> CharacterReference:
    """A reference from what the CLI accepts: a ref.json, an image folder, a kohya train_data_dir or dataset config.

    Images are measured through the CLI's measurement cache; the built reference is
    kept in memory while the source's files are unchanged. With ``roots`` (the node),
    ``path`` and every folder it names must lie inside them and walks are capped,
    all checked before any image is read (kohya_ext.comfy.folders); None reads as the CLI.
    """
    from ..scorer import backend_for_reference, is_reference_file

    src = Path(path)
    if roots is not None:
        src = folders.resolve(str(src), roots)  # a path from resolve_source passes unchanged
    elif not src.exists():
        raise KohyaExtError(f"{src}: no such file or folder")
    spec = backend_for_reference(src, spec)
    key = (str(src.resolve()), spec.requested, spec.device, tuple(sorted(spec.hrnet_options.items())),
           json.dumps(rules.as_dict(), sort_keys=True), use_cache, str(cache_dir), source_fingerprint(src, roots),
           tuple(map(str, roots or ())))
    with _LOCK:
        hit = _REFERENCES.get(key)
        if hit is not None:
            _REFERENCES.move_to_end(key)
            progress(1, 1)
            return hit
    if is_reference_file(src):
        stats = ReferenceStats.load(src)
        stats.check_compatible(spec.identity(), rules.as_dict())
    else:
        groups = _image_groups(src, roots)
        paths = [p for g in groups for p in g.paths]
        sources = [s for g in groups for s in g.sources]
        name = groups[0].name if len(groups) == 1 else (src.stem if src.is_file() else src.name)
        identity = spec.identity()
        from ..cache import MeasurementCache

        cache = MeasurementCache(identity, rules.as_dict(), cache_dir) if use_cache else None
        measurements: list[ImageMeasurement] = []
        progress(0, len(paths))
        for start in range(0, len(paths), REFERENCE_CHUNK):
            chunk = paths[start : start + REFERENCE_CHUNK]
            measurements += measure_files(chunk, spec.create, identity["backend"], cache=cache, rules=rules, progress=False)
            progress(len(measurements), len(paths))
        stats = ReferenceStats(
            backend=identity, rules=rules.as_dict(), measurements=measurements, name=name, sources=sources,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
    stats.check_usable()
    ref = CharacterReference(stats, spec, rules, str(src) if roots is None else folders.shown(src, roots))
    with _LOCK:
        _REFERENCES[key] = ref
        while len(_REFERENCES) > _MAX_REFERENCES:
            _REFERENCES.popitem(last=False)
    return ref


def reference_from_images(
    images: torch.Tensor | Sequence[torch.Tensor],
    spec: BackendSpec,
    name: str = "reference",
    rules: ExclusionRules = ExclusionRules(),
    progress: Progress = _noop,
) -> CharacterReference:
    """A reference measured from an IMAGE batch or list of batches (e.g. approved generations, or loaded training images)."""
    arrays = batch_arrays(as_batches(images))
    if not arrays:
        raise KohyaExtError("the reference image batch is empty: connect images that show the character's face")
    spec.name  # resolve auto now (and say which), not in the middle of a measurement
    measurements = measure_tensor(images, spec, rules, arrays=arrays, progress=progress)
    stats = ReferenceStats(
        backend=spec.identity(), rules=rules.as_dict(), measurements=[ImageMeasurement.from_dict(m.to_dict()) for m in measurements],
        name=name or "reference", sources=["IMAGE batch"],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    stats.check_usable()
    return CharacterReference(stats, spec, rules, f"{len(arrays)} images from the workflow")


# -- measuring batches ----------------------------------------------------------------------------

_MEASURED: "OrderedDict[tuple, list[ImageMeasurement]]" = OrderedDict()
_MAX_MEASURED = 8


def pixels_digest(arrays: Sequence[np.ndarray]) -> str:
    """Content hash of a batch's 8-bit pixels (and shapes): the key of the measurement memo."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(repr(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:32]


def measure_tensor(
    images: torch.Tensor | Sequence[torch.Tensor],
    spec: BackendSpec,
    rules: ExclusionRules = ExclusionRules(),
    arrays: list[np.ndarray] | None = None,
    progress: Progress = _noop,
) -> list[ImageMeasurement]:
    """Measure every image of an IMAGE batch or list of batches (names ``image_0000``...), once per pixel content and backend.

    The same pixels (ComfyUI hands one node output to every node it feeds) are
    measured once: the consistency node and the gate share the work. The memo is
    keyed by a hash of the 8-bit pixels, not the tensor object: ComfyUI runs nodes
    in inference mode, where tensors carry no version counter to notice edits by.
    Images smaller than the CLI's minimum side count as unreadable, as such files do.
    """
    if arrays is None:
        arrays = batch_arrays(as_batches(images))
    key = (pixels_digest(arrays), json.dumps(spec.identity(), sort_keys=True), json.dumps(rules.as_dict(), sort_keys=True))
    with _LOCK:
        hit = _MEASURED.get(key)
        if hit is not None:
            _MEASURED.move_to_end(key)
            progress(1, 1)
            return hit
    names = [f"image_{i:04d}" for i in range(len(arrays))]
    out: list[ImageMeasurement | None] = [None] * len(arrays)
    todo = []
    for i, a in enumerate(arrays):
        h, w = a.shape[:2]
        if min(h, w) < MIN_IMAGE_SIDE:
            out[i] = ImageMeasurement(name=names[i], status="unreadable", width=w, height=h,
                                      error=f"image is {w}x{h} px, too small to hold a face (need >= {MIN_IMAGE_SIDE} px)")
        else:
            todo.append(i)
    progress(0, len(arrays))
    done = len(arrays) - len(todo)
    if todo:
        backend = spec.create()
        for start in range(0, len(todo), CHUNK):
            idx = todo[start : start + CHUNK]
            for i, m in zip(idx, measure_arrays(backend, [arrays[i] for i in idx], [names[i] for i in idx], rules)):
                out[i] = m
            done += len(idx)
            progress(done, len(arrays))
    result = [m for m in out if m is not None]
    with _LOCK:
        _MEASURED[key] = result
        while len(_MEASURED) > _MAX_MEASURED:
            _MEASURED.popitem(last=False)
    return result


# -- the nodes' work ------------------------------------------------------------------------------
#
# ComfyUI passes an IMAGE either as one batch or, after list-producing nodes (e.g. "Load Image
# Dataset from Folder"), as a list of batches. The set score is over ALL images either way, so the
# nodes take the list (is_input_list) and these functions accept a tensor or a list of tensors;
# indices count over the concatenation, in order.

def as_batches(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One IMAGE or a list of them -> a list of [B, H, W, C] tensors (sizes may differ between items)."""
    items = [images] if isinstance(images, torch.Tensor) else list(images) if isinstance(images, (list, tuple)) else [images]
    for t in items:
        if not isinstance(t, torch.Tensor):
            raise KohyaExtError(f"expected an IMAGE tensor [B, H, W, C], got {type(t).__name__}")
    return [t.unsqueeze(0) if t.ndim == 3 else t for t in items]


def batch_arrays(batches: list[torch.Tensor]) -> list[np.ndarray]:
    return [a for t in batches for a in tensor_to_arrays(t)]


def split_batches(batches: list[torch.Tensor], indices: Sequence[int]) -> list[torch.Tensor]:
    """The images at global ``indices``, as one tensor per input item that has any (input order kept)."""
    want = set(indices)
    out, offset = [], 0
    for t in batches:
        local = [j for j in range(t.shape[0]) if offset + j in want]
        if local:
            out.append(t[local])
        offset += t.shape[0]
    return out


@dataclass
class ConsistencyResult:
    report: ConsistencyReport
    scores: list[ImageScore]
    text: str
    #: one overlay batch per input item (None when not drawn)
    overlays: list[torch.Tensor] | None

    @property
    def score(self) -> float:
        return float(self.report.score)

    def per_image_json(self) -> str:
        return json.dumps([s.to_dict() for s in self.scores], ensure_ascii=False)


def consistency(
    reference: CharacterReference,
    images: torch.Tensor | Sequence[torch.Tensor],
    lang: str = "en",
    overlays: bool = True,
    progress: Progress = _noop,
) -> ConsistencyResult:
    """Set score, report, per-image scores and (optionally) overlays of all images against a reference."""
    batches = as_batches(images)
    arrays = batch_arrays(batches)
    ms = measure_tensor(batches, reference.spec, reference.rules, arrays=arrays, progress=progress)
    report = compare(reference.stats, ms, reference.spec.identity())
    scores = image_scores(reference.stats, ms)
    text = report.format_text(lang)
    ov = None
    if overlays:
        ov, k = [], 0
        for t in batches:
            n = t.shape[0]
            ov.append(draw_overlays(arrays[k : k + n], ms[k : k + n], scores[k : k + n], t))
            k += n
    return ConsistencyResult(report, scores, text, ov)


def draw_overlays(arrays: list[np.ndarray], measurements: list[ImageMeasurement], scores: list[ImageScore],
                  like: torch.Tensor | None = None) -> torch.Tensor:
    """Images with face boxes, landmarks, status and per-image score drawn (kohya_ext.overlay), as one IMAGE."""
    from ..overlay import draw_overlay

    pics = []
    for a, m, s in zip(arrays, measurements, scores):
        img = Image.fromarray(a) if m.status == "unreadable" else draw_overlay(a, m)
        d = ImageDraw.Draw(img)
        label = f"image score {s.score:.2f}"
        d.rectangle([0, 16, 8 + 7 * len(label), 30], fill=(0, 0, 0))
        d.text((4, 18), label, fill=(255, 255, 255))
        pics.append(img)
    h, w = (like.shape[-3], like.shape[-2]) if like is not None and like.ndim >= 3 else (64, 64)
    return arrays_to_tensor(pics, h, w)


@dataclass
class GateResult:
    passed: list[int]
    failed: list[int]
    scores: list[ImageScore]
    threshold: float

    def verdicts(self) -> list[dict]:
        ok = set(self.passed)
        out = []
        for s in self.scores:
            d = s.to_dict()
            d["passed"] = s.index in ok
            if not d["passed"] and d["reason"] is None:
                d["reason"] = ("near-copy of a reference image" if s.near_copy and s.score >= self.threshold
                               else f"score {s.score:.3f} below threshold {self.threshold:.3f}")
            out.append(d)
        return out


def gate(
    reference: CharacterReference,
    images: torch.Tensor | Sequence[torch.Tensor],
    threshold: float,
    fail_near_copies: bool = False,
    progress: Progress = _noop,
) -> GateResult:
    """Which images pass: a usable face and per-image score >= threshold (and, if asked, not a near-copy)."""
    if not (0.0 <= float(threshold) <= 1.0):
        raise KohyaExtError(f"threshold must be between 0 and 1, got {threshold}")
    batches = as_batches(images)
    ms = measure_tensor(batches, reference.spec, reference.rules, progress=progress)
    scores = image_scores(reference.stats, ms)
    passed, failed = [], []
    for s in scores:
        ok = s.status == "ok" and s.reason is None and s.score >= threshold and not (fail_near_copies and s.near_copy)
        (passed if ok else failed).append(s.index)
    return GateResult(passed, failed, scores, float(threshold))
