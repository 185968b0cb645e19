"""The batched hrnet backend computes what anime-face-detector 0.1.0 computes, one image at a time.

CPU only, no network: both sides load the same seeded random weights (tests/hrnet_fixtures.py,
the package's exact key layout, strict loading). Random weights give arbitrary heatmaps and
boxes, so heatmaps and boxes are compared directly, and the decoder is checked on synthetic
heatmaps with known sub-pixel peaks.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import hrnet_fixtures as hf

afd = pytest.importorskip("anime_face_detector", reason="anime-face-detector 0.1.0 is not installed")
from anime_face_detector import LandmarkDetector  # noqa: E402
from anime_face_detector import _landmark  # noqa: E402
from anime_face_detector._face import _preprocess, load_face_detector  # noqa: E402
from anime_face_detector._landmark import load_landmark_model  # noqa: E402
from anime_face_detector._vendor.mmpose import (  # noqa: E402
    bbox_xywh2cs,
    bbox_xyxy2xywh,
    get_affine_transform,
    keypoints_from_heatmaps,
)

from kohya_ext.backends import hrnet  # noqa: E402
from kohya_ext.backends.hrnet import HrnetBackend, decode_heatmaps, hrnet_identity, resize_like_cv2  # noqa: E402
from kohya_ext.backends.weights import WeightsMismatchError, file_sha256, load_state_dict_strict, WeightFile  # noqa: E402
from kohya_ext.landmarks import HRNET_FLIP_PAIRS, HRNET_POINTS  # noqa: E402

OPENCV5 = int(cv2.__version__.split(".")[0]) >= 5
# Heatmaps: BN folding and batch-size-dependent conv kernels change float rounding only
# (measured max |diff| 2e-6 on maps of magnitude ~1.6); 1e-4 leaves room for other CPUs.
HEATMAP_ATOL = 1e-4
HEATMAP_RTOL = 1e-4

# (tile index, boxes x0, y0, x1, y1); several per tile, some partly outside the 512x512 tile
TILE_BOXES = {
    0: [(100, 80, 400, 420), (-60, -40, 180, 200)],
    7: [(300.5, 250.25, 570.0, 530.75), (140, 120, 360, 330)],
    14: [(60, 100, 470, 470), (400, 380, 600, 560)],
}


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    return hf.random_weights_dir(tmp_path_factory.mktemp("hrnet_random_weights"), ("hrnetv2", "yolov3"))


@pytest.fixture(scope="session")
def backend(weights_dir):
    return HrnetBackend(
        device="cpu",
        landmark_weights=str(weights_dir / "hrnetv2.safetensors"),
        detector_weights=str(weights_dir / "yolov3.safetensors"),
        batch_size=4,
    )


@pytest.fixture(scope="session")
def package_landmarks(weights_dir):
    return load_landmark_model(str(weights_dir / "hrnetv2.safetensors"), device="cpu")


@pytest.fixture(scope="session")
def portraits(tadne_tiles):
    """Three tiles plus a non-square crop: images of different sizes go through one gather."""
    images = [tadne_tiles[i] for i in TILE_BOXES] + [tadne_tiles[21][40:440, 100:400].copy()]
    boxes = [np.array(b, dtype=np.float32) for b in TILE_BOXES.values()]
    boxes.append(np.array([(20, 30, 280, 390), (150, -50, 350, 120)], dtype=np.float32))
    return images, boxes


def _bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


def test_constants_match_the_package():
    assert hrnet.IMAGE_SIZE == _landmark.IMAGE_SIZE[0] == _landmark.IMAGE_SIZE[1]
    assert hrnet.BBOX_PADDING == _landmark.BBOX_PADDING
    assert hrnet.IMAGE_MEAN == _landmark.IMAGE_MEAN and hrnet.IMAGE_STD == _landmark.IMAGE_STD
    assert hrnet.MODULATE_KERNEL == _landmark.HEAD_TEST_CFG["modulate_kernel"]
    assert _landmark.HEAD_TEST_CFG["post_process"] == "unbiased" and _landmark.HEAD_TEST_CFG["shift_heatmap"]
    assert tuple(map(tuple, _landmark.FLIP_PAIRS)) == HRNET_FLIP_PAIRS
    assert len(HRNET_POINTS) == 28


@pytest.mark.skipif(not OPENCV5, reason="crops follow OpenCV 5's float warpAffine; OpenCV 4 quantises to 1/32 px")
def test_crops_match_cv2_warpaffine(backend, portraits):
    images, boxes = portraits
    ours = backend.crop_faces(images, boxes).crops.permute(0, 2, 3, 1).numpy()
    ours = (ours * np.array(hrnet.IMAGE_STD) + np.array(hrnet.IMAGE_MEAN)) * 255.0
    ref = []
    for image, bx in zip(images, boxes):
        for box in bbox_xyxy2xywh(bx):
            center, scale = bbox_xywh2cs(box, aspect_ratio=1.0, padding=1.25)
            trans = get_affine_transform(center, scale, 0, (256, 256))
            ref.append(cv2.warpAffine(image, trans, (256, 256), flags=cv2.INTER_LINEAR))
    diff = np.abs(ours - np.stack(ref))
    assert diff.max() < 1.01  # at most one grey level, from float rounding
    assert (diff > 0.5).mean() < 1e-4
    # the partly-outside boxes really reach outside: black border in both
    assert (np.stack(ref)[1] == 0).all(axis=-1).any()


def test_batched_heatmaps_match_package(backend, package_landmarks, portraits):
    images, boxes = portraits
    ours = backend.heatmaps(backend.crop_faces(images, boxes)).numpy()
    ref = np.concatenate(
        [package_landmarks.detect(_bgr(im), bx, flip_test=True, return_heatmap=True)[1] for im, bx in zip(images, boxes)]
    )
    assert ours.shape == ref.shape == (sum(len(b) for b in boxes), 28, 64, 64)
    assert np.abs(ref).max() > 0.1  # not a degenerate all-zero comparison
    np.testing.assert_allclose(ours, ref, atol=HEATMAP_ATOL, rtol=HEATMAP_RTOL)


def test_heatmaps_without_flip_test_match_package(backend, package_landmarks, portraits):
    images, boxes = portraits
    backend.flip_test = False
    try:
        ours = backend.heatmaps(backend.crop_faces(images[:1], boxes[:1])).numpy()
    finally:
        backend.flip_test = True
    ref = package_landmarks.detect(_bgr(images[0]), boxes[0], flip_test=False, return_heatmap=True)[1]
    np.testing.assert_allclose(ours, ref, atol=HEATMAP_ATOL, rtol=HEATMAP_RTOL)
    flipped = package_landmarks.detect(_bgr(images[0]), boxes[0], flip_test=True, return_heatmap=True)[1]
    assert np.abs(flipped - ref).max() > 100 * HEATMAP_ATOL  # the flip test really changes the maps


def _synthetic_heatmaps(rng: np.random.Generator, n: int):
    """Gaussian peaks (sigma 2, like the training targets) at known sub-pixel positions."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    truth = rng.uniform(3.0, 60.0, size=(n, 28, 2))
    amp = rng.uniform(0.3, 1.0, size=(n, 28))
    hm = amp[..., None, None] * np.exp(
        -((xx - truth[..., 0, None, None]) ** 2 + (yy - truth[..., 1, None, None]) ** 2) / (2 * 2.0**2)
    )
    hm += rng.uniform(-0.01, 0.01, size=hm.shape)  # no exact ties, some negative values
    # edge cases: peak in the outer 2-pixel band (no Taylor step), a map that is negative everywhere
    hm[0, 0] = np.exp(-((xx - 0.6) ** 2 + (yy - 30.2) ** 2) / 8.0)
    truth[0, 0] = (0.6, 30.2)
    hm[0, 1] = -0.5 + 0.1 * hm[0, 1]
    return hm.astype(np.float32), truth


