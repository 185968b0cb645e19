"""Image formats and dataset layouts users actually have."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kohya_ext.datasets import resolve_image_groups
from kohya_ext.errors import ImageError, KohyaExtError
from kohya_ext.images import list_images, load_image


@pytest.fixture()
def face(tadne_tiles):
    return tadne_tiles[20]


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:32, :, :] = (255, 0, 0, 255)  # opaque red top, fully transparent bottom
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = load_image(tmp_path / "a.png")
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert tuple(arr[0, 0]) == (255, 0, 0) and tuple(arr[63, 63]) == (255, 255, 255)


def test_grayscale_16bit_palette_and_webp(tmp_path, face):
    gray = np.asarray(Image.fromarray(face).convert("L"))
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # I;16 PNG
    Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(face).save(tmp_path / "w.webp", quality=95)
    g = load_image(tmp_path / "g.png")
    g16 = load_image(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert g.shape == g16.shape == face.shape
    assert np.abs(g.astype(int) - g16.astype(int)).max() <= 1  # 16-bit scaled to 8-bit, not clipped
    assert load_image(tmp_path / "p.png").shape == face.shape
    w = load_image(tmp_path / "w.webp")
    assert np.abs(w.astype(int) - face.astype(int)).mean() < 6


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (80, 40, 3)


def test_bad_images_raise_with_reason(tmp_path):
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "t.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(ImageError, match="too small"):
        load_image(tmp_path / "one.png")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")


@pytest.mark.skipif(not hasattr(Image, "registered_extensions") or ".avif" not in Image.registered_extensions(),
                    reason="this Pillow build has no AVIF support")
def test_avif(tmp_path, face):
    Image.fromarray(face).save(tmp_path / "a.avif")
    assert load_image(tmp_path / "a.avif").shape == face.shape


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(KohyaExtError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(KohyaExtError, match="no such file or folder"):
        list_images(tmp_path / "nope")


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)


def test_kohya_train_data_dir_layout(tmp_path):
    root = tmp_path / "train"
    _img(root / "10_sks girl" / "a.png")
    _img(root / "10_sks girl" / "b.jpg")
    _img(root / "5_xyz boy" / "c.png")
    (root / "10_sks girl" / "a.txt").write_text("sks girl, smile")
    groups = resolve_image_groups(root)
    assert {g.name: len(g.paths) for g in groups} == {"sks girl": 2, "xyz boy": 1}


def test_dataset_config_leaves_out_regularisation(tmp_path):
    _img(tmp_path / "imgs" / "a.png")
    _img(tmp_path / "imgs2" / "b.png")
    _img(tmp_path / "reg" / "r.png")
    cfg = tmp_path / "dataset.toml"
    cfg.write_text(
        f"""
[general]
enable_bucket = true
[[datasets]]
resolution = 512
  [[datasets.subsets]]
  image_dir = '{tmp_path / "imgs"}'
  class_tokens = 'sks girl'
  num_repeats = 10
  [[datasets.subsets]]
  image_dir = '{tmp_path / "imgs2"}'
  class_tokens = 'xyz boy'
  [[datasets.subsets]]
  image_dir = '{tmp_path / "reg"}'
  class_tokens = 'girl'
  is_reg = true
"""
    )
    groups = resolve_image_groups(cfg)
    assert sorted(g.name for g in groups) == ["sks girl", "xyz boy"]
    assert all("reg" not in str(p) for g in groups for p in g.paths)


def test_dataset_config_with_only_reg_is_refused(tmp_path):
    _img(tmp_path / "reg" / "r.png")
    cfg = tmp_path / "d.toml"
    cfg.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{tmp_path / 'reg'}'\nis_reg = true\n")
    with pytest.raises(KohyaExtError, match="1 regularisation subsets left out"):
        resolve_image_groups(cfg)
