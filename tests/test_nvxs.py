"""nvxs backend: ctypes into the animeface wheel's libnvxs, on the 36 shared TADNE portraits."""

from __future__ import annotations

import numpy as np
import pytest

from kohya_ext.backends import nvxs
from kohya_ext.backends.base import ImageFaces
from kohya_ext.errors import KohyaExtError
from kohya_ext.landmarks import NVXS_POINTS, flip_permutation

available, why = nvxs.nvxs_available()
pytestmark = pytest.mark.skipif(not available, reason=why)

EYE_L, EYE_R, INNER_L, INNER_R, NOSE, MOUTH_L, MOUTH_R, MOUTH_C, CHIN = range(9)


@pytest.fixture(scope="session")
def backend() -> nvxs.NvxsBackend:
    return nvxs.NvxsBackend(threads=2)


@pytest.fixture(scope="session")
def grid_results(backend, tadne_tiles) -> list[ImageFaces]:
    """All 36 tiles, detected once (about 0.3 s per tile per core)."""
    return backend.detect(tadne_tiles)


@pytest.fixture(scope="session")
def face_tiles(grid_results) -> list[int]:
    """A dozen tiles with faces, multi-face tiles first: the subset re-run by the costlier tests."""
    with_faces = [i for i, r in enumerate(grid_results) if r.faces]
    return sorted(with_faces, key=lambda i: -len(grid_results[i].faces))[:12]


