"""Overhead of the ComfyUI nodes over the scorer itself (issue 11): batches of 1, 8, 32 at 512x512, nvxs.

"Scorer" is ``Scorer.score_images`` on uint8 arrays: detection, measurement and the set
score, what the CLI and the training integration run. "Node" is the Character consistency
node's ``execute`` (the V3 class when ComfyUI's comfy_api is importable, else
kohya_ext.comfy.core.consistency, which is all that execute calls): IMAGE tensor -> pixels,
the pixel hash of the measurement memo, the same measurement and set score, per-image
scores, the report text, overlays drawn and turned back into an IMAGE tensor.

Overhead = node - scorer, timed with detection replaced by a replay of its own earlier
results on both sides (so the difference is not drowned by detection's noise on a shared
machine); the scorer's own time is timed with real detection. Both are medians of
--repeats runs. Also shown: the gate on a batch the consistency node already measured
(the memo: no second detection).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from kohya_ext.comfy import core
from kohya_ext.demo import TILE, grid_tiles
from kohya_ext.images import load_image
from kohya_ext.image_score import image_scores
from kohya_ext.scorer import Scorer


def median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


class Replay:
    """Stands in for backend.detect: returns the detections the real backend gave for the same pixels."""

    def __init__(self, backend):
        self.backend, self.real, self.seen = backend, backend.detect, {}

    def record(self, arrays):
        for a, d in zip(arrays, self.real(arrays)):
            self.seen[core.pixels_digest([a])] = d

    def __call__(self, images):
        return [self.seen[core.pixels_digest([a])] for a in images]


def node_call():
    """The consistency node's execute (V3 class) if comfy_api imports, else the core function it wraps."""
    try:
        from kohya_ext.comfy.nodes import CharacterConsistency

        return "CharacterConsistency.execute", lambda ref, t: CharacterConsistency.execute([t], [ref], ["en"])
    except ImportError:
        return "core.consistency (comfy_api not importable)", lambda ref, t: core.consistency(ref, t, "en")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(Path(__file__).resolve().parents[2] / "shared/data/tadne/grid.jpg"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    tiles = grid_tiles(load_image(Path(args.grid)))
    from kohya_ext.backends import BackendSpec

    spec = BackendSpec("nvxs", threads=args.threads)
    ref = core.reference_from_images(core.arrays_to_tensor(tiles[1:9]), spec)
    scorer = Scorer(ref.stats, spec, progress=False)
    backend = spec.create()
    replay = Replay(backend)
    name, node = node_call()
    print(f"# ComfyUI node overhead (nvxs, {args.threads} threads, {TILE}x{TILE}, median of {args.repeats}; node = {name})\n")
    print("| batch | scorer (s) | node overhead (ms) | overhead / scorer | tensor -> pixels + hash (ms) | per-image scores (ms) "
          "| overlays (ms) | gate after consistency (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for b in [int(x) for x in args.batches.split(",")]:
        arrays = [tiles[9 + i % (len(tiles) - 9)] for i in range(b)]
        tensor = core.arrays_to_tensor(arrays)
        backend.detect = replay.real
        scorer_s = median_time(lambda: scorer.score_images(arrays), max(1, args.repeats if b < 32 else (args.repeats + 1) // 2))
        replay.record(arrays)
        backend.detect = replay
        plain = median_time(lambda: scorer.score_images(arrays), args.repeats)

        def run_node():
            core._MEASURED.clear()  # measure again, as a new batch would be
            node(ref, tensor)

        nodal = median_time(run_node, args.repeats)
        conv = median_time(lambda: core.pixels_digest(core.tensor_to_arrays(tensor)), args.repeats)
        ms = core.measure_tensor(tensor, spec)
        per = median_time(lambda: image_scores(ref.stats, ms), args.repeats)
        sc = image_scores(ref.stats, ms)
        ov = median_time(lambda: core.draw_overlays(arrays, ms, sc, tensor), args.repeats)
        gate = median_time(lambda: core.gate(ref, tensor, 0.5), args.repeats)
        backend.detect = replay.real
        over = nodal - plain
        print(f"| {b} | {scorer_s:.2f} | {1000 * over:.0f} | {100 * over / scorer_s:.1f} % | {1000 * conv:.0f} | {1000 * per:.0f} "
              f"| {1000 * ov:.0f} | {1000 * gate:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
