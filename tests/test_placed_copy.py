"""The copy gate's search for a drawing moved onto another background (kohya_ext.placed_copy), on the shared portraits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from kohya_ext.measure import ImageMeasurement
from kohya_ext.placed_copy import placed_similarity, placed_thumb
from kohya_ext.comparison import MEMORIZATION_PLACED, CopyGate

pytest.importorskip("cv2", reason="kohya_ext.placed_copy needs OpenCV (scripts/install.sh installs it)")


def _scene(tiles, i: int) -> np.ndarray:
    """A busy 512 px scene: a blurred mosaic of four other portraits."""
    quads = [Image.fromarray(tiles[(i + k) % len(tiles)]).resize((256, 256)) for k in (7, 11, 13, 17)]
    canvas = Image.new("RGB", (512, 512))
    for k, q in enumerate(quads):
        canvas.paste(q, ((k % 2) * 256, (k // 2) * 256))
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(3)))


def _place(tile: np.ndarray, canvas: np.ndarray, side: int = 307, at: tuple[int, int] = (102, 102)) -> np.ndarray:
    out = Image.fromarray(canvas.copy())
    out.paste(Image.fromarray(tile).resize((side, side)), at)
    return np.asarray(out)


def _plain(colour) -> np.ndarray:
    return np.full((512, 512, 3), colour, np.uint8)


def test_a_drawing_lifted_off_its_scene_is_found_and_other_drawings_are_not(tadne_tiles):
    copies, others = [], []
    for i in range(0, 12, 2):
        on_scene = placed_thumb(_place(tadne_tiles[i], _scene(tadne_tiles, i)))
        assert "whole" in on_scene
        moved = placed_thumb(_place(tadne_tiles[i], _plain((235, 240, 250)), at=(120, 88)))
        assert "drawn" in moved
        copies.append(placed_similarity(moved, on_scene))
        copies.append(placed_similarity(on_scene, moved))  # symmetric: either side may hold the canvas
        for j in (i + 1, i + 3):
            others.append(placed_similarity(placed_thumb(_place(tadne_tiles[j], _plain((255, 255, 255)))), on_scene))
    assert min(copies) >= MEMORIZATION_PLACED, copies
    assert max(others) < MEMORIZATION_PLACED, others


def test_search_applies_only_when_exactly_one_side_has_a_plain_canvas(tadne_tiles):
    white = placed_thumb(_place(tadne_tiles[0], _plain((255, 255, 255))))
    scene = placed_thumb(_place(tadne_tiles[0], _scene(tadne_tiles, 0)))
    assert placed_similarity(white, white) is None  # both on a canvas: the drawn-area hashes decide
    assert placed_similarity(scene, scene) is None  # neither: the whole-image hashes decide
    assert placed_similarity(None, scene) is None  # a measurement from before version 5 keeps nothing


def test_copy_gate_flags_the_moved_copy(tadne_tiles):
    ref = ImageMeasurement(name="train", status="ok", placed=placed_thumb(_place(tadne_tiles[4], _scene(tadne_tiles, 4))))
    gate = CopyGate([], [], reference_placed=[ref.placed])
    moved = ImageMeasurement(name="s0", status="ok", placed=placed_thumb(_place(tadne_tiles[4], _plain((250, 230, 230)))))
    new = ImageMeasurement(name="s1", status="ok", placed=placed_thumb(_place(tadne_tiles[5], _plain((250, 230, 230)))))
    assert gate.is_copy(moved) and not gate.is_copy(new)
