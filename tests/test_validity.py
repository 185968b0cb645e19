"""A small run of bench/validity.py on real portraits with nvxs: the score must keep its meaning.

Floors come from the full benchmark (docs/validity.md) with a margin for the
smaller sample; a change that breaks what the score or the memorisation gate
means (e.g. same-character samples no longer scoring above other characters,
recoloured samples no longer noticed, copies no longer flagged) fails here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from kohya_ext.color import color_distances, face_colors, rgb_to_lab
from kohya_ext.measure import ImageMeasurement, measure_arrays
from kohya_ext.phash import FACE_REFERENCE_SCALES, GATE_BITS, content_box, copy_hashes, hamming, phash, phash_mirror
from kohya_ext.ratios import ExclusionRules
from kohya_ext.reference import ReferenceStats
from kohya_ext.comparison import MEMORIZATION_HAMMING, compare, memorization_share, reference_face_hashes, reference_hashes
from kohya_ext.similarity import consistency_score

pytest.importorskip("animeface", reason="nvxs needs the animeface wheel (Linux x86-64)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench modules import each other by plain import
_spec = importlib.util.spec_from_file_location("validity_bench", Path(__file__).resolve().parents[1] / "bench" / "validity.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("validity_bench", bench)  # dataclasses look their module up there
_spec.loader.exec_module(bench)

#: Floors from this small run's measured values with a margin of about one character:
#: eye-spacing power 0.75 (9 of 12), copies flagged 0.94 (image hash alone: 0.83).
FLOOR_EYE_POWER = 0.58
FLOOR_COPIES_FLAGGED = 0.88
#: Report-half (odd) tiles with a usable nvxs face, chosen before looking at their per-tile results.
CHARACTERS = (1, 3, 5, 7, 9, 11)
REF_KEYS = ("orig", "mirror", "crop_tl")  # reference side: mirror, crops
SMP_KEYS = ("rescale_0.75", "roll_+5", "jpeg_q70")  # sample side: rescale, roll, JPEG


@pytest.fixture(scope="module")
def nvxs():
    from kohya_ext.backends import BackendSpec

    return BackendSpec("nvxs")


class Measured:
    """Measures (tile, key) images once per test session; key as in bench/validity.py (variant or 'edit/variant')."""

    def __init__(self, tiles, spec):
        self.tiles, self.spec, self.backend = tiles, spec, spec.create()
        self.done: dict[tuple[int, str], ImageMeasurement] = {}

    def image(self, tile: int, key: str) -> np.ndarray:
        base = self.tiles[tile]
        if "/" in key:
            edit, key = key.split("/")
            kind, name = edit.split(":")
            pts = np.asarray(self.get([(tile, "orig")])[0].points, dtype=np.float64)
            base = bench.warp(base, pts, *bench.WARPS[name]) if kind == "warp" else bench.recolor(base, pts, name, face_colors(base, pts[0], pts[1]))
        return np.ascontiguousarray(bench.ALL_VARIANTS[key](base))

    def get(self, keys: list[tuple[int, str]]) -> list[ImageMeasurement]:
        todo = [k for k in dict.fromkeys(keys) if k not in self.done]
        if todo:
            images = [self.image(t, k) for t, k in todo]
            for k, m in zip(todo, measure_arrays(self.backend, images)):
                self.done[k] = m
        return [self.done[k] for k in keys]


@pytest.fixture(scope="module")
def measured(tadne_tiles, nvxs):
    return Measured(tadne_tiles, nvxs)


def _ref(nvxs, ms: list[ImageMeasurement]) -> ReferenceStats:
    return ReferenceStats(backend=nvxs.identity(), rules=ExclusionRules().as_dict(), measurements=ms)


def _score(nvxs, ref_ms, smp_ms, colors: bool = True) -> float:
    if not colors:
        ref_ms = [_without_colors(m) for m in ref_ms]
        smp_ms = [_without_colors(m) for m in smp_ms]
    return compare(_ref(nvxs, ref_ms), smp_ms, nvxs.identity()).score


def _without_colors(m: ImageMeasurement) -> ImageMeasurement:
    c = ImageMeasurement.from_dict(m.to_dict())
    c.colors = None
    return c


def _auc(nvxs, measured, colors: bool) -> float:
    wins = total = 0.0
    smp = {a: measured.get([(a, k) for k in SMP_KEYS]) for a in CHARACTERS}
    for a in CHARACTERS:
        ref = measured.get([(a, k) for k in REF_KEYS])
        own = _score(nvxs, ref, smp[a], colors)
        for b in CHARACTERS:
            if b != a:
                other = _score(nvxs, ref, smp[b], colors)
                wins += 1.0 if own > other else 0.5 if own == other else 0.0
                total += 1
    return wins / total


def test_same_character_outranks_other_characters(nvxs, measured):
    """Pairwise AUC with 3 + 3 images and different variation kinds per side.

    Full benchmark, report half, n=4 (docs/validity.md): 0.98 shipped, 0.93 geometry only.
    """
    with_color = _auc(nvxs, measured, colors=True)
    geometry = _auc(nvxs, measured, colors=False)
    assert with_color >= 0.9, with_color  # measured here 0.97
    assert geometry >= 0.8, geometry  # measured here 0.93 (0.7 floor before formula v2)


def test_recoloured_hair_and_eyes_are_caught(nvxs, measured):
    """Hue-shifted hair or irises score below the unedited samples for every character (measured 1.00 on both halves)."""
    for part in ("hair", "eyes"):
        caught = 0
        for a in CHARACTERS:
            ref = measured.get([(a, k) for k in REF_KEYS])
            plain = _score(nvxs, ref, measured.get([(a, k) for k in SMP_KEYS]))
            edited = _score(nvxs, ref, measured.get([(a, f"recolor:{part}/{k}") for k in SMP_KEYS]))
            caught += edited < plain
        assert caught >= len(CHARACTERS) - 1, (part, caught)


def test_eye_spacing_warp_moves_the_score(nvxs, measured):
    """The landmark-guided warp really moves nvxs's eyes (measured: +-10 % warp -> about +-6 % detected eye distance),
    interocular follows it (formula v2: eye distance / eye-to-mouth height; here +-2.0 %, v1's box-normalised one
    +-1.0 %), and the score ranks +-10 % eye-spacing samples below the unwarped ones (here 9 of 12 trials; full
    benchmark, n=4: 0.78-0.83 out of sample, 0.72-0.78 before; docs/validity.md)."""
    moved, ratio_moved, below = [], [], 0
    for a in CHARACTERS:
        ref = measured.get([(a, k) for k in REF_KEYS])
        plain_ms = measured.get([(a, k) for k in SMP_KEYS])
        plain = _score(nvxs, ref, plain_ms)
        for s in ("+10%", "-10%"):
            sign = 1 if s == "+10%" else -1
            warped_ms = measured.get([(a, f"warp:eyes_{s}/{k}") for k in SMP_KEYS])
            below += _score(nvxs, ref, warped_ms) < plain
            for p, w in zip(plain_ms, warped_ms):
                if p.status == "ok" and w.status == "ok":
                    d = [np.hypot(*np.subtract(m.points[1], m.points[0])) for m in (p, w)]
                    moved.append(sign * (d[1] / d[0] - 1))
                    ratio_moved.append(sign * (w.ratios["interocular_ratio"] / p.ratios["interocular_ratio"] - 1))
    assert np.mean(moved) > 0.03, np.mean(moved)  # eyes move apart / together as warped
    assert np.mean(ratio_moved) > 0.015, np.mean(ratio_moved)  # and interocular sees it (measured 0.020; v1's /W: 0.010)
    assert below / (2 * len(CHARACTERS)) >= FLOOR_EYE_POWER, below


def test_memorisation_gate_fires_on_copies_only(measured):
    """Copies (exact, JPEG, rescale, roll, mirrored, cropped, padded) of a training image are flagged; other characters are not.

    Full benchmark, report half (docs/validity.md), whole-image <= 12 bits OR face-aligned <= 10:
    0.99 of JPEG/rescale/roll copies, 0.92 of crop/pad copies (0.71 with the whole-image hash alone),
    0.93 of mirrored ones, 0 of 5,000+ other-character images.
    """
    from types import SimpleNamespace

    keys = ("orig",) + SMP_KEYS + ("mirror", "crop_tl", "pad_8", "crop_c")
    ms = {a: measured.get([(a, k) for k in keys]) for a in CHARACTERS}
    flagged = image_only = total = 0
    for a in CHARACTERS:
        train = SimpleNamespace(measurements=[ms[a][0]], phashes=[ms[a][0].phash])
        img_h, face_h = reference_hashes(train), reference_face_hashes(train)
        assert len(face_h) == 10  # hash + mirror at 5 window sizes
        assert memorization_share(ms[a][:1], img_h, reference_face_hashes=face_h) == 1.0  # the exact copy always
        others = [m for b in CHARACTERS if b != a for m in ms[b]]
        assert memorization_share(others, img_h, reference_face_hashes=face_h) == 0.0, a
        flagged += memorization_share(ms[a], img_h, reference_face_hashes=face_h) * len(keys)
        image_only += memorization_share(ms[a], img_h) * len(keys)
        total += len(keys)
    assert flagged / total >= FLOOR_COPIES_FLAGGED, flagged / total
    assert flagged >= image_only  # the face hash only adds (since measurement v4 the drawn-area windows catch most crops/pads)


def test_compare_reports_colours_and_mirrored_copies(nvxs, measured):
    """compare() uses colours when both sides have them (and says so in score_version) and checks mirrored hashes."""
    a = CHARACTERS[0]
    ref = measured.get([(a, k) for k in REF_KEYS])
    rep = compare(_ref(nvxs, ref), measured.get([(a, "mirror")]), nvxs.identity())
    assert rep.score_version.endswith("-v4") and set(rep.color_distance) == {"hair", "eyes", "hair_hist"}
    assert rep.memorization == 1.0
    assert "consistency/color_hair_z" in rep.scalars()
    geo = compare(_ref(nvxs, [_without_colors(m) for m in ref]), [_without_colors(measured.get([(a, "mirror")])[0])], nvxs.identity())
    assert geo.score_version.endswith("-geometry") and geo.color_distance is None


# --- unit checks of the pieces (no detector) -------------------------------------------------------
def test_lab_conversion_known_values():
    lab = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]]))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)
    back = bench.lab_to_rgb(lab)
    np.testing.assert_array_equal(back, [[255, 255, 255], [0, 0, 0], [255, 0, 0]])


def test_color_distance_units():
    ref = [{"hair": [50, 10, 10], "eyes": [40, 0, 30]}] * 3
    same = color_distances(ref, ref)
    assert same == {"hair": 0.0, "eyes": 0.0}
    moved = color_distances(ref, [{"hair": [50, 10, 26], "eyes": None}])
    assert moved["hair"] == pytest.approx(2.0)  # 16 dE over the 8 dE floor (reference spread 0)
    assert moved["eyes"] is None
    # colour enters the score beside the ratios, capped like them
    zs = {"nose_to_mouth_ratio": 0.0}
    assert consistency_score(zs, 1.0, "nvxs", {"hair": 10.0, "eyes": 0.0}) == pytest.approx(consistency_score(zs, 1.0, "nvxs", {"hair": 3.0, "eyes": 0.0}))
    assert consistency_score(zs, 1.0, "nvxs", moved) < consistency_score(zs, 1.0, "nvxs", same) == 1.0


def test_phash_mirror_matches_mirrored_image():
    rng = np.random.default_rng(0)
    img = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    img[:, :40] //= 3  # asymmetric, so mirroring changes the plain hash
    assert phash_mirror(img) == phash(np.ascontiguousarray(img[:, ::-1]))
    mirrored = np.ascontiguousarray(img[:, ::-1])
    h, hm = copy_hashes(img), copy_hashes(mirrored)
    assert hm["drawn"] == h["drawn_mirror"] and len(h["drawn"]) == GATE_BITS // 4
    assert hamming(h["drawn"], hm["drawn"]) > MEMORIZATION_HAMMING


def test_gate_hashes_what_is_drawn_not_the_canvas():
    """The drawn-area hash ignores a plain canvas (its colour, margins, position); a busy border is kept."""
    rng = np.random.default_rng(5)
    drawing = (rng.random((12, 12, 3)) * 255).astype(np.uint8).repeat(16, 0).repeat(16, 1)  # 192 px "drawing"
    white = np.full((400, 400, 3), 255, np.uint8)
    white[100:292, 80:272] = drawing
    blue = np.full((360, 420, 3), (230, 238, 250), np.uint8)
    blue[40:232, 150:342] = drawing
    assert content_box(white) == (80, 100, 272, 292)
    a, b = copy_hashes(white), copy_hashes(blue)
    assert hamming(a["drawn"], b["drawn"]) <= 4
    assert content_box(drawing) is None  # no plain border: the whole image is what is drawn
    other = np.full((400, 400, 3), 255, np.uint8)
    other[100:292, 80:272] = (rng.random((12, 12, 3)) * 255).astype(np.uint8).repeat(16, 0).repeat(16, 1)
    assert hamming(a["drawn"], copy_hashes(other)["drawn"]) > MEMORIZATION_HAMMING  # same canvas, other drawing
    # a 5 % crop of the drawing meets one of the reference windows
    crop = np.ascontiguousarray(drawing[10:, 10:])
    from kohya_ext.comparison import CopyGate, reference_hashes

    ref = ImageMeasurement(name="r", status="ok", drawn_hash=copy_hashes(drawing)["drawn"], drawn_hash_mirror=copy_hashes(drawing)["drawn_mirror"],
                           window_hashes=copy_hashes(drawing)["windows"])
    ch = copy_hashes(crop)
    smp = ImageMeasurement(name="s", status="ok", drawn_hash=ch["drawn"], window_hashes=ch["windows"])
    d_img, _ = CopyGate(reference_hashes([ref])).distances(smp)
    assert d_img <= MEMORIZATION_HAMMING < hamming(ch["drawn"], ref.drawn_hash)


def test_face_phash_follows_the_face_not_the_frame():
    """The face-aligned hash ignores a pad/crop around the face and matches a mirrored copy through its mirror hash."""
    rng = np.random.default_rng(3)
    img = np.zeros((200, 240, 3), np.uint8)
    img[40:160, 60:180] = (rng.random((15, 15, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)  # blocky "face"
    el, er = np.array([100.0, 80.0]), np.array([140.0, 80.0])
    h = copy_hashes(img, (el, er))
    padded = np.pad(img, ((30, 10), (5, 25), (0, 0)), mode="edge")
    assert copy_hashes(padded, (el + [5, 30], er + [5, 30]))["face"] == h["face"]
    cropped = np.ascontiguousarray(img[20:, 30:])
    assert copy_hashes(cropped, (el - [30, 20], er - [30, 20]))["face"] == h["face"]
    mirrored = np.ascontiguousarray(img[:, ::-1])
    w = img.shape[1]
    assert hamming(copy_hashes(mirrored, ([w - er[0], er[1]], [w - el[0], el[1]]))["face"], h["face_mirror"]) <= 8
    assert len(h["face_scaled"]) == 2 * len(FACE_REFERENCE_SCALES)
    assert copy_hashes(padded)["drawn"] == h["drawn"]  # on this plain (black) canvas the drawn-area hash follows it too
    assert copy_hashes(img, (el, el + [2, 0]))["face"] is None  # eyes too close to place a window
