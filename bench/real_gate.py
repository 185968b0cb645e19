"""Candidate copy-gate features for the real-drawing benchmark (tune half only; bench/validity_real.py --gate-candidates).

Per image: DCT hashes (64 or 256 bits) of the whole image, of its content box (the
canvas trimmed: kohya_ext.phash.content_box), and of the face window
(kohya_ext.phash.face_window) at the reference window sizes, with mirrors. Rules are
evaluated with numpy on bit arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from kohya_ext import phash as ph

SCALES = (1.0,) + tuple(ph.FACE_REFERENCE_SCALES)


def features(img: np.ndarray, eyes: tuple | None, ref: bool = True) -> dict[str, list]:
    """Hex hashes (64 and 256 bits) of one image: content box (+mirror), its windows, the face window at SCALES (+mirrors).

    References get REFERENCE_WINDOWS and every face scale, samples SAMPLE_WINDOWS and face scale 1.
    """
    out: dict[str, list] = {}
    box = ph.content_box(img)
    cb = img if box is None else img[box[1] : box[3], box[0] : box[2]]
    g = ph.reduced(Image.fromarray(np.ascontiguousarray(cb)).convert("L"))
    gm = g.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    wins = ph.REFERENCE_WINDOWS if ref else ph.SAMPLE_WINDOWS
    ga = np.asarray(g)
    for bits in (64, 256):
        out[f"cb{bits}"] = [ph.gray_hash(g, bits)]
        out[f"cb{bits}_m"] = [ph.gray_hash(gm, bits)]
        out[f"win{bits}"] = [ph.gray_hash(ph.window(ga, sc, a), bits) for sc, a in wins]
    if eyes is not None:
        full = np.asarray(Image.fromarray(img).convert("L"))
        patches = [ph.face_window(full, eyes[0], eyes[1], sc, size=ph.HASH_SIDE) for sc in (SCALES if ref else SCALES[:1])]
        if all(p is not None for p in patches):
            pg = [Image.fromarray(p) for p in patches]
            for bits in (64, 256):
                out[f"face{bits}"] = [ph.gray_hash(p, bits) for p in pg]
                out[f"face{bits}_m"] = [ph.gray_hash(p.transpose(Image.Transpose.FLIP_LEFT_RIGHT), bits) for p in pg]
    return out


def unpack(hexes: list[str]) -> np.ndarray:
    return np.stack([np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8)) for h in hexes])


class FeatureCache:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.dirty = 0

    def get(self, k: str, make) -> dict:
        if k not in self.data:
            self.data[k] = make()
            self.dirty += 1
            if self.dirty % 1000 == 0:
                self.save()
        return self.data[k]

    def save(self):
        if self.dirty:
            self.path.write_text(json.dumps(self.data))
