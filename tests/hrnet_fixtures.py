"""Seeded random weights for the hrnet backend, in anime-face-detector's exact key layout.

The real checkpoints live on the Hugging Face Hub and cannot be downloaded in CI, so the
parity tests and bench/landmarks.py build the package's own model classes with a fixed
seed and save their ``state_dict`` as .safetensors: the same keys and shapes as the
released files, so both the package's loaders and ours load them with ``strict=True``.

BatchNorm layers get random affine parameters and running statistics (not the identity
defaults), so that any BN folding or eval-mode handling is really exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: file names inside a weights folder, as kohya_ext.backends.weights expects them
FILE_NAMES = {"hrnetv2": "hrnetv2.safetensors", "yolov3": "yolov3.safetensors", "faster-rcnn": "faster-rcnn.safetensors"}
DEFAULT_SEED = 1234
#: bumped whenever build_model changes, so cached weight files are regenerated
VERSION = 2
#: factor on the YOLOv3 objectness/class logits (see build_model)
SCORE_SHARPEN = 40.0


def build_model(name: str, seed: int = DEFAULT_SEED) -> nn.Module:
    """The package's model class for ``name`` with seeded random weights, in eval mode."""
    from anime_face_detector._face import FasterRCNNFaceDetector, YOLOv3FaceDetector
    from anime_face_detector._landmark import LandmarkModel

    classes = {"hrnetv2": LandmarkModel, "yolov3": YOLOv3FaceDetector, "faster-rcnn": FasterRCNNFaceDetector}
    if name not in classes:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(classes)}")
    torch.manual_seed(seed)
    model = classes[name]()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
        if name == "yolov3":
            # Default init gives objectness/class logits of std ~0.05: every box scores ~0.27,
            # and NMS order then hangs on 1e-6 float noise. Sharpen those logits so scores
            # spread over (0, 1) and box order is a property of the weights, not of rounding.
            attribs = model.bbox_head.num_attrib
            for conv in model.bbox_head.convs_pred:
                rows = [a * attribs + i for a in range(conv.out_channels // attribs) for i in (4, 5)]
                conv.weight[rows] *= SCORE_SHARPEN
                conv.bias[rows] *= SCORE_SHARPEN
    return model.eval()


def write_weights(folder: str | Path, name: str, seed: int = DEFAULT_SEED) -> Path:
    """Save ``build_model(name, seed)``'s state dict to ``folder/<name>.safetensors`` (cached)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAMES[name]
    if not _is_current(path, seed):
        state = {k: v.contiguous() for k, v in build_model(name, seed).state_dict().items()}
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"seed": str(seed), "version": str(VERSION), "kind": "random-test-weights"})
        tmp.replace(path)
    return path


def _is_current(path: Path, seed: int) -> bool:
    if not path.exists():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - truncated or foreign file: regenerate
        return False
    return meta.get("seed") == str(seed) and meta.get("version") == str(VERSION)


def random_weights_dir(folder: str | Path, names: tuple[str, ...] = ("hrnetv2", "yolov3"), seed: int = DEFAULT_SEED) -> Path:
    """A folder holding random weights for ``names``, usable as KOHYA_EXT_WEIGHTS_DIR."""
    for name in names:
        write_weights(folder, name, seed)
    return Path(folder)
