"""Real-drawing benchmark data: selection, presentations, copy edits and a detection cache (bench/validity_real.py).

A folder of ``<character>/<images>`` (several genuinely different drawings per
character, e.g. github:Sytwu/Anime-Face-Recognition's ``face_dataset/``) becomes,
per character, ``refs`` reference drawings and ``new`` genuine new drawings, each
shown in several presentations, plus edited copies of the first ``copies``
reference drawings. Nothing here is tuned: it defines what is measured.

Selection (per character, deterministic): files in order of SHA-1 of their name;
one face per source picture (``<md5>.<ext>-<k>.jpg`` crops of one post count as one
source); a drawing is skipped when its 32x32 grey thumbnail correlates above
``DUPLICATE_NCC`` with one already kept (booru sites hold the same art many times:
expression variants, re-uploads, sketch/colour pairs; docs/validity.md shows examples).

Detections are cached on disk per image key and detection mode, so reruns only
re-measure (hashes, colours) from re-rendered images.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

import validity as v  # bench/validity.py: the same benign edits (the script's folder is on sys.path)
from kohya_ext.backends.base import Face, ImageFaces

#: Thumbnail correlation above which two drawings count as the same art (dataset dedupe).
DUPLICATE_NCC = 0.8
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CANVAS = 512
#: The crop is scaled to this share of the canvas width (the face ~60 % of the width).
FACE_SHARE = 0.6
PRESENTATIONS = ("tight", "white", "busy", "busy_blur")
#: Edited copies of a reference drawing (the copy gate must catch them). "exact" needs no detection.
COPY_EDITS = ("exact", "jpeg_q70", "rescale_0.75", "crop_6", "pad_6", "mirror", "new_bg")
#: Plain background colours used for "copy moved onto a different plain background".
NEW_BG_COLORS = ((236, 240, 246), (246, 238, 228), (228, 242, 232), (240, 232, 244))


def _source(name: str) -> str:
    return re.sub(r"-\d+\.[A-Za-z]+$", "", name)


def _thumb(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64).ravel()
    a = a - a.mean()
    return a / (np.linalg.norm(a) + 1e-9)


@dataclass
class Character:
    name: str
    refs: list[Path]
    new: list[Path]
    spare: list[Path]  # drawings not selected (busy backgrounds come from other characters' spares)


def select(root: Path, refs: int, new: int, spares: int = 64) -> list[Character]:
    """Characters with at least refs + new distinct drawings, sorted by name."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted((p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
        kept: list[Path] = []
        thumbs: list[np.ndarray] = []
        sources: set[str] = set()
        rest: list[Path] = []
        for p in files:
            if len(kept) >= refs + new:
                rest.append(p)
                if len(rest) >= spares:
                    break
                continue
            src = _source(p.name)
            if src in sources:
                continue
            try:
                t = _thumb(p)
            except OSError:
                continue
            if thumbs and max(float(t @ u) for u in thumbs) > DUPLICATE_NCC:
                continue
            kept.append(p)
            thumbs.append(t)
            sources.add(src)
        if len(kept) >= refs + new:
            out.append(Character(d.name, kept[:refs], kept[refs : refs + new], rest))
    return out


def halves(chars: list[Character]) -> dict[str, list[Character]]:
    """Tune = characters at even positions in name order, report = odd positions."""
    return {"tune": chars[0::2], "report": chars[1::2]}


# --- rendering ---------------------------------------------------------------------------------
def _paste(crop: np.ndarray, canvas: np.ndarray, offset=(0, 0)) -> np.ndarray:
    s = round(FACE_SHARE * CANVAS)
    p = np.asarray(Image.fromarray(crop).resize((s, s), Image.Resampling.LANCZOS))
    out = canvas.copy()
    x0 = (CANVAS - s) // 2 + offset[0]
    y0 = (CANVAS - s) // 2 + offset[1]
    out[y0 : y0 + s, x0 : x0 + s] = p
    return out


def background(path: Path, blur: bool) -> np.ndarray:
    """Another drawing, turned upside down (so its face is not detected) and scaled to the canvas; blurred or not."""
    im = Image.open(path).convert("RGB").rotate(180).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(6))
    return np.asarray(im)


def present(crop: np.ndarray, presentation: str, bg: np.ndarray | None = None) -> np.ndarray:
    if presentation == "tight":
        return crop
    if presentation == "white":
        return _paste(crop, np.full((CANVAS, CANVAS, 3), 255, np.uint8))
    return _paste(crop, bg)