def test_decoder_matches_package_on_known_peaks():
    rng = np.random.default_rng(7)
    hm, truth = _synthetic_heatmaps(rng, 6)
    centers = rng.uniform(100, 400, size=(6, 2)).astype(np.float32)
    scales = rng.uniform(0.8, 3.0, size=(6, 1)).repeat(2, axis=1).astype(np.float32)
    ref_pts, ref_vals = keypoints_from_heatmaps(hm, centers, scales, post_process="unbiased", kernel=11)
    pts, vals = decode_heatmaps(torch.from_numpy(hm), torch.from_numpy(centers), torch.from_numpy(scales))
    pts, vals = pts.numpy(), vals.numpy()
    np.testing.assert_allclose(pts, ref_pts, atol=0.05)  # image pixels; the brief allows 0.5
    np.testing.assert_allclose(vals, ref_vals[..., 0], atol=1e-6)
    # and both found the true peaks: DARK recovers a Gaussian's centre to a small fraction of a pixel
    px_per_cell = scales[:, 0] * 200.0 / 64.0
    true_img = truth * px_per_cell[:, None, None] + centers[:, None, :] - (scales[:, None, :] * 200.0) / 2
    err = np.abs(pts - true_img) / px_per_cell[:, None, None]
    regular = np.ones((6, 28), bool)
    regular[0, :2] = False
    assert err[regular].max() < 0.1
    assert err[0, 0, 0] > 0.3  # border peak: integer argmax, no refinement (like the package)
    assert (pts[0, 1] == (-1 * px_per_cell[0] + centers[0] - scales[0] * 100.0)).all()  # negative map -> -1


