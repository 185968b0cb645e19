"""Ratio math on hand-built landmark sets with known answers; invariances; the meaning of indices."""

from __future__ import annotations

import numpy as np
import pytest

from kohya_ext.landmarks import FLIP_PAIRS, HRNET_POINTS, NVXS_POINTS, POINT_LAYOUTS, flip_permutation
from kohya_ext.ratios import RATIO_NAMES, ExclusionRules, compute_ratios

# A synthetic HRNetV2 face: eye line at y=0, midline x=0, face width W=100, eye-to-chin H=100.
HRNET_FACE = {
    0: (-50, 5), 4: (50, 5),  # contour at eye level -> W = 100
    1: (-40, 64), 3: (40, 64), 2: (0, 100),  # jaw, chin -> H = 100
    5: (-44, -22), 6: (-28, -26), 7: (-12, -22),  # image-left brow, mean y = -23.33
    8: (12, -22), 9: (28, -26), 10: (44, -22),
    11: (-40, -2), 12: (-28, -8), 13: (-16, -2), 14: (-40, 2), 15: (-28, 8), 16: (-16, 2),  # left eye, centre (-28, 0)
    17: (16, -2), 18: (28, -8), 19: (40, -2), 20: (16, 2), 21: (28, 8), 22: (40, 2),  # right eye, centre (28, 0)
    23: (0, 30),  # nose
    24: (-8, 64), 25: (0, 62), 26: (8, 64), 27: (0, 66),  # mouth, centre (0, 64)
}  # fmt: skip
HRNET_EXPECTED = {
    "interocular_ratio": 56 / 100,
    "eye_to_nose_ratio": 30 / 100,
    "nose_to_mouth_ratio": 34 / 100,
    "mouth_width_ratio": 16 / 100,
    "chin_length_ratio": 36 / 100,
    "eyebrow_height_ratio": (-8 - (-70 / 3)) / 100,
    "intercanthal_ratio": 32 / 100,
}
# nvxs: eye centres, inner eye-box edges, nose, mouth corners and centre, chin; W = box side 120.
# Eye spacings are divided by the eye-to-mouth height v(mouth) = 63 (formula version 2), the rest as hrnet.
NVXS_FACE = {0: (-27, 0), 1: (27, 0), 2: (-15, 0), 3: (15, 0), 4: (0, 33), 5: (-10, 63), 6: (10, 63), 7: (0, 63), 8: (0, 100)}
NVXS_BOX = np.array([-60.0, -40.0, 60.0, 80.0])
NVXS_EXPECTED = {
    "interocular_ratio": 54 / 63,
    "eye_to_nose_ratio": 33 / 100,
    "nose_to_mouth_ratio": 30 / 100,
    "mouth_width_ratio": 20 / 120,
    "chin_length_ratio": 37 / 100,
    "intercanthal_ratio": 30 / 63,
}


def _points(face: dict, k: int) -> np.ndarray:
    return np.array([face[i] for i in range(k)], dtype=np.float64)


def _ratios(backend, pts, box, scores=None):
    n = len(POINT_LAYOUTS[backend])
    scores = np.ones((1, n)) if scores is None else scores
    return compute_ratios(backend, pts[None], scores, box[None], ExclusionRules(min_face_px=1))


def _box_of(pts, pad=10.0):
    return np.array([pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad])


def test_hrnet_known_answers():
    pts = _points(HRNET_FACE, 28)
    rb = _ratios("hrnet", pts, _box_of(pts))
    assert rb.face_excluded == [None]
    for j, name in enumerate(RATIO_NAMES):
        assert rb.valid[0, j], name
        assert rb.values[0, j] == pytest.approx(HRNET_EXPECTED[name], abs=1e-9), name


def test_nvxs_known_answers_and_no_eyebrows():
    pts = _points(NVXS_FACE, 9)
    rb = _ratios("nvxs", pts, NVXS_BOX)
    for j, name in enumerate(RATIO_NAMES):
        if name == "eyebrow_height_ratio":
            assert not rb.valid[0, j]
        else:
            assert rb.valid[0, j] and rb.values[0, j] == pytest.approx(NVXS_EXPECTED[name], abs=1e-9), name


def test_nvxs_eye_spacing_ignores_the_face_box():
    """nvxs's box follows the eyes, so the eye spacings must not depend on it (docs/validity.md);
    they follow the eyes against the eye-to-mouth height instead."""
    pts = _points(NVXS_FACE, 9)
    io, ic, mw = (RATIO_NAMES.index(n) for n in ("interocular_ratio", "intercanthal_ratio", "mouth_width_ratio"))
    base = _ratios("nvxs", pts, NVXS_BOX).values[0]
    wider_box = _ratios("nvxs", pts, NVXS_BOX * 1.2).values[0]
    assert wider_box[io] == pytest.approx(base[io]) and wider_box[ic] == pytest.approx(base[ic])
    assert wider_box[mw] == pytest.approx(base[mw] / 1.2)  # mouth width stays box-normalised
    apart = pts.copy()
    apart[[0, 2], 0] -= 3.0  # image-left eye moves out by 3 px
    apart[[1, 3], 0] += 3.0
    moved = _ratios("nvxs", apart, NVXS_BOX).values[0]
    assert moved[io] == pytest.approx(60 / 63) and moved[ic] == pytest.approx(36 / 63)
    pts_up = pts.copy()
    pts_up[7, 1] = -5.0  # mouth above the eye line: no usable eye-to-mouth height
    assert _ratios("nvxs", pts_up, NVXS_BOX).face_excluded == ["degenerate landmarks"]