def edit_copy(image: np.ndarray, crop: np.ndarray, kind: str, k: int) -> np.ndarray:
    """An edited copy of a reference image (``image``: the presented reference, ``crop``: its drawing)."""
    if kind == "exact":
        return image
    if kind == "jpeg_q70":
        return v.jpeg(image, 70)
    if kind == "rescale_0.75":
        return v.rescale(image, 0.75)
    if kind == "crop_6":  # 6 % off the left and top
        return v.crop(image, 0.06, 0.06, 0, 0)
    if kind == "pad_6":  # 6 % added on every side, edges replicated
        return v.pad(image, 0.06)
    if kind == "mirror":
        return v.mirror(image)
    if kind == "new_bg":  # the drawing moved onto a different plain background, shifted
        col = NEW_BG_COLORS[k % len(NEW_BG_COLORS)]
        return _paste(crop, np.full((CANVAS, CANVAS, 3), col, np.uint8), offset=(18, -14))
    raise ValueError(kind)


@dataclass(frozen=True)
class Key:
    presentation: str
    char: str
    file: str
    edit: str = ""  # "" = the drawing itself; else a COPY_EDITS name

    def __str__(self) -> str:
        return f"{self.presentation}|{self.char}|{self.file}|{self.edit}"


class Renderer:
    """Renders any Key of a selection (deterministic)."""

    def __init__(self, chars: list[Character], bg_ok=None):
        """bg_ok(path) -> bool keeps a spare drawing as a busy background (DetectionCache.background_ok: no face in it)."""
        self.chars = {c.name: c for c in chars}
        self.paths = {(c.name, p.name): p for c in chars for p in c.refs + c.new}
        names = [c.name for c in chars]
        # busy backgrounds: spare drawings of the next character in name order in which nvxs finds no face;
        # drawing j of a character (references first) gets background j, so no two share one while the pool lasts
        self.bg_pool = {}
        for i, n in enumerate(names):
            pool = self.chars[names[(i + 1) % len(names)]].spare
            self.bg_pool[n] = [p for p in pool if bg_ok is None or bg_ok(p)] or pool
        self.bg_index = {n: {p.name: j for j, p in enumerate(self.chars[n].refs + self.chars[n].new)} for n in names}

    def crop(self, key: Key) -> np.ndarray:
        return np.asarray(Image.open(self.paths[(key.char, key.file)]).convert("RGB"))

    def bg_path(self, key: Key) -> Path | None:
        if not key.presentation.startswith("busy"):
            return None
        pool = self.bg_pool[key.char]
        return pool[self.bg_index[key.char][key.file] % len(pool)]

    def bg(self, key: Key) -> np.ndarray | None:
        p = self.bg_path(key)
        return None if p is None else background(p, blur=key.presentation == "busy_blur")

    def cache_key(self, key: Key) -> str:
        """The key with its background drawing, so a change of background assignment is detected again."""
        p = self.bg_path(key)
        return str(key) + (f"|bg={p.parent.name}/{p.name}" if p is not None else "")

    def image(self, key: Key) -> np.ndarray:
        crop = self.crop(key)
        im = present(crop, key.presentation, self.bg(key))
        if key.edit:
            im = edit_copy(im, crop, key.edit, self.bg_index[key.char][key.file])
        return np.ascontiguousarray(im)

    def placed_box(self, key: Key) -> tuple[float, float, float, float] | None:
        """Where the drawing lies in the rendered image (x0, y0, x1, y1), for checking the detected face is it; None = whole image."""
        if key.presentation == "tight" and key.edit != "new_bg":
            return None
        s = round(FACE_SHARE * CANVAS)
        x0 = (CANVAS - s) // 2 + (18 if key.edit == "new_bg" else 0)
        y0 = (CANVAS - s) // 2 + (-14 if key.edit == "new_bg" else 0)
        box = [x0, y0, x0 + s, y0 + s]
        if key.edit == "rescale_0.75":
            box = [0.75 * v for v in box]
        elif key.edit == "crop_6":
            box = [box[0] - int(0.06 * CANVAS), box[1] - int(0.06 * CANVAS), box[2] - int(0.06 * CANVAS), box[3] - int(0.06 * CANVAS)]
        elif key.edit == "pad_6":
            box = [v + int(0.06 * CANVAS) for v in box]
        elif key.edit == "mirror":
            box = [CANVAS - box[2], box[1], CANVAS - box[0], box[3]]
        return tuple(float(v) for v in box)


