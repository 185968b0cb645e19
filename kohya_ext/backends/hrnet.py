"""hrnet backend: anime-face-detector 0.1.0 (YOLOv3 / Faster R-CNN + HRNetV2, 28 points), batched in torch.

The package runs one image at a time: numpy/cv2 preprocessing, two HRNet forwards
(plain + flipped), then a numpy decoder that loops over every face and point. This
module keeps the package's model classes and weights (loaded with strict keys) and
re-implements the rest as batched torch code, on CPU or CUDA:

- detector (YOLOv3): images of equal size are resized together (a bit-exact torch port
  of cv2.resize INTER_LINEAR on uint8), normalised, padded to stride 32 and run through
  the network as a batch; box decoding and NMS are the package's own head
  (``get_bboxes``): batched, except its NMS, which loops over the images. Faster R-CNN
  (an option) runs per image through the package's own ``detect``.
- landmarks: box -> center/scale (padding 1.25, aspect 1), 256x256 crops of every face
  of every image by one gather from all images packed in one buffer (a port of
  cv2.warpAffine INTER_LINEAR as OpenCV 5 computes it: float32 bilinear, rounded),
  ImageNet normalisation, the crops and their mirrors through the network together
  (flip test), and the package's DARK decoder (Gaussian modulation, log, Taylor step,
  back-projection) vectorised over faces and points.

On CPU, every BatchNorm is folded into its convolution, tensors are channels_last and
the networks run in small micro-batches (see CPU_LANDMARK_CROPS). The results match the
package to float rounding (tests/test_hrnet_parity.py); bench/landmarks.py times both. On
CUDA the networks run in full fp32, not PyTorch's default TF32 convolutions, so the GPU gives
the CPU's points (precision.py; bench/gpu_parity.py measures it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Face, ImageFaces, check_sizes
from .precision import full_fp32
from ..errors import ImageError, KohyaExtError
from ..landmarks import HRNET_POINTS, flip_permutation
from .weights import WeightFile, hrnet_weights, load_state_dict_strict

__all__ = ["FaceCrops", "HrnetBackend", "PackedImages", "boxes_to_center_scale", "decode_heatmaps",
           "flip_back_heatmaps", "fold_batchnorm", "hrnet_identity", "resize_like_cv2", "scale_boxes", "warp_crops"]

logger = logging.getLogger(__name__)

# Values of anime_face_detector._landmark (mmpose's hrnetv2 config); a test pins them to the package.
IMAGE_SIZE = 256  # square crop fed to HRNet
HEATMAP_SIZE = 64
BBOX_PADDING = 1.25
PIXEL_STD = 200.0
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
MODULATE_KERNEL = 11  # DARK's Gaussian modulation kernel (sigma 2)
PAD_SIZE_DIVISOR = 32  # mmdet test pipeline
PACKAGE = "anime-face-detector 0.1.0"
INSTALL_HINT = "the hrnet backend needs anime-face-detector 0.1.0: run scripts/install.sh, or use --backend nvxs"

# On CPU the networks run in micro-batches: measured on 2 cores, HRNet is fastest per crop at
# about 4 crops per forward (0.036 s vs 0.04-0.06 s at 8-32, whose activations spill the
# caches) and YOLOv3 at 2 images. On CUDA a whole chunk goes in one forward.
CPU_LANDMARK_CROPS = 4
CPU_DETECTOR_IMAGES = 2

# cv2.resize INTER_LINEAR on uint8 uses 11-bit fixed-point weights (INTER_RESIZE_COEF_BITS).
_RESIZE_BITS = 11
_FLIP_PERM = flip_permutation("hrnet")


def _afd():
    """Import anime_face_detector's model modules, or fail with the install hint."""
    try:
        from anime_face_detector import _face, _landmark
    except ImportError as e:
        raise KohyaExtError(f"{INSTALL_HINT} ({e})") from e
    return _face, _landmark


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KohyaExtError(f"device {device!r} asked for but CUDA is not available: use --device cpu or auto")
    return dev


