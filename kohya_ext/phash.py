"""Perceptual hashes of whole images, kept in the reference to spot samples that copy training images."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


#: DCT size and kept block per hash length: 64 bits = the classic pHash (8x8 of a 32x32 DCT); 256 bits = 16x16 of 64x64.
_SIZES = {64: (32, 8), 256: (64, 16)}
_DCTS = {n: _dct_matrix(n) for n, _ in _SIZES.values()}


def gray_hash(gray: np.ndarray | Image.Image, bits: int = 64) -> str:
    """DCT perceptual hash of a greyscale image (uint8 array or PIL "L"), ``bits`` long (64 or 256), as hex."""
    n, k = _SIZES[bits]
    im = gray if isinstance(gray, Image.Image) else Image.fromarray(np.ascontiguousarray(gray))
    a = np.asarray(im.resize((n, n), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _DCTS[n]
    low = (d @ a @ d.T)[:k, :k].ravel()
    on = low > np.median(low[1:])  # the DC term would dominate the median
    return np.packbits(on).tobytes().hex()


def phash(image: np.ndarray, bits: int = 64) -> str:
    """DCT perceptual hash (64 bits: the classic pHash) of an RGB uint8 image, as hex (16 digits for 64 bits)."""
    return gray_hash(Image.fromarray(np.asarray(image)).convert("L"), bits)


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def phash_mirror(image: np.ndarray) -> str:
    """pHash of the left-right mirrored image.

    Training with flip augmentation memorises mirrored copies too, and a mirror
    flips the sign of half the DCT coefficients (~half the bits), so the
    memorisation gate compares samples with both hashes of each training image.
    """
    return phash(np.ascontiguousarray(np.asarray(image)[:, ::-1]))


#: A border counts as a plain canvas when this share of its pixels lies within CANVAS_TOLERANCE
#: (largest RGB channel difference) of the border's median colour.
PLAIN_BORDER_SHARE = 0.9
CANVAS_TOLERANCE = 12


def drawn_area(image: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """What is drawn on a plain canvas: its bounding box (x0, y0, x1, y1) and, inside it, the mask of pixels off the
    canvas colour; None when the border is not plain or nothing is trimmed.

    The canvas colour is the median of the image border; rows and columns with fewer
    than 1 % (at least 2) pixels off that colour are canvas.
    """
    img = np.asarray(image)
    if img.ndim != 3 or min(img.shape[:2]) < 8:
        return None
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(np.int16)
    bg = np.median(border, axis=0)
    if (np.abs(border - bg).max(axis=1) <= CANVAS_TOLERANCE).mean() < PLAIN_BORDER_SHARE:
        return None
    fg = np.abs(img.astype(np.int16) - bg.astype(np.int16)).max(axis=2) > CANVAS_TOLERANCE
    h, w = fg.shape
    rows = np.flatnonzero(fg.sum(axis=1) >= max(2, 0.01 * w))
    cols = np.flatnonzero(fg.sum(axis=0) >= max(2, 0.01 * h))
    if len(rows) == 0 or len(cols) == 0:
        return None
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    if (x1 - x0) * (y1 - y0) > 0.95 * h * w or min(x1 - x0, y1 - y0) < 8:
        return None
    return (x0, y0, x1, y1), fg[y0:y1, x0:x1]


def content_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of what is drawn on a plain canvas (drawn_area); None when there is no plain canvas."""
    area = drawn_area(image)
    return None if area is None else area[0]


#: Shift-tolerant whole-image hashes: a reference image is also hashed in sub-windows (scale of each side, anchor),
#: a sample in a few of its own, so that a copy cropped or padded by a few percent meets one of them
#: (between grid points, not at them: the grid is not the benchmark's 6 %).
REFERENCE_WINDOWS: tuple[tuple[float, str], ...] = (
    (0.92, "tl"), (0.92, "tr"), (0.92, "bl"), (0.92, "br"), (0.92, "c"),
    (0.85, "tl"), (0.85, "tr"), (0.85, "bl"), (0.85, "br"), (0.85, "c"), (0.85, "t"), (0.85, "b"), (0.85, "l"), (0.85, "r"),
)  # fmt: skip
SAMPLE_WINDOWS: tuple[tuple[float, str], ...] = ((0.92, "c"), (0.85, "c"), (0.92, "tl"), (0.92, "tr"), (0.92, "bl"), (0.92, "br"))


