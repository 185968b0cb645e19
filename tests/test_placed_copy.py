"""The copy gate's search for a drawing moved onto another background (kohya_ext.placed_copy), on the shared portraits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from kohya_ext.measure import ImageMeasurement
from kohya_ext.placed_copy import placed_similarity, placed_thumb
from kohya_ext.comparison import MEMORIZATION_PLACED, CopyGate

pytest.importorskip("cv2", reason="kohya_ext.placed_copy needs OpenCV (scripts/install.sh installs it)")


MOSAIC = (7, 11, 13, 17)  # the scene behind portrait i: portraits i+7, i+11, ... (blurred)


def _scene(tiles, i: int) -> np.ndarray:
    """A busy 512 px scene: a blurred mosaic of four other portraits."""
    quads = [Image.fromarray(tiles[(i + k) % len(tiles)]).resize((256, 256)) for k in MOSAIC]
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
    """Every portrait on a busy scene (a training image) against: itself moved onto a plain canvas, shifted (a copy,
    both ways round), and every portrait on white that the scene does not hold (1,116 genuine pairs). The real-drawing rates are the bench's
    (docs/validity.md): the search needs small copies of the drawings, not committed for unlicensed art."""
    scenes = [placed_thumb(_place(t, _scene(tadne_tiles, i))) for i, t in enumerate(tadne_tiles)]
    whites = [placed_thumb(_place(t, _plain((255, 255, 255)))) for t in tadne_tiles]
    assert all("whole" in s for s in scenes) and all("drawn" in w for w in whites)
    copies, others = [], []
    for i, t in enumerate(tadne_tiles):
        moved = placed_thumb(_place(t, _plain((235, 240, 250)), side=280, at=(120, 88)))
        copies += [placed_similarity(moved, scenes[i]), placed_similarity(scenes[i], moved)]
        in_scene = {i} | {(i + k) % len(tadne_tiles) for k in MOSAIC}  # drawings the scene really holds
        others += [placed_similarity(w, scenes[i]) for j, w in enumerate(whites) if j not in in_scene]
    assert min(copies) >= MEMORIZATION_PLACED, sorted(copies)[:3]
    assert max(others) < MEMORIZATION_PLACED, sorted(others)[-3:]


def test_search_applies_only_when_exactly_one_side_has_a_plain_canvas(tadne_tiles):
    white = placed_thumb(_place(tadne_tiles[0], _plain((255, 255, 255))))
    scene = placed_thumb(_place(tadne_tiles[0], _scene(tadne_tiles, 0)))
    assert placed_similarity(white, white) is None  # both on a canvas: the drawn-area hashes decide
    assert placed_similarity(scene, scene) is None  # neither: the whole-image hashes decide
    assert placed_similarity(None, scene) is None  # a measurement from before version 5 keeps nothing


def test_a_drawn_area_filling_the_canvas_is_searched_at_the_sizes_that_fit(tadne_tiles):
    # OpenCV 4.10 (sd-scripts' pin) raises on a masked template as wide as the searched image: such sizes are skipped
    scene = placed_thumb(_place(tadne_tiles[3], _scene(tadne_tiles, 3)))
    full = placed_thumb(_place(tadne_tiles[3], _plain((255, 255, 255)), side=492, at=(10, 10)))
    assert full["share"] > 0.95
    assert placed_similarity(full, scene) >= MEMORIZATION_PLACED


def test_copy_gate_flags_the_moved_copy(tadne_tiles):
    ref = ImageMeasurement(name="train", status="ok", placed=placed_thumb(_place(tadne_tiles[4], _scene(tadne_tiles, 4))))
    gate = CopyGate([], [], reference_placed=[ref.placed])
    moved = ImageMeasurement(name="s0", status="ok", placed=placed_thumb(_place(tadne_tiles[4], _plain((250, 230, 230)))))
    new = ImageMeasurement(name="s1", status="ok", placed=placed_thumb(_place(tadne_tiles[5], _plain((250, 230, 230)))))
    assert gate.is_copy(moved) and not gate.is_copy(new)