def _similarity(pts, angle, scale, shift):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T * scale + shift


@pytest.mark.parametrize("backend", ["hrnet", "nvxs"])
def test_rotation_and_scale_invariance(backend):
    rng = np.random.default_rng(0)
    face, k = (HRNET_FACE, 28) if backend == "hrnet" else (NVXS_FACE, 9)
    pts = _points(face, k) + rng.normal(0, 1.5, (k, 2))  # an irregular face, not only the symmetric one
    box = _box_of(pts) if backend == "hrnet" else NVXS_BOX
    base = _ratios(backend, pts, box)
    for angle, scale in [(0.3, 1.0), (-0.5, 2.5), (1.0, 0.4), (np.pi / 2, 3.0)]:
        moved = _similarity(pts, angle, scale, np.array([300.0, 200.0]))
        # nvxs' width is its box side, which scales with the face (the detector boxes the rotated face)
        mbox = _box_of(moved) if backend == "hrnet" else np.array([0, 0, 120 * scale, 120 * scale])
        got = _ratios(backend, moved, mbox)
        np.testing.assert_allclose(got.values, base.values, atol=1e-9)
        assert (got.valid == base.valid).all()


@pytest.mark.parametrize("backend", ["hrnet", "nvxs"])
def test_mirror_with_flip_permutation_gives_same_face(backend):
    """Mirroring a symmetric face and re-indexing with the flip pairs must reproduce it point for point:
    a broken or missing flip pair fails here."""
    face, k = (HRNET_FACE, 28) if backend == "hrnet" else (NVXS_FACE, 9)
    pts = _points(face, k)
    mirrored = pts * np.array([-1.0, 1.0])
    np.testing.assert_allclose(mirrored[flip_permutation(backend)], pts, atol=1e-12)


@pytest.mark.parametrize("backend", ["hrnet", "nvxs"])
def test_mirrored_irregular_face_keeps_its_ratios(backend):
    rng = np.random.default_rng(1)
    face, k = (HRNET_FACE, 28) if backend == "hrnet" else (NVXS_FACE, 9)
    pts = _points(face, k) + rng.normal(0, 2.0, (k, 2))
    box = _box_of(pts) if backend == "hrnet" else NVXS_BOX
    mirrored = (pts * np.array([-1.0, 1.0]))[flip_permutation(backend)]
    np.testing.assert_allclose(_ratios(backend, mirrored, box).values, _ratios(backend, pts, box).values, atol=1e-9)


@pytest.mark.parametrize("layout", ["hrnet", "nvxs"])
def test_flip_pairs_pair_left_with_right_names(layout):
    names = POINT_LAYOUTS[layout]
    paired = set()
    for a, b in FLIP_PAIRS[layout]:
        assert "left" in names[a] and names[a].replace("left", "right") == names[b], (names[a], names[b])
        paired |= {a, b}
    for i, n in enumerate(names):  # every sided point has its pair, midline points have none
        assert (("left" in n) or ("right" in n)) == (i in paired), n


def test_point_names_pinned():
    assert HRNET_POINTS[2] == "chin" and HRNET_POINTS[23] == "nose"
    assert HRNET_POINTS[13] == "eye_left_upper_inner" and HRNET_POINTS[17] == "eye_right_upper_inner"
    assert NVXS_POINTS[0] == "eye_left_center" and NVXS_POINTS[8] == "chin"


def test_low_point_score_excludes_only_dependent_ratios():
    pts = _points(HRNET_FACE, 28)
    scores = np.ones((1, 28))
    scores[0, 23] = 0.05  # nose hidden
    rb = _ratios("hrnet", pts, _box_of(pts), scores)
    dep = {n: rb.valid[0, j] for j, n in enumerate(RATIO_NAMES)}
    assert not dep["eye_to_nose_ratio"] and not dep["nose_to_mouth_ratio"]
    assert dep["mouth_width_ratio"] and dep["interocular_ratio"] and dep["chin_length_ratio"]
    scores = np.ones((1, 28))
    scores[0, 6] = 0.05  # a brow under bangs
    rb = _ratios("hrnet", pts, _box_of(pts), scores)
    assert [n for j, n in enumerate(RATIO_NAMES) if not rb.valid[0, j]] == ["eyebrow_height_ratio"]


def test_small_and_turned_faces_are_excluded_with_reason():
    pts = _points(HRNET_FACE, 28)
    rules = ExclusionRules(min_face_px=48)
    tiny = pts * 0.2
    rb = compute_ratios("hrnet", tiny[None], np.ones((1, 28)), _box_of(tiny, 1)[None], rules)
    assert rb.face_excluded == ["face too small"] and not rb.valid.any()
    turned = pts.copy()
    turned[23] = (40, 30)  # nose far towards one side: a head turned ~profile
    rb = compute_ratios("hrnet", turned[None], np.ones((1, 28)), _box_of(turned)[None], rules)
    assert rb.face_excluded == ["face too turned"]
