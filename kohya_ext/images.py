"""Reading images the way users have them: any common format, any mode, robustly.

Every reader returns RGB uint8 arrays of shape (H, W, 3). Anything that cannot
be read raises :class:`ImageError` naming the file and why, so callers can skip
and count it instead of dying.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, KohyaExtError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".jxl")
#: Smaller images cannot hold a detectable face (nvxs needs ~43 px faces).
MIN_IMAGE_SIDE = 32


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any Pillow image (RGBA, LA, P, L, I;16, I, F, CMYK) to RGB uint8.

    Transparent pixels are composited on white, as kohya's own loader does for
    training images with alpha (they become white background, not black).
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as RGB uint8, or raise :class:`ImageError` saying why."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here, not later
            arr = to_rgb_array(img)
    except FileNotFoundError as e:
        raise ImageError(f"{path}: file not found") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not an image Pillow can read (wrong extension or corrupt file)") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: unreadable image ({e})") from e
    h, w = arr.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ImageError(f"{path}: image is {w}x{h} px, too small to hold a face (need >= {MIN_IMAGE_SIDE} px)")
    return arr


def list_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (sorted, recursive), or ``[root]`` if it is a file.

    Raises:
        KohyaExtError: when ``root`` does not exist or holds no image files.
    """
    root = Path(root)
    if not root.exists():
        raise KohyaExtError(f"{root}: no such file or folder")
    if root.is_file():
        return [root]
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise KohyaExtError(
            f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}"
            f"{' in all subfolders' if recursive else ''})"
        )
    return files
