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
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

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
#: Detection padding for tight crops ("pad" mode): this share of the long side on every side, edges replicated.
PAD_FRACTION = 0.25


def _sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


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
        files = sorted((p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: _sha1(p.name))
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
def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


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
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=70)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if kind == "rescale_0.75":
        h, w = image.shape[:2]
        return np.asarray(Image.fromarray(image).resize((round(w * 0.75), round(h * 0.75)), Image.Resampling.LANCZOS))
    if kind == "crop_6":  # 6 % off the left and top
        h, w = image.shape[:2]
        return np.ascontiguousarray(image[int(0.06 * h) :, int(0.06 * w) :])
    if kind == "pad_6":  # 6 % added on every side, edges replicated
        p = int(0.06 * image.shape[0])
        return np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge")
    if kind == "mirror":
        return np.ascontiguousarray(image[:, ::-1])
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
        return load_rgb(self.paths[(key.char, key.file)])

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


def pad_image(image: np.ndarray, frac: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    p = int(round(frac * max(image.shape[:2])))
    return np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge"), p


def shift_faces(det: ImageFaces, dx: float, dy: float, width: int, height: int, scale: float = 1.0) -> ImageFaces:
    """Faces found in a padded (and scaled) image, mapped back: (p / scale) - (dx, dy)."""
    faces = []
    for f in det.faces:
        faces.append(Face(box=np.asarray(f.box, np.float32) / scale - np.float32([dx, dy, dx, dy]), score=f.score,
                          points=np.asarray(f.points, np.float32) / scale - np.float32([dx, dy]), point_scores=f.point_scores))
    return ImageFaces(faces=faces, width=width, height=height)


#: nvxs point pairs swapped by a mirror (kohya_ext.landmarks.NVXS_POINTS: eyes, inner corners, mouth corners)
_MIRROR_PAIRS = ((0, 1), (2, 3), (5, 6))


def unmirror_faces(det: ImageFaces, width: int) -> ImageFaces:
    faces = []
    for f in det.faces:
        p = np.asarray(f.points, np.float32).copy()
        p[:, 0] = width - p[:, 0]
        for a, b in _MIRROR_PAIRS:
            p[[a, b]] = p[[b, a]]
        x0, y0, x1, y1 = np.asarray(f.box, np.float32)
        faces.append(Face(box=np.float32([width - x1, y0, width - x0, y1]), score=f.score, points=p, point_scores=f.point_scores))
    return ImageFaces(faces=faces, width=width, height=det.height)


def detect_mode(backend, images: list[np.ndarray], mode: str) -> list[ImageFaces]:
    """Detect in a transformed copy of each image and map the faces back.

    plain; pad (PAD_FRACTION of the long side, edges replicated); padsmall (the padded image at 0.6 scale);
    mirror (left-right mirrored).
    """
    if mode == "plain":
        return backend.detect(images)
    if mode in ("pad", "padsmall"):
        scale = 0.6 if mode == "padsmall" else 1.0
        padded = [pad_image(im) for im in images]
        ins = [p if scale == 1.0 else np.asarray(Image.fromarray(p).resize((round(p.shape[1] * scale), round(p.shape[0] * scale)), Image.Resampling.LANCZOS))
               for p, _ in padded]
        dets = backend.detect(ins)
        return [shift_faces(d, q, q, im.shape[1], im.shape[0], scale) for d, (_, q), im in zip(dets, padded, images)]
    if mode == "mirror":
        dets = backend.detect([np.ascontiguousarray(im[:, ::-1]) for im in images])
        return [unmirror_faces(d, im.shape[1]) for d, im in zip(dets, images)]
    raise ValueError(mode)


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
