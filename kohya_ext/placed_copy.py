"""Copies of a training drawing moved onto another background (the copy gate's third test).

A sample that lifts a training drawing off its scene and puts it on a plain canvas (or the reverse)
shares no whole-image or window hash with it: every hash also sees the background. Here the drawn
area of the image that has a plain canvas (kohya_ext.phash.drawn_area) is searched for inside the
other image, at several sizes, by masked normalised cross-correlation (OpenCV's matchTemplate) on
small greyscale copies; only the drawn pixels count. Measured on real drawings in docs/validity.md.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from functools import lru_cache

import numpy as np
from PIL import Image

from .errors import KohyaExtError

from .phash import drawn_area

#: Longer side of the searched image (an image without a plain canvas), in pixels.
SEARCH_SIDE = 64
#: Longer side the drawn area is kept at (an image on a plain canvas).
TEMPLATE_SIDE = 48
#: Sizes of the drawn area inside the other image, relative to its size in its own image: every whole pixel size
#: in this range is tried (the correlation falls by ~0.06 one pixel off the right size at ~38 px).
SCALE_RANGE = (0.6, 1.4)
#: Below this side (pixels at SEARCH_SIDE) a drawn area says too little to be matched.
MIN_TEMPLATE_SIDE = 12


def _png(a: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _unpng(s: str) -> np.ndarray:
    """A stored thumbnail; a damaged one, or one larger than a thumbnail (a crafted file), is refused
    before it is decoded."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(s, validate=True))) as im:
            if max(im.size) > max(SEARCH_SIDE, TEMPLATE_SIDE):
                raise ValueError(f"{im.size[0]}x{im.size[1]} px, not a thumbnail")
            return np.asarray(im.convert("L"))
    except Exception as e:  # noqa: BLE001 - binascii, Pillow and size errors alike
        raise KohyaExtError(f"a stored copy-gate thumbnail is damaged ({e}): rebuild the reference from its images") from None


def _gray(image: np.ndarray, side: int) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(image)).convert("L")
    f = side / max(im.size)
    return np.asarray(im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.Resampling.BOX))


def placed_thumb(image: np.ndarray) -> dict:
    """What an image keeps for the search (JSON-ready).

    On a plain canvas: ``{"drawn": PNG, "mask": PNG, "share": s}`` - the drawn area at TEMPLATE_SIDE, the
    mask of its drawn (non-canvas) pixels, and its longer side as a share of the image's. Otherwise:
    ``{"whole": PNG}`` - the image at SEARCH_SIDE.
    """
    img = np.asarray(image)
    area = drawn_area(img)
    if area is None:
        return {"whole": _png(_gray(img, SEARCH_SIDE))}
    (x0, y0, x1, y1), drawn = area
    h, w = img.shape[:2]
    mask = np.repeat(drawn.astype(np.uint8)[..., None] * 255, 3, axis=2)
    return {"drawn": _png(_gray(img[y0:y1, x0:x1], TEMPLATE_SIDE)), "mask": _png(_gray(mask, TEMPLATE_SIDE)),
            "share": round(max((x1 - x0) / w, (y1 - y0) / h), 4)}


@lru_cache(maxsize=4096)
def _decoded(s: str) -> np.ndarray:
    return _unpng(s).astype(np.float32)


@lru_cache(maxsize=8192)
def _template(drawn: str, mask: str, tw: int, th: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The drawn area and its mask at one size; mask None when (nearly) every pixel is drawn, so the
    plain correlation (a third of the masked one's cost) gives the same answer; None when mostly canvas."""
    cv2 = _cv2()
    m = (cv2.resize(_decoded(mask) / 255.0, (tw, th), interpolation=cv2.INTER_AREA) > 0.5).astype(np.float32)
    share = float(m.mean())
    if share < 0.25:
        return None
    return cv2.resize(_decoded(drawn), (tw, th), interpolation=cv2.INTER_AREA), (None if share > 0.97 else m)


def _cv2():
    try:
        import cv2
    except ImportError:  # scripts/install.sh always provides one; a bare pip install may not
        warnings.warn("kohya-ext: no OpenCV (cv2): the copy gate cannot search for drawings moved onto another "
                      "background; install opencv-python-headless", stacklevel=3)
        return None
    return cv2


def placed_similarity(a: dict | None, b: dict | None) -> float | None:
    """Best masked correlation (-1..1) of the drawn area of one image inside the other; None unless exactly one has a plain canvas."""
    if not a or not b or ("drawn" in a) == ("drawn" in b):
        return None
    t, s = (a, b) if "drawn" in a else (b, a)
    cv2 = _cv2()
    if cv2 is None:
        return None
    tmpl, search = _decoded(t["drawn"]), _decoded(s["whole"])
    best = None
    base = max(search.shape) * t["share"]  # the drawn area's longer side at the same share of the other image
    for side in range(math.ceil(SCALE_RANGE[0] * base), math.floor(SCALE_RANGE[1] * base) + 1):
        k = side / max(tmpl.shape)
        tw, th = round(tmpl.shape[1] * k), round(tmpl.shape[0] * k)
        # strictly smaller than the searched image: OpenCV 4.10 (sd-scripts' pin) fails on a masked template of its full width
        if min(tw, th) < MIN_TEMPLATE_SIDE or th >= search.shape[0] or tw >= search.shape[1]:
            continue
        tm = _template(t["drawn"], t["mask"], tw, th)
        if tm is None:  # mostly canvas: nothing to match
            continue
        try:
            r = cv2.matchTemplate(search, tm[0], cv2.TM_CCOEFF_NORMED, **({} if tm[1] is None else {"mask": tm[1]}))
        except cv2.error:  # an OpenCV build that refuses this size: the other sizes still decide
            continue
        r = r[np.isfinite(r)]
        if r.size:
            v = float(r.max())
            best = v if best is None else max(best, v)
    return best


def best_placed_similarity(sample: dict | None, references: list[dict]) -> float | None:
    """placed_similarity of a sample against the closest training image; None when no pair applies."""
    vals = [v for r in references if (v := placed_similarity(sample, r)) is not None]
    return max(vals) if vals else None