def test_strict_loading_rejects_renamed_and_missing_keys(tmp_path, weights_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights_dir / "hrnetv2.safetensors"))
    key = "keypoint_head.final_layer.0.weight"
    assert key in state
    renamed = dict(state)
    renamed["keypoint_head.final_layer.0.weights"] = renamed.pop(key)
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"missing keys keypoint_head\.final_layer\.0\.weight.*unexpected keys"):
        HrnetBackend(device="cpu", face_detector=None, landmark_weights=str(tmp_path / "renamed.safetensors"))

    missing = {k: v for k, v in state.items() if k != key}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    model = _landmark.LandmarkModel()
    with pytest.raises(WeightsMismatchError) as e:
        load_state_dict_strict(model, WeightFile("hrnetv2", tmp_path / "missing.safetensors", "argument"))
    msg = str(e.value)
    assert "\n" not in msg and key in msg and "hysts/anime-face-detector-hrnetv2" in msg


def test_yolo_preprocessing_is_bit_exact(tadne_tiles):
    rng = np.random.default_rng(3)
    images = [tadne_tiles[2], tadne_tiles[4][:300, :437].copy(), rng.integers(0, 256, (1216, 1000, 3), dtype=np.uint8)]
    for image in images:
        h, w = image.shape[:2]
        for new_w, new_h in [(608, int(608 * h / w + 0.5)), (500, 608), (w // 2, h // 2), (97, 41)]:
            ref = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            ours = resize_like_cv2(torch.from_numpy(image)[None], new_w, new_h)[0].numpy()
            assert np.array_equal(ours, ref), (image.shape, new_w, new_h)


def _strips(tiles):
    """Two 512x135 strips (608x160 after resize: no padding) and one 256x27 strip (another size).

    YOLOv3 resizes the long side to 608, so wide strips keep the CI cost of its forward low.
    Seeded noise gives flat regions texture: random weights score flat areas alike, and
    exactly tied scores make NMS keep either box of a tied pair.
    """
    rng = np.random.default_rng(11)
    strips = [tiles[1][:135], tiles[2][200:335], tiles[3][100:127, :256]]
    return [np.clip(s.astype(np.int16) + rng.integers(-40, 41, s.shape), 0, 255).astype(np.uint8) for s in strips]


def test_batched_detector_matches_package(backend, weights_dir, tadne_tiles):
    images = _strips(tadne_tiles)  # two of one size (one batch), one of another size
    package = load_face_detector("yolov3", str(weights_dir / "yolov3.safetensors"), device="cpu")

    # 1) the batched forward (two images in one batch) gives the package's head outputs
    h, w = images[0].shape[:2]
    pred_maps, _ = backend.yolo_forward([torch.from_numpy(im) for im in images[:2]], h, w)
    for j, image in enumerate(images[:2]):
        x, _ = _preprocess(_bgr(image), package.IMG_SCALE, package.MEAN, package.STD)
        with torch.inference_mode():
            ref_maps = package.bbox_head(package.neck(package.backbone(x)))[0]
        for ours, ref in zip(pred_maps, ref_maps):
            assert ref.abs().max() > 1.0
            torch.testing.assert_close(ours[j : j + 1].contiguous(), ref, atol=1e-4, rtol=1e-4)

    # 2) the boxes after decoding + NMS are the package's
    for image, got in zip(images, backend.detect_boxes(images)):
        ref = package.detect(_bgr(image))
        assert got.shape == ref.shape and len(ref) > 5
        # the best boxes, down to the first pair of scores within 1e-4, in the same order
        close = np.nonzero(np.abs(np.diff(ref[:, 4])) < 1e-4)[0]
        k = int(close[0]) if len(close) else len(ref)
        assert k >= 2
        np.testing.assert_allclose(got[:k], ref[:k], atol=0.05, rtol=1e-5)
        # all boxes as a set: NMS may keep the other box of a pair whose scores tie to rounding
        unmatched, missing = list(range(len(got))), 0
        for box in ref:
            d = np.abs(got[unmatched] - box)
            hit = np.nonzero((d[:, :4].max(axis=1) < 0.05) & (d[:, 4] < 1e-5))[0]
            if len(hit):
                unmatched.pop(int(hit[0]))
            else:
                missing += 1
        assert missing <= 0.05 * len(ref), f"{missing} of {len(ref)} package boxes not in the batched result"


def test_detector_input_tensor_equals_package_preprocessing(backend, tadne_tiles):
    image = _strips(tadne_tiles)[2]
    det = backend.detector_net
    ref, meta = _preprocess(_bgr(image), det.IMG_SCALE, det.MEAN, det.STD)
    captured = {}
    hook = det.backbone.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0].clone()))
    try:
        backend.detect_boxes([image])
    finally:
        hook.remove()
    assert captured["x"].shape == ref.shape
    assert torch.equal(captured["x"].contiguous(), ref)


