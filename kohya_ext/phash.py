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

