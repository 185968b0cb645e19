"""Issue 15, part 1: the one image gate. Huge, bomb-header and ill-shaped images never reach a
detector; every file is made here at run time."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kohya_ext.errors import ImageError, KohyaExtError
from kohya_ext.images import MAX_DETECT_PIXELS, MAX_READ_PIXELS, MIN_IMAGE_SIDE, fit_for_detection, load_image


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid 64x64 PNG whose header (IHDR, CRC fixed) claims ``width`` x ``height``: a decompression bomb's shape."""
    Image.new("RGB", (64, 64), "white").save(path)
    b = bytearray(path.read_bytes())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))
    return path


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kohya_ext.cli", *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_exit(proc: subprocess.CompletedProcess, code: int) -> None:
    """No signal death, no traceback, the documented exit code."""
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == code, (proc.returncode, proc.stdout[-1000:], proc.stderr[-1000:])


# -- reading --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(70000, 70000), (9500, 9500)], ids=["over-pillow-hard-limit", "over-our-limit"])
def test_bomb_headers_are_refused_before_decoding(tmp_path, size):
    p = png_declaring(tmp_path / "bomb.png", *size)
    with _no_warnings():
        with pytest.raises(ImageError) as e:
            load_image(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg and "downscale" in msg.lower()


class _no_warnings:
    """Pillow's DecompressionBombWarning must not reach the user's log next to our own line."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self.caught if "DecompressionBomb" in type(w.message).__name__], self.caught
        return False


def test_read_limit_is_below_pillow_warning_threshold():
    assert MAX_READ_PIXELS <= Image.MAX_IMAGE_PIXELS or Image.MAX_IMAGE_PIXELS is None


@pytest.mark.parametrize("payload", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"GIF89a" + b"\xff" * 30, b"RIFF\0\0\0\0WEBPVP8 "],
                         ids=["empty", "png-garbage", "gif-garbage", "webp-garbage"])
def test_broken_files_are_one_line_image_errors(tmp_path, payload):
    p = tmp_path / "broken.png"
    p.write_bytes(payload)
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


# -- the gate -------------------------------------------------------------------------------------

def test_gate_keeps_images_within_the_cap_untouched():
    img = np.zeros((1024, 1024, 3), np.uint8)
    assert fit_for_detection(img) is img


def test_gate_downscales_keeping_aspect():
    img = np.zeros((3000, 1500, 3), np.uint8)
    small = fit_for_detection(img)
    h, w = small.shape[:2]
    assert h * w <= MAX_DETECT_PIXELS and h * w > 0.98 * MAX_DETECT_PIXELS
    assert abs(h / w - 2.0) < 0.01 and small.dtype == np.uint8


@pytest.mark.parametrize("bad", [np.zeros((64, 64, 3), np.float32), np.zeros((64, 64, 4), np.uint8), np.zeros((64,), np.uint8),
                                 np.zeros((MIN_IMAGE_SIDE - 1, 500, 3), np.uint8), np.zeros((40, 60000, 3), np.uint8), "not an array"],
                         ids=["float", "rgba", "1d", "tiny", "thin-after-downscale", "str"])
def test_gate_refuses_what_no_detector_can_use(bad):
    with pytest.raises(ImageError):
        fit_for_detection(bad)


def test_gray_arrays_pass_as_rgb():
    assert fit_for_detection(np.zeros((64, 64), np.uint8)).shape == (64, 64, 3)


def test_backends_refuse_images_that_skipped_the_gate():
    from kohya_ext.backends.base import check_sizes

    with pytest.raises(KohyaExtError, match="fit_for_detection"):
        check_sizes("nvxs", [np.zeros((1100, 1100, 3), np.uint8)])
    check_sizes("nvxs", [np.zeros((1024, 1024, 3), np.uint8)])


def test_nvxs_refuses_oversized_arrays_instead_of_crashing():
    from kohya_ext.backends.nvxs import NvxsBackend, nvxs_available

    ok, why = nvxs_available()
    if not ok:
        pytest.skip(f"nvxs unavailable: {why}")
    with pytest.raises(KohyaExtError):
        NvxsBackend(threads=1).detect([np.full((1100, 1100, 3), 255, np.uint8)])


# -- measurement through the gate -----------------------------------------------------------------

def _nvxs():
    from kohya_ext.backends.nvxs import NvxsBackend, nvxs_available

    ok, why = nvxs_available()
    if not ok:
        pytest.skip(f"nvxs unavailable: {why}")
    return NvxsBackend(threads=2)


def test_large_images_are_measured_downscaled_in_their_own_pixels(tadne_tiles):
    from kohya_ext.measure import measure_arrays

    backend = _nvxs()
    tile = tadne_tiles[20]
    big = np.asarray(Image.fromarray(tile).resize((2048, 2048), Image.Resampling.BOX))
    small = fit_for_detection(big)
    m_big, m_small = measure_arrays(backend, [big, small], ["big", "small"])
    assert m_small.detected_size is None and m_big.detected_size == [1024, 1024]
    assert (m_big.width, m_big.height) == (2048, 2048)
    assert m_big.status == m_small.status == "ok"
    np.testing.assert_allclose(np.asarray(m_big.points), 2 * np.asarray(m_small.points), atol=0.02)
    assert m_big.ratios == m_small.ratios  # ratios are those of the image the detector saw


def test_unusable_arrays_become_unreadable_measurements_not_errors(tadne_tiles):
    from kohya_ext.measure import measure_arrays

    ms = measure_arrays(_nvxs(), [tadne_tiles[20], np.zeros((8, 8, 3), np.uint8)], ["face", "tiny"])
    assert [m.status for m in ms] == ["ok", "unreadable"]
    assert "tiny" in ms[1].error and "too small" in ms[1].error


# -- the CLI: no signal death, one line per skipped image ---------------------------------------

def test_cli_scores_a_folder_of_huge_and_bomb_images_without_dying(tmp_path, tadne_dir):
    ref = tmp_path / "ref.json"
    proc = run_cli("reference", str(tadne_dir), "-o", str(ref), "--backend", "nvxs", "-q", "--cache-dir", str(tmp_path / "c"))
    assert_clean_exit(proc, 0)
    samples = tmp_path / "samples"
    samples.mkdir()
    Image.new("RGB", (10000, 10000), "white").save(samples / "white10000.png")  # 315 KB: segfaulted libnvxs before
    png_declaring(samples / "bomb.png", 70000, 70000)
    Image.new("RGB", (3000, 2000), "white").save(samples / "white3000.png")  # measured downscaled
    proc = run_cli("score", "-r", str(ref), str(samples), "--backend", "nvxs", "-q", "--cache-dir", str(tmp_path / "c"))
    assert_clean_exit(proc, 0)
    skipped = [ln for ln in proc.stdout.splitlines() if ln.startswith("skipped: ")]
    assert len(skipped) == 2 and any("white10000.png" in s and "10000x10000" in s for s in skipped)
    assert any("bomb.png" in s for s in skipped)
    assert "1 images over 1.0 MP measured downscaled to it" in proc.stdout
    assert "DecompressionBombWarning" not in proc.stderr


# -- ComfyUI IMAGE tensors go through the same gate ------------------------------------------------

def test_comfy_nodes_measure_a_huge_tensor_downscaled(tadne_tiles):
    import torch

    from kohya_ext.backends import BackendSpec
    from kohya_ext.comfy import core

    _nvxs()
    spec = BackendSpec("nvxs", threads=2)
    ref = core.reference_from_images(torch.from_numpy(np.stack(tadne_tiles[:8])).float() / 255.0, spec)
    face = np.array(Image.fromarray(tadne_tiles[20]).resize((1600, 1600), Image.Resampling.BOX))
    white = np.full((1600, 4000, 3), 255, np.uint8)
    res = core.consistency(ref, [torch.from_numpy(a[None]).float() / 255.0 for a in (face, white)], overlays=True)
    ms = res.report.samples
    assert [m.detected_size is not None for m in ms] == [True, True]
    assert ms[0].status == "ok" and (ms[0].width, ms[0].height) == (1600, 1600)
    assert "2 images over 1.0 MP measured downscaled to it" in res.text
    assert [tuple(o.shape[1:3]) for o in res.overlays] == [(1600, 1600), (1600, 4000)]