def _image_tensor(image: np.ndarray, index: int) -> torch.Tensor:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"image {index}: expected an RGB uint8 array (H, W, 3), got {a.dtype} {a.shape}")
    # read-only arrays (PIL buffers, np.asarray of an Image) are copied: torch warns on non-writable memory
    return torch.from_numpy(np.require(a, requirements=("C", "W")))


# --- model preparation ---------------------------------------------------------------------
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the convolution in front of it (in place)."""
    with torch.no_grad():
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        gain = bn.weight.double() / std
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(gain)
        conv.weight.copy_((conv.weight.double() * gain.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        new_bias = (bias - bn.running_mean.double()) * gain + bn.bias.double()
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d of ``model`` into the Conv2d that feeds it; returns how many.

    Pairs are found the way the package's modules are written: adjacent children of an
    ``nn.Sequential``, and ``convN``/``bnN`` or ``conv``/``bn`` attributes of one module
    (ResNet blocks, HRNet stem, mmcv ConvModule), whose forward calls them back to back.
    A BatchNorm that fits neither pattern is left in place (correct, just not folded).
    """
    folded = 0
    for module in list(model.modules()):
        children = module._modules
        pairs: list[tuple[str, str]] = []
        if isinstance(module, nn.Sequential):
            names = list(children)
            pairs = [(a, b) for a, b in zip(names, names[1:])
                     if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d)]
        else:
            for name, child in children.items():
                if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
                    conv_name = "conv" + name[2:]
                    if isinstance(children.get(conv_name), nn.Conv2d):
                        pairs.append((conv_name, name))
        for conv_name, bn_name in pairs:
            _fold_pair(children[conv_name], children[bn_name])
            children[bn_name] = nn.Identity()
            folded += 1
    left = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if left:
        logger.debug("fold_batchnorm: %d BatchNorm layers left unfolded", left)
    return folded


def _prepare(model: nn.Module, device: torch.device, optimize: bool) -> nn.Module:
    """Turn a strictly loaded model into the inference module (in place, to save memory):
    eval, no grads, BN folded and channels_last when ``optimize``, on ``device``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if optimize:
        fold_batchnorm(model)
        model = model.to(memory_format=torch.channels_last)
    return model.to(device)


# --- boxes ---------------------------------------------------------------------------------
def scale_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Grow detector boxes about their centre, as LandmarkDetector does (size = x1 - x0 + 1)."""
    out = np.array(boxes, dtype=np.float32, copy=True)
    if out.size == 0:
        return out.reshape(0, out.shape[-1] if out.ndim == 2 else 5)
    out = out.reshape(-1, out.shape[-1])
    size = (out[:, 2:4] - out[:, 0:2] + 1) * np.float32(factor)
    center = (out[:, 0:2] + out[:, 2:4]) / 2
    tl = center - size / 2
    out[:, 0:2] = tl
    out[:, 2:4] = tl + size
    return out


def boxes_to_center_scale(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0, y0, x1, y1 boxes (F, >=4) -> mmpose center (F, 2) and scale (F, 2), square, padded 1.25."""
    b = boxes[:, :4].to(torch.float32)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    centers = torch.stack([b[:, 0] + w * 0.5, b[:, 1] + h * 0.5], dim=1)
    side = torch.where(w > h, w, h)  # aspect ratio 1: the shorter side grows to the longer
    scales = torch.stack([side, side], dim=1) / PIXEL_STD * BBOX_PADDING
    return centers, scales


def _crop_maps(centers: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per face, the inverse affine map crop pixel -> image pixel: x = ax * u + bx, y = ay * v + by.

    Mirrors get_affine_transform + cv2.getAffineTransform + cv2's inversion: the source
    triangle is built in float32, the matrix and its inverse in float64, then float32.
    """
    c = centers.to(torch.float32)
    half = (scales[:, 0].to(torch.float32) * PIXEL_STD) * 0.5
    y1 = c[:, 1] - half  # src[1] = center + (0, -w/2)
    x2 = c[:, 0] - (c[:, 1] - y1)  # src[2]: src[1] + rot90(src[0] - src[1])
    cx, cy = c[:, 0].double(), c[:, 1].double()
    half_out = IMAGE_SIZE * 0.5
    kx = half_out / (cx - x2.double())
    ky = half_out / (cy - y1.double())
    mx = half_out - kx * cx
    my = half_out - ky * cy
    inv = 1.0 / (kx * ky)
    ax, ay = ky * inv, kx * inv
    return ax.float(), (-ax * mx).float(), ay.float(), (-ay * my).float()


class PackedImages:
    """Many RGB uint8 images in one flat buffer, each with a one-pixel zero border, for gathers
    across images: image i's pixel (y, x) is ``buffer[offsets[i] + (y + 1) * (widths[i] + 2) + x + 1]``."""

    def __init__(self, tensors: Sequence[torch.Tensor], device: torch.device) -> None:
        padded = [F.pad(t, (0, 0, 1, 1, 1, 1)) for t in tensors]  # (H + 2, W + 2, 3), zero border
        sizes = [p.shape[0] * p.shape[1] for p in padded]
        self.heights = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long, device=device)
        self.widths = torch.tensor([t.shape[1] for t in tensors], dtype=torch.long, device=device)
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.long, device=device)
        self.buffer = torch.cat([p.reshape(-1, 3) for p in padded]).to(device)