# --- detection cache -----------------------------------------------------------------------------
def _face_to_json(f: Face) -> dict:
    return {"box": np.asarray(f.box, float).round(2).tolist(), "score": float(f.score),
            "points": np.asarray(f.points, float).round(3).tolist(), "point_scores": np.asarray(f.point_scores, float).round(4).tolist()}


def _face_from_json(d: dict) -> Face:
    return Face(box=np.asarray(d["box"], np.float32), score=d["score"], points=np.asarray(d["points"], np.float32),
                point_scores=np.asarray(d["point_scores"], np.float32))


def detect_mode(backend, images: list[np.ndarray], mode: str) -> list[ImageFaces]:
    """Detect in each image as it is ("plain") or in the view of one of nvxs's retries (pad, padsmall, mirror:
    kohya_ext.backends.nvxs.retry_view, the code the shipped backend retries with), the faces mapped back."""
    if mode == "plain":
        return backend.detect(images)
    from kohya_ext.backends.nvxs import NvxsFace, retry_view

    views = [retry_view(im, mode) for im in images]
    dets = backend.detect([view for view, _ in views])
    as_nvxs = lambda f: f if isinstance(f, NvxsFace) else NvxsFace(f.box, f.score, f.points, f.point_scores)  # noqa: E731
    return [ImageFaces(faces=[back(as_nvxs(f)) for f in d.faces], width=im.shape[1], height=im.shape[0])
            for d, (_, back), im in zip(dets, views, images)]


class DetectionCache:
    """Detections per (image key, mode), appended to a JSON-lines file keyed by the backend identity."""

    def __init__(self, cache_dir: Path, backend):
        self.backend = backend
        ident = json.dumps(backend.identity(), sort_keys=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / f"detections-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.jsonl"
        self.data: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                except ValueError:
                    continue  # a line cut by an interrupted run
                self.data[d["k"]] = d
        self.detected = 0

    renderer: "Renderer | None" = None  # set before get/has/ensure of presented images

    def _k(self, key: Key, mode: str) -> str:
        return f"{mode}:{self.renderer.cache_key(key)}"

    def get(self, key: Key, mode: str = "plain") -> ImageFaces:
        d = self.data[self._k(key, mode)]
        return ImageFaces(faces=[_face_from_json(f) for f in d["faces"]], width=d["w"], height=d["h"])

    def has(self, key: Key, mode: str = "plain") -> bool:
        return self._k(key, mode) in self.data

    def _append(self, records: list[tuple[str, int, int, ImageFaces]]) -> None:
        """(key, width, height, detection) records, kept and appended to the file."""
        with open(self.path, "a") as fh:
            for k, w, h, det in records:
                d = {"k": k, "w": w, "h": h, "faces": [_face_to_json(f) for f in det.faces]}
                self.data[k] = d
                fh.write(json.dumps(d) + "\n")

    def background_ok(self, path: Path) -> bool:
        """Whether nvxs finds no face in a drawing used as a busy background (upside down, sharp or blurred)."""
        return not any(self.data[f"bg:{path.parent.name}/{path.name}|{blur}"]["faces"] for blur in (0, 1))

    def ensure_backgrounds(self, paths: list[Path], log=sys.stderr) -> None:
        todo = [(p, blur) for p in paths for blur in (0, 1) if f"bg:{p.parent.name}/{p.name}|{blur}" not in self.data]
        for s in range(0, len(todo), 32):
            part = todo[s : s + 32]
            dets = self.backend.detect([background(p, bool(blur)) for p, blur in part])
            self._append([(f"bg:{p.parent.name}/{p.name}|{blur}", CANVAS, CANVAS, det) for (p, blur), det in zip(part, dets)])
            print(f"  backgrounds {s + len(part)}/{len(todo)}", file=log, flush=True)

    def ensure(self, renderer: Renderer, keys: list[Key], mode: str = "plain", chunk: int = 32, log=sys.stderr) -> None:
        todo = [k for k in dict.fromkeys(keys) if not self.has(k, mode)]
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            images = [renderer.image(k) for k in part]
            dets = detect_mode(self.backend, images, mode)
            self._append([(self._k(k, mode), int(im.shape[1]), int(im.shape[0]), det) for k, im, det in zip(part, images, dets)])
            self.detected += len(part)
            print(f"  detected {self.detected}/{len(todo)} ({mode})", file=log, flush=True)
