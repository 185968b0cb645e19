"""HRNetV2 landmarks on the GPU against the CPU: do both give the same points?

The CPU parity tests (tests/test_hrnet_parity.py) hold our batched backend to
anime-face-detector 0.1.0 on the CPU. On CUDA two more things change the numbers: cuDNN's
TF32 convolutions (on by default in PyTorch) and other kernels. This bench runs the package and
our backend on the same seeded random weights (tests/hrnet_fixtures.py), the same portraits and
fixed boxes, on the CPU and on CUDA with PyTorch's global TF32 flags on (its default for cuDNN)
and off, and compares every heatmap and point with the package on the CPU. Our backend runs its
networks in full fp32 whatever the global flags (kohya_ext/backends/precision.py) and puts them
back after; the package follows them. Random weights give flat heatmaps whose maxima tie, so a small
numeric change moves a point far: read the heatmap difference first, the point distances as the
worst case. Also times our batched landmarks (batch 32) per configuration.

    python bench/gpu_parity.py [--grid ../shared/data/tadne/grid.jpg] [--images 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

BOXES = np.array([[110, 70, 400, 390], [330, 300, 500, 480]], dtype=np.float32)


def _set_tf32(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def _run(device: str, lw: Path, images: list[np.ndarray]):
    from anime_face_detector._landmark import load_landmark_model

    from kohya_ext.backends.hrnet import HrnetBackend

    boxes = [BOXES] * len(images)
    package = load_landmark_model(str(lw), device=device)
    pk, ph = zip(*(package.detect(np.ascontiguousarray(im[..., ::-1]), BOXES, flip_test=True, return_heatmap=True) for im in images))
    ours = HrnetBackend(device=device, face_detector=None, landmark_weights=str(lw), batch_size=32)
    oh = ours.heatmaps(ours.crop_faces(images, boxes)).cpu().numpy()
    ok = ours.landmarks_for_boxes(images, boxes)
    if device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        ours.landmarks_for_boxes(images, boxes)
    if device != "cpu":
        torch.cuda.synchronize()
    ips = 3 * len(images) / (time.perf_counter() - t)
    return {"package": (np.concatenate(pk), np.concatenate(ph)), "ours": (np.concatenate(ok), oh), "ips": ips}


def _compare(kp: np.ndarray, hm: np.ndarray, ref_kp: np.ndarray, ref_hm: np.ndarray) -> str:
    dh = np.abs(hm - ref_hm).max()
    am = hm.reshape(*hm.shape[:2], -1).argmax(-1) != ref_hm.reshape(*ref_hm.shape[:2], -1).argmax(-1)
    d = np.linalg.norm(kp[..., :2] - ref_kp[..., :2], axis=-1)
    return (f"{dh:.2e} | {np.abs(ref_hm).max():.2f} | {100 * am.mean():.1f}% | {np.median(d):.3f} | "
            f"{np.percentile(d, 99):.2f} | {d.max():.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(REPO.parent / "shared" / "data" / "tadne" / "grid.jpg"))
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_parity: no CUDA device here: nothing to compare (run it on a machine with a GPU)")
        return 2
    import hrnet_fixtures

    from kohya_ext.demo import grid_tiles
    from kohya_ext.images import load_image

    wdir = hrnet_fixtures.random_weights_dir(Path(tempfile.mkdtemp()) / "w", ("hrnetv2",))
    lw = wdir / "hrnetv2.safetensors"
    tiles = grid_tiles(load_image(Path(args.grid)))
    images = [tiles[i % len(tiles)] for i in range(args.images)]
    runs = {"cpu": _run("cpu", lw, images)}
    for tf32 in (True, False):
        _set_tf32(tf32)
        runs[f"cuda, global TF32 {'on' if tf32 else 'off'}"] = _run("cuda", lw, images)
        kept = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        if kept != (tf32, tf32):
            print(f"the global TF32 flags were not restored after our forwards: {kept}, set {tf32}")
    ref_kp, ref_hm = runs["cpu"]["package"]
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; {len(images)} portraits x {len(BOXES)} fixed boxes, "
          f"flip test on, random weights; reference: the package on the CPU\n")
    print("| run | implementation | max heatmap diff | heatmap max | argmax moved | point diff px p50 | p99 | max | ours images/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        for impl in ("package", "ours"):
            if name == "cpu" and impl == "package":
                continue
            kp, hm = r[impl]
            ips = f"{r['ips']:.0f}" if impl == "ours" else ""
            print(f"| {name} | {impl} | {_compare(kp, hm, ref_kp, ref_hm)} | {ips} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