#: Hashes are taken from a copy reduced (box filter) to at most about this side: the DCT sees 64 px at most.
HASH_SIDE = 128


def reduced(gray: Image.Image, side: int = HASH_SIDE) -> Image.Image:
    """``gray`` shrunk by an integer factor (box filter) so that its longer side is under 2 x ``side``."""
    f = max(gray.size) // side
    return gray.reduce(f) if f > 1 else gray


def window(image: np.ndarray, scale: float, anchor: str) -> np.ndarray:
    """The sub-window of ``image`` whose sides are ``scale`` x the image's, placed at ``anchor`` (t/b/l/r/c and corners)."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    wh, ww = max(int(round(scale * h)), 1), max(int(round(scale * w)), 1)
    y0 = 0 if "t" in anchor else h - wh if "b" in anchor else (h - wh) // 2
    x0 = 0 if "l" in anchor else w - ww if "r" in anchor else (w - ww) // 2
    return np.ascontiguousarray(img[y0 : y0 + wh, x0 : x0 + ww])


#: Face-aligned hash window, in eye distances: centred this far below the eye midpoint,
#: this many eye distances wide (eyes, bangs, mouth and chin; little background).
#: Chosen on the tune half of bench/validity.py (docs/validity.md).
FACE_WINDOW_DOWN = 0.3
FACE_WINDOW_SIDE = 3.2
#: A training image's face window is also hashed at these sizes: nvxs's eye distance varies
#: by ~10 % between copies of one image (95th percentile), and a reference hashed at several
#: sizes absorbs that (docs/validity.md). Samples are hashed at size 1 only.
FACE_REFERENCE_SCALES = (0.9, 0.95, 1.05, 1.1)


def face_window(image: np.ndarray, eye_left, eye_right, scale: float = 1.0, size: int | None = None) -> np.ndarray | None:
    """The square face window in the eye frame (FACE_WINDOW_DOWN, FACE_WINDOW_SIDE), as an upright RGB array; None when the eyes are < 4 px apart.

    Centred FACE_WINDOW_DOWN eye distances below the eye midpoint, FACE_WINDOW_SIDE x
    ``scale`` eye distances wide, turned with the eye axis, edges replicated where it
    leaves the image. ``size``: output side in pixels (default: the window's own side).
    """
    img = np.asarray(image)
    el, er = np.asarray(eye_left, np.float64), np.asarray(eye_right, np.float64)
    ed = float(np.hypot(*(er - el)))
    if not np.isfinite(ed) or ed < 4:
        return None
    x = (er - el) / ed
    y = np.array([-x[1], x[0]])
    side = FACE_WINDOW_SIDE * ed * scale
    centre = (el + er) / 2 + FACE_WINDOW_DOWN * ed * y
    # the window's bounding box, edges replicated where it leaves the image
    half = side / np.sqrt(2)
    x0, y0 = int(np.floor(centre[0] - half)), int(np.floor(centre[1] - half))
    x1, y1 = int(np.ceil(centre[0] + half)), int(np.ceil(centre[1] + half))
    h, w = img.shape[:2]
    region = img[np.clip(np.arange(y0, y1), 0, h - 1)][:, np.clip(np.arange(x0, x1), 0, w - 1)]
    n = int(size) if size else max(int(round(side)), 8)
    s = side / n
    c = centre - np.array([x0, y0]) - (n / 2) * s * (x + y)
    # output pixel (u, v) -> region point c + s*(u*x + v*y) (PIL: inverse affine, full resolution, then phash downsizes)
    patch = Image.fromarray(np.ascontiguousarray(region)).transform(
        (n, n), Image.Transform.AFFINE, (s * x[0], s * y[0], c[0], s * x[1], s * y[1], c[1]), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(patch)


def face_phash(image: np.ndarray, eye_left, eye_right, scale: float = 1.0) -> tuple[str, str] | None:
    """pHash of a square window in the eye frame, and of its mirror image; None when the eyes are < 4 px apart.

    A whole-image hash changes when a copy is cropped or padded (the content shifts
    against the DCT grid); a window placed, sized and turned by the two eye centres
    follows the face instead. The mirror hash of a training image matches a mirrored
    copy (the eye frame of a mirrored face is the mirrored frame). ``scale`` resizes
    the window about its centre (FACE_REFERENCE_SCALES).
    """
    a = face_window(image, eye_left, eye_right, scale)
    if a is None:
        return None
    return phash(a), phash(np.ascontiguousarray(a[:, ::-1]))


def face_phash_scaled(image: np.ndarray, eye_left, eye_right) -> list[str] | None:
    """face_phash and its mirror at each of FACE_REFERENCE_SCALES (what a reference image adds to its face hashes)."""
    out: list[str] = []
    for sc in FACE_REFERENCE_SCALES:
        fh = face_phash(image, eye_left, eye_right, sc)
        if fh is None:
            return None
        out += fh
    return out


#: Length of the copy gate's hashes (kohya_ext.comparison.is_near_copy): 256 bits (16x16 DCT of 64x64) separate
#: copies from new drawings far better than the classic 64 on real drawings (docs/validity.md).
GATE_BITS = 256
#: Every window an image is hashed in (references use REFERENCE_WINDOWS, samples SAMPLE_WINDOWS), in this order.
WINDOWS: tuple[tuple[float, str], ...] = REFERENCE_WINDOWS + tuple(w for w in SAMPLE_WINDOWS if w not in REFERENCE_WINDOWS)
REFERENCE_WINDOW_INDEX = tuple(WINDOWS.index(w) for w in REFERENCE_WINDOWS)
SAMPLE_WINDOW_INDEX = tuple(WINDOWS.index(w) for w in SAMPLE_WINDOWS)


def copy_hashes(image: np.ndarray, eyes: tuple | None = None, bits: int = GATE_BITS) -> dict:
    """The copy gate's hashes of one image (what an ImageMeasurement keeps).

    ``drawn`` / ``drawn_mirror``: the drawn area (content_box: a plain canvas trimmed; else the whole image)
    and its mirror image; ``windows``: the drawn area's WINDOWS; with the two eye centres, ``face`` /
    ``face_mirror`` (face_window at size 1) and ``face_scaled`` (FACE_REFERENCE_SCALES, each with its mirror).
    Hashes come from greyscale copies reduced to HASH_SIDE, so they cost milliseconds.
    """
    img = np.asarray(image)
    box = content_box(img)
    drawn = img if box is None else img[box[1] : box[3], box[0] : box[2]]
    g = reduced(Image.fromarray(np.ascontiguousarray(drawn)).convert("L"))
    ga = np.asarray(g)
    out: dict = {
        "drawn": gray_hash(g, bits),
        "drawn_mirror": gray_hash(g.transpose(Image.Transpose.FLIP_LEFT_RIGHT), bits),
        "windows": [gray_hash(window(ga, sc, a), bits) for sc, a in WINDOWS],
        "face": None, "face_mirror": None, "face_scaled": None,
    }  # fmt: skip
    if eyes is not None:
        full = np.asarray(Image.fromarray(img).convert("L"))
        patches = [face_window(full, eyes[0], eyes[1], sc, size=HASH_SIDE) for sc in (1.0,) + tuple(FACE_REFERENCE_SCALES)]
        if all(p is not None for p in patches):
            hs = []
            for p in patches:
                pi = Image.fromarray(p)
                hs += [gray_hash(pi, bits), gray_hash(pi.transpose(Image.Transpose.FLIP_LEFT_RIGHT), bits)]
            out["face"], out["face_mirror"], out["face_scaled"] = hs[0], hs[1], hs[2:]
    return out
