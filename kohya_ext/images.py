"""Reading images the way users have them, and the one size gate every image passes before detection.

Every reader returns RGB uint8 arrays of shape (H, W, 3). Anything that cannot
be read raises :class:`ImageError` naming the file and why, so callers can skip
and count it instead of dying. :func:`fit_for_detection` is the gate between any
image (file, rendered sample, ComfyUI tensor) and a detector: it refuses what no
detector can use and downscales what is larger than detection needs.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, KohyaExtError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".jxl")
#: Smaller images cannot hold a detectable face (nvxs needs ~43 px faces).
MIN_IMAGE_SIDE = 32
#: Files whose header declares more pixels are not decoded: Pillow's own decompression-bomb
#: warning threshold (~89 MP, 268 MB as RGB), far above any training image or render (docs/security.md).
MAX_READ_PIXELS = 89_478_485
#: Detectors see at most this many pixels (1024 x 1024); larger images are downscaled first, aspect kept.
#: sd-scripts renders samples at the training resolution and trains SDXL/FLUX-class models on ~1 MP
#: buckets (SD1.x on less), so renders pass untouched and training images are measured at about the
#: size the model learns from. Larger faces only lose detections (nvxs finds 18/17/15/8 of 18 upscaled
#: portraits at 768/1024/1536/2048 px), cost time, and libnvxs segfaults near 80 MP (docs/security.md).
MAX_DETECT_PIXELS = 1024 * 1024


def describe_size(w: int, h: int) -> str:
    return f"{w}x{h} px ({w * h / 1e6:.1f} MP)"


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
    """Read one image file as RGB uint8, or raise :class:`ImageError` saying why.

    The size in the file's header is checked before any pixel is decoded, so a
    small file that declares a huge image (a decompression bomb) costs nothing.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # our own limit (MAX_READ_PIXELS) decides; Pillow's warning would only add a second, vaguer line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_READ_PIXELS:
                    raise ImageError(
                        f"{path}: image is {describe_size(w, h)}, over the {MAX_READ_PIXELS / 1e6:.0f} MP kohya-ext reads: "
                        f"downscale it (detection uses at most {MAX_DETECT_PIXELS / 1e6:.1f} MP)"
                    )
                img.load()  # a truncated file fails here, not later
                arr = to_rgb_array(img)
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{path}: file not found") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not an image Pillow can read (wrong extension or corrupt file)") from e
    except Image.DecompressionBombError as e:  # the header is over Pillow's own hard limit
        raise ImageError(f"{path}: {e} Downscale it (kohya-ext reads at most {MAX_READ_PIXELS / 1e6:.0f} MP)") from e
    except MemoryError as e:
        raise ImageError(f"{path}: not enough memory to decode this image; downscale it") from e
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError, struct.error, ...
        raise ImageError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
    h, w = arr.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ImageError(f"{path}: image is {w}x{h} px, too small to hold a face (need >= {MIN_IMAGE_SIDE} px)")
    return arr


def fit_for_detection(image: np.ndarray) -> np.ndarray:
    """The gate before every detector: ``image`` as RGB uint8 (H, W, 3) of at most
    :data:`MAX_DETECT_PIXELS`, downscaled (aspect kept) when larger; untouched otherwise.

    Raises :class:`ImageError` for arrays no detector can use (wrong type or shape, too small,
    too long and thin to keep a face once downscaled).
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected an RGB image array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ImageError(f"expected an RGB image of shape (H, W, 3), got shape {list(image.shape)}")
    if image.dtype != np.uint8:
        raise ImageError(f"expected an RGB uint8 image, got dtype {image.dtype}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ImageError(f"image is {w}x{h} px, too small to hold a face (need >= {MIN_IMAGE_SIDE} px)")
    if h * w <= MAX_DETECT_PIXELS:
        return image
    scale = math.sqrt(MAX_DETECT_PIXELS / (h * w))
    nw, nh = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    if min(nw, nh) < MIN_IMAGE_SIDE:
        raise ImageError(f"image is {describe_size(w, h)}: too long and thin to keep a face when downscaled "
                         f"to {MAX_DETECT_PIXELS / 1e6:.1f} MP; crop it")
    # area averaging: alias-free at any factor, 4x faster than Lanczos for the same score (bench/image_gate.py)
    small = Image.fromarray(image).resize((nw, nh), Image.Resampling.BOX)
    return np.ascontiguousarray(np.asarray(small, dtype=np.uint8))


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
        raise no_images_error(str(root), recursive)
    return files


def no_images_error(label: str, recursive: bool = True) -> KohyaExtError:
    return KohyaExtError(f"{label}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}"
                         f"{' in all subfolders' if recursive else ''})")