def assert_same(a: list[ImageFaces], b: list[ImageFaces]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert (ra.width, ra.height, len(ra.faces)) == (rb.width, rb.height, len(rb.faces))
        for fa, fb in zip(ra.faces, rb.faces):
            np.testing.assert_array_equal(fa.box, fb.box)
            np.testing.assert_array_equal(fa.points, fb.points)
            np.testing.assert_array_equal(fa.point_scores, fb.point_scores)
            assert (fa.score, fa.face_width, fa.colors) == (fb.score, fb.face_width, fb.colors)


def test_finds_faces_on_most_tiles(grid_results, tadne_tiles):
    assert len(grid_results) == len(tadne_tiles)
    assert sum(1 for r in grid_results if r.faces) >= 30
    for r in grid_results:
        assert (r.width, r.height) == (512, 512)
        for f in r.faces:
            assert isinstance(f, nvxs.NvxsFace)
            assert f.points.shape == (len(NVXS_POINTS), 2) and f.points.dtype == np.float32
            assert 0.0 <= f.score <= 1.0
            np.testing.assert_array_equal(f.point_scores, np.full(len(NVXS_POINTS), f.score, np.float32))
            x0, y0, x1, y1 = f.box
            assert x1 - x0 == y1 - y0 == f.face_width > 40  # square box of side d, d >= nvxs's 43 px minimum
            assert f.size == pytest.approx(f.face_width)


def test_left_right_convention(grid_results):
    """Index 0 is the image-left eye (nvxs itself calls it right_eye)."""
    n = 0
    for r in grid_results:
        for f in r.faces:
            p = f.points
            assert p[EYE_L, 0] < p[EYE_R, 0]
            assert p[EYE_L, 0] < p[INNER_L, 0] < p[EYE_R, 0]
            assert p[EYE_L, 0] < p[INNER_R, 0] < p[EYE_R, 0]
            assert p[INNER_L, 1] == p[EYE_L, 1] and p[INNER_R, 1] == p[EYE_R, 1]
            assert p[MOUTH_L, 0] < p[MOUTH_C, 0] < p[MOUTH_R, 0]
            assert min(p[EYE_L, 1], p[EYE_R, 1]) < p[NOSE, 1] < p[CHIN, 1]
            x0, y0, x1, y1 = f.box
            assert np.all((p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1 + 0.2 * f.face_width))
            n += 1
    assert n >= 30


def test_colors_are_rgb_and_match_the_skin(grid_results, tadne_tiles):
    """nv_face_analyze's skin colour is the dominant colour between the eyes and the mouth: compare
    with the median pixel there, which also catches an RGB/BGR mix-up (anime skin is warm, R > B)."""
    close = total = 0
    for img, r in zip(tadne_tiles, grid_results):
        for f in r.faces:
            total += 1
            assert f.colors is not None
            assert set(f.colors) == {"skin", "hair", "left_eye", "right_eye"}
            for rgb in f.colors.values():
                assert len(rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)
            p = f.points
            region = img[int(max(p[EYE_L, 1], p[EYE_R, 1])) : int(p[MOUTH_C, 1]), int(p[EYE_L, 0]) : int(p[EYE_R, 0])]
            median = np.median(region.reshape(-1, 3), axis=0)
            close += int(np.abs(median - np.array(f.colors["skin"])).max() <= 20)
    assert close >= 0.8 * total


def test_repeatable(backend, tadne_tiles, grid_results, face_tiles):
    assert_same(backend.detect([tadne_tiles[i] for i in face_tiles]), [grid_results[i] for i in face_tiles])


def test_one_thread_equals_two(tadne_tiles, grid_results, face_tiles):
    one = nvxs.NvxsBackend(threads=1).detect([tadne_tiles[i] for i in face_tiles])
    assert_same(one, [grid_results[i] for i in face_tiles])


def test_mirrored_tile_gives_mirrored_points(backend, tadne_tiles, grid_results, face_tiles):
    """nvxs's window scan is not exactly mirror-symmetric: points agree within a few px, while
    a left/right or inner/outer mix-up would be off by a good part of the face width."""
    perm = flip_permutation("nvxs")
    mirrored = backend.detect([tadne_tiles[i][:, ::-1] for i in face_tiles])  # a non-contiguous view too
    errors = []
    for i, m in zip(face_tiles, mirrored):
        width = tadne_tiles[i].shape[1]
        for f in grid_results[i].faces:
            if f.score < 0.9:
                continue
            candidates = []
            for g in m.faces:
                back = g.points.copy()
                back[:, 0] = width - back[:, 0]
                candidates.append(np.abs(back[perm] - f.points).max())
            assert candidates, f"tile {i}: face at {f.box.tolist()} not found in the mirror image"
            err = min(candidates)
            assert err <= 0.15 * f.face_width, f"tile {i}: mirrored points off by {err:.1f} px (d={f.face_width})"
            errors.append(err)
    assert len(errors) >= 10
    assert np.median(errors) <= 8.0


def test_blank_and_noise_give_no_faces(backend):
    rng = np.random.default_rng(0)
    images = [
        np.zeros((300, 301, 3), np.uint8),
        np.full((256, 256, 3), 255, np.uint8),
        rng.integers(0, 256, (317, 401, 3), dtype=np.uint8),
        np.zeros((20, 500, 3), np.uint8),  # smaller than nvxs's smallest window
    ]
    results = backend.detect(images)
    assert [len(r.faces) for r in results] == [0, 0, 0, 0]
    assert [(r.width, r.height) for r in results] == [(301, 300), (256, 256), (401, 317), (500, 20)]


def test_odd_sizes_and_strided_arrays(backend, tadne_tiles, grid_results, face_tiles):
    i = face_tiles[-1]
    tile = tadne_tiles[i]
    padded = np.pad(tile, ((0, 37), (0, 23), (0, 0)), mode="edge")  # 549 x 535: same faces, same place
    half = tile[::2, ::2]
    res = backend.detect([padded, np.asfortranarray(tile), half, np.ascontiguousarray(half)])
    assert (res[0].width, res[0].height) == (535, 549)
    assert_same(res[:1], [ImageFaces(grid_results[i].faces, 535, 549)])
    assert_same(res[1:2], grid_results[i : i + 1])
    assert_same(res[2:3], res[3:4])
    assert res[2].faces, "the half-size tile still holds a detectable face"


def test_gray_input_and_bad_input(backend):
    assert backend.detect([np.zeros((64, 64), np.uint8)])[0].faces == []
    with pytest.raises(KohyaExtError, match="RGB uint8"):
        backend.detect([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(KohyaExtError, match="RGB uint8"):
        backend.detect([np.zeros((64, 64, 4), np.uint8)])
    assert backend.detect([]) == []


def test_identity_and_threads(backend):
    ident = backend.identity()
    assert ident["backend"] == "nvxs"
    assert ident["library"].startswith("libnvxs-") and ".so" in ident["library"]
    assert ident["version"].startswith("animeface ")
    assert len(ident["library_sha256"]) == 16
    assert backend.point_names == NVXS_POINTS
    assert nvxs.NvxsBackend().threads >= 1
    with pytest.raises(KohyaExtError):
        nvxs.NvxsBackend(threads=0)


def test_missing_wheel_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(nvxs.importlib.util, "find_spec", lambda name: None)
    nvxs._load.cache_clear()
    try:
        ok, reason = nvxs.nvxs_available()
        assert not ok and "pip install animeface==2.0.3" in reason and "--backend hrnet" in reason
        with pytest.raises(KohyaExtError, match="animeface"):
            nvxs.NvxsBackend()
    finally:
        monkeypatch.undo()
        nvxs._load.cache_clear()
    assert nvxs.nvxs_available()[0]
