"""Scoring networks run in full fp32 on CUDA (no TF32), and torch's process-wide flags are put back.

Measured on an H200 (bench/gpu_parity.py): with PyTorch's default TF32 convolutions HRNetV2
heatmaps moved ~1.5e-3 from the CPU's and points by up to 287 px on random weights; in full
fp32 they match the CPU. The flags are plain globals, so their handling is tested here on the
CPU; what they do to the arithmetic needs a GPU (the bench).
"""

from __future__ import annotations

import pytest
import torch

from kohya_ext.backends import precision
from kohya_ext.backends.precision import full_fp32

cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
NEW_API = hasattr(getattr(cudnn, "conv", None), "fp32_precision")


@pytest.fixture(autouse=True)
def restore_torch_flags():
    """Leave torch's TF32 state as this test found it, whichever API the test used."""
    saved = [(cudnn.conv, "fp32_precision"), (cudnn.rnn, "fp32_precision"), (matmul, "fp32_precision")] if NEW_API else []
    values = [getattr(o, n) for o, n in saved]
    legacy = (cudnn.allow_tf32, matmul.allow_tf32) if not NEW_API else None
    yield
    for (o, n), v in zip(saved, values):
        setattr(o, n, v)
    if legacy:
        cudnn.allow_tf32, matmul.allow_tf32 = legacy


def test_tf32_off_inside_and_restored_after():
    cudnn.allow_tf32, matmul.allow_tf32 = True, True  # PyTorch's cuDNN default, plus matmul
    with full_fp32("cuda"):
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
    assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    with full_fp32(torch.device("cuda", 0)):
        assert not cudnn.allow_tf32


def test_restored_after_an_exception():
    cudnn.allow_tf32 = True
    with pytest.raises(ZeroDivisionError):
        with full_fp32("cuda"):
            1 / 0
    assert cudnn.allow_tf32


def test_cpu_and_already_fp32_leave_torch_alone():
    cudnn.allow_tf32 = True
    with full_fp32("cpu"):
        assert cudnn.allow_tf32  # the CPU has no TF32: nothing to change
    if NEW_API:
        before = (cudnn.conv.fp32_precision, matmul.fp32_precision)
        matmul.allow_tf32 = False
        state = matmul.fp32_precision
        with full_fp32("cuda"):
            assert matmul.fp32_precision == state  # already fp32: not rewritten
        assert cudnn.conv.fp32_precision == before[0]


@pytest.mark.skipif(not NEW_API, reason="this torch has no per-operator fp32_precision API")
def test_host_on_the_new_api_is_served_by_the_new_api():
    # A host that set conv and RNN apart (torch's legacy getter then raises): we must neither
    # raise nor leave the state changed.
    cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = "tf32", "ieee"
    with pytest.raises(RuntimeError):
        cudnn.allow_tf32
    with full_fp32("cuda"):
        assert cudnn.conv.fp32_precision == "ieee"
    assert (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == ("tf32", "ieee")


def test_a_torch_that_refuses_is_left_as_it_is(monkeypatch):
    class Refusing:
        allow_tf32 = True

        def __setattr__(self, name, value):
            raise RuntimeError("read-only in this build")

    knob = Refusing()
    monkeypatch.setattr(precision, "_knobs", lambda: [(knob, "allow_tf32", False)])
    with full_fp32("cuda"):  # no exception: slightly different points, never a failed evaluation
        assert knob.allow_tf32 is True
    assert knob.allow_tf32 is True


def test_hrnet_networks_and_decoder_run_inside_it(monkeypatch):
    """Every network forward and the decoder's blur matmul enter full_fp32 with their device."""
    from kohya_ext.backends import hrnet

    seen = []
    real = hrnet.full_fp32

    def spy(device):
        seen.append(torch.device(device).type)
        return real(device)

    monkeypatch.setattr(hrnet, "full_fp32", spy)
    hm = torch.zeros((1, 28, 64, 64))
    hm[0, :, 30, 30] = 1.0
    points, _ = hrnet.decode_heatmaps(hm, torch.tensor([[100.0, 100.0]]), torch.tensor([[1.0, 1.0]]))
    assert seen == ["cpu"] and torch.isfinite(points).all()
    src = open(hrnet.__file__, encoding="utf-8").read()
    # the three network call sites (YOLOv3, Faster R-CNN, HRNet) and the decoder
    assert src.count("with full_fp32(") == 4
