"""Perceptual hashes of whole images, kept in the reference to spot samples that copy training images."""

from __future__ import annotations

import numpy as np
from PIL import Image

_N = 32  # DCT input size
_K = 8  # low-frequency block kept -> 64-bit hash


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(_N)


def phash(image: np.ndarray) -> str:
    """64-bit DCT perceptual hash (the classic pHash) of an RGB uint8 image, as 16 hex digits."""
    gray = Image.fromarray(image).convert("L").resize((_N, _N), Image.Resampling.LANCZOS)
    a = np.asarray(gray, dtype=np.float64)
    low = (_DCT @ a @ _DCT.T)[:_K, :_K].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


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



#: Face-aligned hash window, in eye distances: centred this far below the eye midpoint,
#: this many eye distances wide (eyes, bangs, mouth and chin; little background).
#: Chosen on the tune half of bench/validity.py (docs/validity.md).
FACE_WINDOW_DOWN = 0.3
FACE_WINDOW_SIDE = 3.2
#: A training image's face window is also hashed at these sizes: nvxs's eye distance varies
#: by ~10 % between copies of one image (95th percentile), and a reference hashed at several
#: sizes absorbs that (docs/validity.md). Samples are hashed at size 1 only.
FACE_REFERENCE_SCALES = (0.9, 0.95, 1.05, 1.1)


def face_phash(image: np.ndarray, eye_left, eye_right, scale: float = 1.0) -> tuple[str, str] | None:
    """pHash of a square window in the eye frame, and of its mirror image; None when the eyes are < 4 px apart.

    A whole-image hash changes when a copy is cropped or padded (the content shifts
    against the DCT grid); a window placed, sized and turned by the two eye centres
    follows the face instead. The mirror hash of a training image matches a mirrored
    copy (the eye frame of a mirrored face is the mirrored frame). ``scale`` resizes
    the window about its centre (FACE_REFERENCE_SCALES).
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
    n = max(int(round(side)), 8)
    s = side / n
    c = centre - np.array([x0, y0]) - (n / 2) * s * (x + y)
    # output pixel (u, v) -> region point c + s*(u*x + v*y) (PIL: inverse affine, full resolution, then phash downsizes)
    patch = Image.fromarray(np.ascontiguousarray(region)).transform(
        (n, n), Image.Transform.AFFINE, (s * x[0], s * y[0], c[0], s * x[1], s * y[1], c[1]), resample=Image.Resampling.BILINEAR
    )
    a = np.asarray(patch)
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