def warp_crops(images: PackedImages, image_index: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Bilinear 256x256 crops of many faces of many images in one gather; (F, 256, 256, 3) float32.

    ``image_index`` names each face's image. Pixels outside the image are 0 and values are
    rounded to integers: cv2.warpAffine INTER_LINEAR + BORDER_CONSTANT, which OpenCV 5
    computes in float32 as here (lerp along x, then along y).
    """
    dev = images.buffer.device
    ax, bx, ay, by = (t.to(dev) for t in _crop_maps(centers, scales))
    grid = torch.arange(IMAGE_SIZE, device=dev, dtype=torch.float32)
    xs = ax[:, None] * grid + bx[:, None]  # (F, 256): source x of each crop column
    ys = ay[:, None] * grid + by[:, None]
    x0f, y0f = torch.floor(xs), torch.floor(ys)
    fx, fy = (xs - x0f)[:, None, :, None], (ys - y0f)[:, :, None, None]
    x0, y0 = x0f.long(), y0f.long()
    idx = image_index.to(dev)
    h, w, off = images.heights[idx, None], images.widths[idx, None], images.offsets[idx, None]
    # taps outside the image are clamped onto the zero border (-1 or W): no masks needed
    col0 = torch.minimum(x0.clamp(min=-1), w) + 1
    col1 = torch.minimum((x0 + 1).clamp(min=-1), w) + 1
    row0 = (torch.minimum(y0.clamp(min=-1), h) + 1) * (w + 2) + off
    row1 = (torch.minimum((y0 + 1).clamp(min=-1), h) + 1) * (w + 2) + off

    def tap(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return images.buffer[row[:, :, None] + col[:, None, :]].to(torch.float32)

    top = torch.lerp(tap(row0, col0), tap(row0, col1), fx)
    bottom = torch.lerp(tap(row1, col0), tap(row1, col1), fx)
    return torch.round(torch.lerp(top, bottom, fy))


# --- heatmaps ------------------------------------------------------------------------------
def flip_back_heatmaps(flipped: torch.Tensor) -> torch.Tensor:
    """Heatmaps of mirrored crops -> the original layout: swap flip pairs, mirror, shift one column right."""
    back = flipped[:, _FLIP_PERM].flip(-1)
    # mmpose's shift_heatmap: features of a mirrored image are off by one column
    return torch.cat([back[..., :1], back[..., :-1]], dim=-1)


def _blur_matrix(kernel: int, size: int, device: torch.device) -> torch.Tensor:
    """(size, size) matrix B with B @ m = m blurred along its rows by cv2.getGaussianKernel(kernel, 0),
    zero outside the map (mmpose pads the map with zeros before cv2.GaussianBlur)."""
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    offset = torch.arange(size)[None, :] - torch.arange(size)[:, None] + (kernel - 1) // 2  # j - i + r
    inside = (offset >= 0) & (offset < kernel)
    b = torch.where(inside, g[offset.clamp(0, kernel - 1)], torch.zeros((), dtype=torch.float64))
    return b.to(device=device, dtype=torch.float32)


def decode_heatmaps(
    heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, kernel: int = MODULATE_KERNEL
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmpose ``keypoints_from_heatmaps(post_process="unbiased")`` over a whole batch.

    heatmaps (N, K, H, W); centers, scales (N, 2). Returns image points (N, K, 2) and
    the heatmap maxima (N, K) as scores. Argmax; points whose maximum is <= 0 are set to
    -1 (in heatmap pixels) before back-projection; DARK: Gaussian modulation (zero
    padding, rescaled to the original maximum), log, one Newton step with the Hessian
    from central differences where the peak is at least 2 pixels inside the map.
    """
    n, k, hh, ww = heatmaps.shape
    hm = heatmaps.to(torch.float32)
    dev = hm.device
    flat = hm.reshape(n, k, hh * ww)
    idx = flat.argmax(dim=2)  # first maximum, like np.argmax
    maxvals = flat.gather(2, idx[..., None])[..., 0]
    px = (idx % ww).to(torch.float32)
    py = torch.div(idx, ww, rounding_mode="floor").to(torch.float32)
    positive = maxvals > 0.0
    px = torch.where(positive, px, torch.full_like(px, -1.0))
    py = torch.where(positive, py, torch.full_like(py, -1.0))

    # Gaussian modulation: separable zero-padded blur as two small matmuls (much faster than a
    # single-channel conv2d over N*K maps), rescaled to each map's maximum
    with full_fp32(dev):  # TF32 matmuls here moved points by up to 13 px on flat maps (bench/gpu_parity.py)
        x = _blur_matrix(kernel, hh, dev) @ hm @ _blur_matrix(kernel, ww, dev).T
    blur_max = x.reshape(n, k, -1).amax(dim=2)
    x = x * (maxvals / blur_max)[..., None, None]
    logm = torch.log(torch.clamp(x, min=1e-10)).reshape(n, k, hh * ww)

    # Taylor step around the integer peak (only where every tap lies inside the map)
    ix, iy = px.long(), py.long()
    inside = (ix > 1) & (ix < ww - 2) & (iy > 1) & (iy < hh - 2)
    cx, cy = ix.clamp(2, ww - 3), iy.clamp(2, hh - 3)

    def at(dx: int, dy: int) -> torch.Tensor:
        return logm.gather(2, ((cy + dy) * ww + (cx + dx))[..., None])[..., 0]

    c0 = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * c0 + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    dyy = 0.25 * (at(0, 2) - 2 * c0 + at(0, -2))
    det = dxx * dyy - dxy**2
    use = inside & (det != 0)
    safe = torch.where(use, det, torch.ones_like(det))
    off_x = -(dyy * dx - dxy * dy) / safe  # -H^-1 @ grad
    off_y = -(dxx * dy - dxy * dx) / safe
    px = torch.where(use, px + off_x, px)
    py = torch.where(use, py + off_y, py)

    # back to image pixels (transform_preds without UDP)
    s = scales.to(device=dev, dtype=torch.float32) * PIXEL_STD
    c = centers.to(device=dev, dtype=torch.float32)
    out_x = px * (s[:, 0:1] / ww) + c[:, 0:1] - s[:, 0:1] * 0.5
    out_y = py * (s[:, 1:2] / hh) + c[:, 1:2] - s[:, 1:2] * 0.5
    return torch.stack([out_x, out_y], dim=-1), maxvals


# --- detector preprocessing ----------------------------------------------------------------
def _resize_taps(n_out: int, n_in: int, clamp: bool, device: torch.device):
    """Source indices and 11-bit weights of cv2's linear resize along one axis.

    cv2 clamps the x taps at the borders (weight 0 on the outside tap) but not the y
    taps (it repeats the border row with both weights), which rounds differently.
    """
    scale = 1.0 / (n_out / n_in)
    f = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).to(torch.float32)
    i0f = torch.floor(f)
    frac = f - i0f
    i0 = i0f.long()
    if clamp:
        low, high = i0 < 0, i0 >= n_in - 1
        frac = torch.where(low | high, torch.zeros_like(frac), frac)
        i0 = torch.where(low, torch.zeros_like(i0), torch.where(high, torch.full_like(i0, n_in - 1), i0))
    one = float(1 << _RESIZE_BITS)
    w0 = torch.round((1.0 - frac) * one).to(torch.int32)
    w1 = torch.round(frac * one).to(torch.int32)
    return i0.clamp(0, n_in - 1).to(device), (i0 + 1).clamp(0, n_in - 1).to(device), w0.to(device), w1.to(device)


