"""Images with the face box and landmarks drawn, for a person to check what was measured."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .io_utils import atomic_save_image
from .measure import ImageMeasurement

_OK = (40, 220, 90)
_BAD = (240, 60, 60)
_LOW = (250, 200, 40)


def draw_overlay(image: np.ndarray, m: ImageMeasurement, min_point_score: float = 0.3) -> Image.Image:
    """The image with the measured face's box (green if used, red if excluded) and its points
    (low-scoring points in yellow) and the image status written in the corner."""
    img = Image.fromarray(image).convert("RGB")
    d = ImageDraw.Draw(img)
    scale = max(1, round(max(img.size) / 512))
    if m.face_box is not None:
        color = _OK if m.status == "ok" else _BAD
        d.rectangle(m.face_box, outline=color, width=2 * scale)
        for (x, y), s in zip(m.points or [], m.point_scores or []):
            r = 2 * scale
            d.ellipse([x - r, y - r, x + r, y + r], fill=_OK if s >= min_point_score else _LOW)
    label = m.status if m.face_score is None else f"{m.status} {m.face_score:.2f}"
    d.rectangle([0, 0, 8 + 7 * len(label), 14], fill=(0, 0, 0))
    d.text((4, 2), label, fill=_OK if m.status == "ok" else _BAD)
    return img


def write_overlays(images: Sequence[np.ndarray], measurements: Sequence[ImageMeasurement], out_dir: str | Path) -> list[Path]:
    """Write one PNG per image into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, m) in enumerate(zip(images, measurements)):
        stem = Path(m.name).stem if m.name else f"image_{i:04d}"
        p = out_dir / f"{i:04d}_{stem}.png"
        atomic_save_image(draw_overlay(img, m), p)
        paths.append(p)
    return paths


def overlay_grid(images: Sequence[Image.Image], columns: int = 4, tile: int = 256) -> Image.Image:
    """Tile overlay images into one grid picture (for TensorBoard, wandb and the HTML report)."""
    if not images:
        return Image.new("RGB", (tile, tile), (0, 0, 0))
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * tile, rows * tile), (16, 16, 16))
    for i, im in enumerate(images):
        t = im.copy()
        t.thumbnail((tile, tile))
        grid.paste(t, ((i % columns) * tile + (tile - t.width) // 2, (i // columns) * tile + (tile - t.height) // 2))
    return grid


def write_report_overlays(report, out_dir: str | Path) -> list[Path]:
    """Overlays of every readable sample of a ``ConsistencyReport`` (re-read from its file)."""
    from .images import load_image

    pairs = [(load_image(m.name), m) for m in report.samples if m.status != "unreadable"]
    return write_overlays([p[0] for p in pairs], [p[1] for p in pairs], out_dir)
