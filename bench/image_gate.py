"""The image gate (kohya_ext.images.fit_for_detection): what downscaling large images does to the
score, and what the gate costs (issue 15).

The 36 TADNE portraits (512 px tiles) are split into a reference half and a sample half, as in
the demo. The sample half is upscaled (Lanczos) to each --sizes side, then scored twice against
the reference: through the gate (downscaled to MAX_DETECT_PIXELS before detection, what ships)
and with the gate lifted (nvxs detects at full size; only below ~80 MP, where libnvxs crashes).
Shown per size: the set score both ways, the mean absolute per-image ratio difference between
them, detection time per image both ways. Then the gate's cost on images it does not resize
(512 and 1024 px renders: a shape check) and on images it does, as a share of scoring time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

import kohya_ext.images as images_module
from kohya_ext.backends import BackendSpec
from kohya_ext.demo import grid_tiles
from kohya_ext.images import MAX_DETECT_PIXELS, fit_for_detection, load_image
from kohya_ext.ratios import RATIO_NAMES
from kohya_ext.scorer import Scorer, load_references


@contextmanager
def gate_lifted():
    """Detection at full size, as before the gate (for comparison only: unsafe on huge images)."""
    saved = images_module.MAX_DETECT_PIXELS  # the gate and the backends' check both read it from there
    images_module.MAX_DETECT_PIXELS = 10**12
    try:
        yield
    finally:
        images_module.MAX_DETECT_PIXELS = saved


def timed_score(scorer: Scorer, imgs: list[np.ndarray]):
    t = time.perf_counter()
    report = scorer.score_images(imgs)
    return report, (time.perf_counter() - t) / len(imgs)


def ratio_gap(a, b) -> float:
    """Mean |ratio difference| over images and ratios measured both ways (relative to the value)."""
    gaps = []
    for ma, mb in zip(a.samples, b.samples):
        for k in RATIO_NAMES:
            va, vb = (ma.ratios or {}).get(k), (mb.ratios or {}).get(k)
            if va is not None and vb is not None and va:
                gaps.append(abs(va - vb) / abs(va))
    return 100 * statistics.fmean(gaps) if gaps else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(Path(__file__).resolve().parents[2] / "shared/data/tadne/grid.jpg"))
    ap.add_argument("--sizes", default="3072,4096")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    ts = grid_tiles(load_image(Path(args.grid)))
    half = len(ts) // 2
    spec = BackendSpec("nvxs", threads=args.threads)
    ref_dir = Path("/tmp/kohya_ext_bench_gate_ref")
    ref_dir.mkdir(exist_ok=True)
    for i, t in enumerate(ts[:half]):
        Image.fromarray(t).save(ref_dir / f"ref_{i:02d}.png")
    scorer = Scorer(load_references(ref_dir, spec, use_cache=False, progress=False)[0], spec, progress=False)
    samples = ts[half:]
    native, native_s = timed_score(scorer, samples)
    print(f"gate: MAX_DETECT_PIXELS = {MAX_DETECT_PIXELS} ({MAX_DETECT_PIXELS / 1e6:.1f} MP); nvxs, {args.threads} threads; "
          f"{len(samples)} samples vs {half} references")
    print(f"native 512 px samples: score {native.score:.3f}, {native_s * 1000:.0f} ms/image\n")
    print("| sample side | score, gate (ships) | score, full-size detection | mean per-image ratio gap | "
          "detect ms/img, gate | detect ms/img, full size | detection rate gate / full |")
    print("|---|---|---|---|---|---|---|")
    for side in (int(s) for s in args.sizes.split(",")):
        big = [np.asarray(Image.fromarray(t).resize((side, side), Image.Resampling.LANCZOS)) for t in samples]
        gated, g_s = timed_score(scorer, big)
        with gate_lifted():
            full, f_s = timed_score(scorer, big)
        print(f"| {side} | {gated.score:.3f} | {full.score:.3f} | {ratio_gap(gated, full):.2f} % | {g_s * 1000:.0f} | "
              f"{f_s * 1000:.0f} | {gated.detection_rate:.2f} / {full.detection_rate:.2f} |")

    print("\n| images | gate ms/img | scoring ms/img | gate share |")
    print("|---|---|---|---|")
    for side in (512, 1024, 3072):
        imgs = [np.asarray(Image.fromarray(t).resize((side, side), Image.Resampling.LANCZOS)) for t in samples[:6]]
        t0 = time.perf_counter()
        for _ in range(20):
            for im in imgs:
                fit_for_detection(im)
        gate_s = (time.perf_counter() - t0) / (20 * len(imgs))
        _, score_s = timed_score(scorer, imgs)  # includes the gate
        print(f"| {side}x{side} | {gate_s * 1000:.3f} | {score_s * 1000:.0f} | {100 * gate_s / score_s:.3f} % |")


if __name__ == "__main__":
    main()