def resize_like_cv2(images: torch.Tensor, new_w: int, new_h: int) -> torch.Tensor:
    """cv2.resize(..., INTER_LINEAR) of uint8 (B, H, W, C) images, bit-exact, batched."""
    b, h, w, c = images.shape
    if (new_w, new_h) == (w, h):
        return images.clone()
    if w == 2 * new_w and h == 2 * new_h:  # cv2 takes its INTER_AREA shortcut for exact halving
        x = images.to(torch.int32)
        s = x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]
        return ((s + 2) >> 2).to(torch.uint8)
    dev = images.device
    sx0, sx1, ax0, ax1 = _resize_taps(new_w, w, True, dev)
    sy0, sy1, ay0, ay1 = _resize_taps(new_h, h, False, dev)
    x = images.to(torch.int32)
    rows = x[:, :, sx0] * ax0[:, None] + x[:, :, sx1] * ax1[:, None]  # (B, H, new_w, C), scaled by 2^11
    r0, r1 = rows[:, sy0] >> 4, rows[:, sy1] >> 4
    out = (((r0 * ay0[:, None, None]) >> 16) + ((r1 * ay1[:, None, None]) >> 16) + 2) >> 2
    return out.clamp(0, 255).to(torch.uint8)


@dataclass
class FaceCrops:
    """Normalised crops of many faces plus what maps their heatmaps back to image pixels."""

    crops: torch.Tensor  # (F, 3, 256, 256) float32, ImageNet-normalised RGB, channels_last
    centers: torch.Tensor  # (F, 2)
    scales: torch.Tensor  # (F, 2)
    image_index: torch.Tensor  # (F,) which input image each face belongs to