def test_detect_assembles_faces_like_landmarkdetector(backend, weights_dir, tadne_tiles, monkeypatch):
    """detect(): min score filter, box scaling by 1.1 and landmarks, against LandmarkDetector on the same boxes."""
    images = [tadne_tiles[5], tadne_tiles[30][:, :400].copy()]
    raw = [np.array([[120, 90, 380, 400, 0.93], [10, 10, 60, 60, 0.2]], np.float32),
           np.array([[50, 60, 330, 380, 0.71]], np.float32)]
    monkeypatch.setattr(backend, "detect_boxes", lambda imgs: [r.copy() for r in raw])
    result = backend.detect(images)

    package = LandmarkDetector(weights_dir / "hrnetv2.safetensors", device="cpu")
    assert [len(r.faces) for r in result] == [1, 1]  # the 0.2 box is below min_face_score
    for image, r, boxes in zip(images, result, raw):
        scaled = package._update_pred_box([b.copy() for b in boxes if b[4] >= 0.5])
        ref = package(_bgr(image), boxes=scaled)
        assert (r.width, r.height) == (image.shape[1], image.shape[0])
        for face, expected in zip(r.faces, ref):
            np.testing.assert_allclose(face.box, expected["bbox"][:4], atol=1e-4)
            assert face.score == pytest.approx(float(expected["bbox"][4]))
            assert face.points.shape == (28, 2) and face.point_scores.shape == (28,)
            assert ((face.point_scores >= 0) & (face.point_scores <= 1)).all()
            np.testing.assert_allclose(face.point_scores, np.clip(expected["keypoints"][:, 2], 0, 1), atol=1e-4)
            # random-weight heatmaps may tie; the heatmap tests above are the strict check
            dist = np.linalg.norm(face.points - expected["keypoints"][:, :2], axis=1)
            assert np.median(dist) < 0.01 and (dist < 0.5).mean() >= 0.9


def test_identity_names_weights_and_settings(backend, weights_dir):
    ident = backend.identity()
    assert ident["backend"] == "hrnet" and ident["face_detector"] == "yolov3"
    assert ident["weights"]["hrnetv2"] == {
        "file": "hrnetv2.safetensors",
        "sha256": file_sha256(weights_dir / "hrnetv2.safetensors")[:16],
    }
    assert ident["weights"]["yolov3"]["sha256"] == file_sha256(weights_dir / "yolov3.safetensors")[:16]
    assert ident["settings"] == {"flip_test": True, "box_scale_factor": 1.1, "min_face_score": 0.5}
    same = hrnet_identity(
        landmark_weights=str(weights_dir / "hrnetv2.safetensors"),
        detector_weights=str(weights_dir / "yolov3.safetensors"),
        device="cpu",
        batch_size=8,
    )
    assert same == ident
    assert hrnet_identity(
        landmark_weights=str(weights_dir / "hrnetv2.safetensors"),
        detector_weights=str(weights_dir / "yolov3.safetensors"),
        flip_test=False,
    ) != ident


def test_every_batchnorm_is_folded(backend):
    for net in (backend.landmark_net, backend.detector_net):
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        assert any(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in net.modules())


def test_no_faces_and_bad_input(backend, tadne_tiles):
    assert backend.detect([]) == []
    empty = backend.landmarks_for_boxes([tadne_tiles[0]], [np.zeros((0, 4), np.float32)])
    assert len(empty) == 1 and empty[0].shape == (0, 28, 3)
    from kohya_ext.errors import ImageError

    with pytest.raises(ImageError, match="RGB uint8"):
        backend.crop_faces([tadne_tiles[0][..., 0]], [np.array([[0, 0, 10, 10]], np.float32)])
    from kohya_ext.errors import KohyaExtError

    with pytest.raises(KohyaExtError, match="face box"):
        backend.landmarks_for_boxes([tadne_tiles[0]], [np.array([[50, 50, 50, 80]], np.float32)])