class HrnetBackend:
    """anime-face-detector's face detector + HRNetV2 28 landmarks (``HRNET_POINTS``), batched.

    Args:
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N".
        face_detector: "yolov3" (default, the package's default), "faster-rcnn" (runs
            per image), or None: every image is one face (the package's fallback).
        flip_test: average with the mirrored crop (the package's default; halves speed).
        batch_size: images per detector call and faces per crop/decode chunk (default
            16). On CUDA each chunk is one forward; on CPU the networks run in
            micro-batches of CPU_DETECTOR_IMAGES images / CPU_LANDMARK_CROPS crops,
            which measured fastest there.
        landmark_weights, detector_weights: explicit weight files (see weights.py for
            the environment variables and the Hub cache used otherwise).
        box_scale_factor: detector boxes grow by this about their centre before the
            crop (the package's default 1.1).
        min_face_score: detector score below which a box gets no landmarks (default
            0.5). The package keeps every box above 0.05, up to 100 per image, and
            each kept box costs two HRNet passes (about 70 ms on 2 CPU cores); the
            metric uses one face per portrait. A choice, not tuned on the released
            weights (not downloadable here). Recorded in ``identity()``.
        optimize: fold BatchNorm into the convolutions and use channels_last (the same
            numbers to float rounding; about 1.9x faster HRNet and 1.25x faster YOLOv3
            on CPU).

    ``Face.box`` is the scaled box the landmarks were computed in (as the package
    returns it), ``Face.score`` the detector score, ``point_scores`` the heatmap
    maxima clipped to [0, 1].
    """

    name = "hrnet"
    point_names = HRNET_POINTS

    def __init__(
        self,
        device: str = "auto",
        face_detector: str | None = "yolov3",
        flip_test: bool = True,
        batch_size: int = 16,
        landmark_weights: str | None = None,
        detector_weights: str | None = None,
        box_scale_factor: float = 1.1,
        min_face_score: float = 0.5,
        optimize: bool = True,
    ) -> None:
        _face, _landmark = _afd()
        if batch_size < 1:
            raise KohyaExtError(f"hrnet batch_size must be >= 1, got {batch_size}")
        self.device = _resolve_device(device)
        self.face_detector = face_detector
        self.flip_test = bool(flip_test)
        self.batch_size = int(batch_size)
        self.box_scale_factor = float(box_scale_factor)
        self.min_face_score = float(min_face_score)
        self.optimize = bool(optimize)
        self.weights: dict[str, WeightFile] = hrnet_weights(face_detector, landmark_weights, detector_weights)

        # the package's own classes, loaded with strict keys, then prepared for speed in place
        self.landmark_net = _landmark.LandmarkModel()
        load_state_dict_strict(self.landmark_net, self.weights["hrnetv2"])
        self.landmark_net = _prepare(self.landmark_net, self.device, optimize)
        self.detector_net: nn.Module | None = None
        if face_detector == "yolov3":
            self.detector_net = _face.YOLOv3FaceDetector()
            load_state_dict_strict(self.detector_net, self.weights["yolov3"])
            self.detector_net = _prepare(self.detector_net, self.device, optimize)
        elif face_detector == "faster-rcnn":
            self.detector_net = _face.FasterRCNNFaceDetector()
            load_state_dict_strict(self.detector_net, self.weights["faster-rcnn"])
            # runs per image through the package's own detect(): left as the package has it
            self.detector_net = _prepare(self.detector_net, self.device, optimize=False)
        self._rescale_size = _face._rescale_size

    # --- identity --------------------------------------------------------------------------
    def identity(self) -> dict:
        return _identity(self.weights, self.face_detector, self.flip_test, self.box_scale_factor, self.min_face_score)

    # --- detector stage --------------------------------------------------------------------
    @torch.inference_mode()
    def detect_boxes(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Raw detector boxes per image, (n, 5) float32 [x0, y0, x1, y1, score] in image pixels.

        Exactly what the package's ``face_detector.detect`` returns (every box above its
        0.05 threshold, up to 100); no min_face_score, no box scaling.
        """
        tensors = [_image_tensor(im, i) for i, im in enumerate(images)]
        if self.face_detector is None:
            return [np.array([[0, 0, t.shape[1] - 1, t.shape[0] - 1, 1]], dtype=np.float32) for t in tensors]
        if self.face_detector == "faster-rcnn":
            # per image through the package (its RPN/RoI test path is single-image); it wants BGR
            with full_fp32(self.device):
                return [self.detector_net.detect(np.ascontiguousarray(t.numpy()[..., ::-1])).astype(np.float32) for t in tensors]
        out: list[np.ndarray | None] = [None] * len(tensors)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.shape[0], t.shape[1]), []).append(i)
        for (h, w), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for i, boxes in zip(chunk, self._yolo_batch([tensors[i] for i in chunk], h, w)):
                    out[i] = boxes
        return out  # type: ignore[return-value]

    def _yolo_batch(self, tensors: list[torch.Tensor], h: int, w: int) -> list[np.ndarray]:
        pred_maps, meta = self.yolo_forward(tensors, h, w)
        results = self.detector_net.bbox_head.get_bboxes(pred_maps, [meta] * len(tensors), rescale=True)
        return [r[0].cpu().numpy().astype(np.float32) for r in results]

    @torch.inference_mode()
    def yolo_forward(self, tensors: Sequence[torch.Tensor], h: int, w: int) -> tuple[tuple[torch.Tensor, ...], dict]:
        """YOLOv3 head outputs for uint8 (h, w, 3) RGB tensors of one size, in one batch; and their img_meta."""
        if self.face_detector != "yolov3":
            raise KohyaExtError(f"yolo_forward needs face_detector='yolov3', this backend uses {self.face_detector!r}")
        det = self.detector_net
        new_w, new_h = self._rescale_size(w, h, *det.IMG_SCALE)
        batch = torch.stack(tensors).to(self.device)
        resized = resize_like_cv2(batch, new_w, new_h).to(torch.float32)
        mean = torch.tensor(det.MEAN, device=self.device)
        std = torch.tensor(det.STD, device=self.device)
        resized = (resized - mean) / std
        pad_h = -(-new_h // PAD_SIZE_DIVISOR) * PAD_SIZE_DIVISOR
        pad_w = -(-new_w // PAD_SIZE_DIVISOR) * PAD_SIZE_DIVISOR
        x = torch.zeros((len(tensors), pad_h, pad_w, 3), device=self.device)
        x[:, :new_h, :new_w] = resized
        x = x.permute(0, 3, 1, 2)  # NCHW view over NHWC memory: channels_last
        meta = {
            "img_shape": (new_h, new_w, 3),
            "ori_shape": (h, w, 3),
            "pad_shape": (pad_h, pad_w, 3),
            "scale_factor": np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32),
        }
        step = CPU_DETECTOR_IMAGES if self.device.type == "cpu" else len(x)
        with full_fp32(self.device):
            parts = [det.bbox_head(det.neck(det.backbone(x[i : i + step])))[0] for i in range(0, len(x), step)]
        return tuple(torch.cat(level) for level in zip(*parts)), meta

    # --- landmark stage --------------------------------------------------------------------
    def crop_faces(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> FaceCrops:
        """Normalised 256x256 crops of every box of every image (boxes: per image, (n, >=4))."""
        tensors = [_image_tensor(im, i) for i, im in enumerate(images)]
        packed = PackedImages(tensors, self.device)
        all_boxes, index = self._flatten_boxes(boxes, len(tensors))
        return self._crop(packed, all_boxes, index)

    @staticmethod
    def _flatten_boxes(boxes: Sequence[np.ndarray], count: int) -> tuple[torch.Tensor, torch.Tensor]:
        if len(boxes) != count:
            raise KohyaExtError(f"got boxes for {len(boxes)} images but {count} images")
        arrays = [np.asarray(b, dtype=np.float32).reshape(-1, np.shape(b)[-1] if np.size(b) else 4)[:, :4] for b in boxes]
        for i, a in enumerate(arrays):
            bad = ~(np.isfinite(a).all(axis=1) & (a[:, 2] > a[:, 0]) & (a[:, 3] > a[:, 1]))
            if bad.any():
                raise KohyaExtError(f"image {i}: face box {a[bad][0].tolist()} is not x0 < x1, y0 < y1 with finite values")
        index = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)]) if arrays else np.zeros(0)
        flat = np.concatenate(arrays) if arrays else np.zeros((0, 4), np.float32)
        return torch.from_numpy(np.ascontiguousarray(flat)), torch.from_numpy(index.astype(np.int64))

    @torch.inference_mode()
    def _crop(self, packed: PackedImages, boxes: torch.Tensor, index: torch.Tensor) -> FaceCrops:
        centers, scales = boxes_to_center_scale(boxes)
        pixels = warp_crops(packed, index, centers, scales)
        mean = torch.tensor(IMAGE_MEAN, device=pixels.device)
        std = torch.tensor(IMAGE_STD, device=pixels.device)
        crops = ((pixels / 255.0 - mean) / std).permute(0, 3, 1, 2)  # channels_last NCHW view
        return FaceCrops(crops, centers, scales, index)

    @torch.inference_mode()
    def heatmaps(self, crops: torch.Tensor | FaceCrops) -> torch.Tensor:
        """HRNet heatmaps (F, 28, 64, 64) of normalised crops, with the flip test when enabled."""
        x = crops.crops if isinstance(crops, FaceCrops) else crops
        parts = [self._heatmap_chunk(x[s : s + self.batch_size]) for s in range(0, len(x), self.batch_size)]
        if not parts:
            return torch.zeros((0, len(HRNET_POINTS), HEATMAP_SIZE, HEATMAP_SIZE), device=self.device)
        return torch.cat(parts)

    def _heatmap_chunk(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        model = self.landmark_net
        # the crops and their mirrors go through the network together (micro-batched on CPU)
        both = torch.cat([x, x.flip(3)]) if self.flip_test else x
        step = CPU_LANDMARK_CROPS if self.device.type == "cpu" else len(both)
        with full_fp32(self.device):
            out = torch.cat([model.keypoint_head(model.backbone(both[i : i + step])) for i in range(0, len(both), step)])
        out = out.float()
        if not self.flip_test:
            return out
        n = len(x)
        return (out[:n] + flip_back_heatmaps(out[n:])) / 2

    def decode_heatmaps(self, heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor):
        """See the module-level :func:`decode_heatmaps`."""
        return decode_heatmaps(heatmaps, centers, scales)

    @torch.inference_mode()
    def landmarks_for_boxes(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Landmarks (n, 28, 3) [x, y, score] per image for the given boxes, like LandmarkModel.detect."""
        tensors = [_image_tensor(im, i) for i, im in enumerate(images)]
        flat, index = self._flatten_boxes(boxes, len(tensors))
        points, scores = self._landmarks(tensors, flat, index)
        kp = torch.cat([points, scores[..., None]], dim=-1).cpu().numpy()
        counts = np.bincount(index.numpy(), minlength=len(tensors)) if len(index) else np.zeros(len(tensors), int)
        return np.split(kp, np.cumsum(counts)[:-1])

    def _landmarks(self, tensors: list[torch.Tensor], boxes: torch.Tensor, index: torch.Tensor):
        k = len(HRNET_POINTS)
        if len(boxes) == 0:
            return torch.zeros((0, k, 2)), torch.zeros((0, k))
        packed = PackedImages(tensors, self.device)
        points, scores = [], []
        for s in range(0, len(boxes), self.batch_size):
            fc = self._crop(packed, boxes[s : s + self.batch_size], index[s : s + self.batch_size])
            p, v = decode_heatmaps(self._heatmap_chunk(fc.crops), fc.centers, fc.scales)
            points.append(p)
            scores.append(v)
        return torch.cat(points), torch.cat(scores)

    # --- the Backend protocol --------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[ImageFaces]:
        """Faces with 28 landmarks in RGB uint8 (H, W, 3) images, one ImageFaces per image."""
        images = list(images)
        check_sizes("hrnet", images)
        tensors = [_image_tensor(im, i) for i, im in enumerate(images)]
        if not tensors:
            return []
        raw = self.detect_boxes(images)
        kept = []
        for r in raw:
            r = r[r[:, 4] >= self.min_face_score] if self.face_detector is not None else r
            kept.append(scale_boxes(r, self.box_scale_factor) if self.face_detector is not None else r.copy())
        flat, index = self._flatten_boxes(kept, len(tensors))
        points, scores = self._landmarks(tensors, flat, index)
        points_np = points.cpu().numpy().astype(np.float32)
        scores_np = np.clip(scores.cpu().numpy(), 0.0, 1.0).astype(np.float32)
        results, row = [], 0
        for t, boxes in zip(tensors, kept):
            faces = []
            for box in boxes:
                faces.append(Face(box=box[:4].astype(np.float32), score=float(box[4]),
                                  points=points_np[row], point_scores=scores_np[row]))
                row += 1
            results.append(ImageFaces(faces=faces, width=int(t.shape[1]), height=int(t.shape[0])))
        return results


def _identity(weights: dict[str, WeightFile], face_detector, flip_test, box_scale_factor, min_face_score) -> dict:
    return {
        "backend": "hrnet",
        "package": PACKAGE,
        "face_detector": face_detector,
        "weights": {m: wf.identity() for m, wf in weights.items()},
        "settings": {
            "flip_test": bool(flip_test),
            "box_scale_factor": float(box_scale_factor),
            "min_face_score": float(min_face_score),
        },
    }


def hrnet_identity(
    face_detector: str | None = "yolov3",
    flip_test: bool = True,
    landmark_weights: str | None = None,
    detector_weights: str | None = None,
    box_scale_factor: float = 1.1,
    min_face_score: float = 0.5,
    **_runtime: object,
) -> dict:
    """``HrnetBackend(...).identity()`` without building the models (weights are still resolved and hashed).

    Runtime-only options (device, batch_size, optimize) do not change the points and are ignored.
    """
    return _identity(hrnet_weights(face_detector, landmark_weights, detector_weights), face_detector, flip_test,
                     box_scale_factor, min_face_score)
