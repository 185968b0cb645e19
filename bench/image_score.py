"""Per-image score (kohya_ext.image_score): does ONE image tell its character from others? (issue 11)

tadne: the 36 shared portraits as in bench/validity.py (one synthetic character per
portrait; reference = its 8 reference-side benign variants, same-character images =
its 8 sample-side variants, other characters = the other portraits' sample-side
variants; even tiles tune, odd tiles report). Same character here means benign edits
of one picture: a weak test (a new drawing of a character varies far more).

real: a ``<character>/<images>`` folder of genuinely different drawings (tuning data:
github:Sytwu/Anime-Face-Recognition ``face_dataset/``), selected, presented and
detected as bench/validity_real.py does (bench/real_data.py: per character ``--refs``
reference drawings and ``--new`` new ones, one face per source picture, duplicates
dropped; characters at even positions tune, odd report). Detections are cached in
``--cache`` (copy an existing ``detections-*.jsonl`` there to reuse it).

Prints, per half: the per-image AUC (mean over reference characters A of
P(score(image of A vs R_A) > score(image of B vs R_A)), ties 1/2, faceless images
included at 0; and over images with a usable face only), the worst characters, the
set score's AUC over blocks of 4 for comparison, the face detection rate, and pass
rates of same- and other-character images at several thresholds (the gate's
operating points), over all images and over images with a face.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import metrics  # bench/metrics.py (the script's folder is on sys.path)

from kohya_ext.image_score import DEFAULT_THRESHOLD, image_score
from kohya_ext.measure import ImageMeasurement
from kohya_ext.ratios import ExclusionRules
from kohya_ext.reference import ReferenceStats
from kohya_ext.comparison import compare

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


class Scores:
    """Per-image scores of every (reference character, image) pair of one half, and the summaries."""

    def __init__(self, identity: dict, refs: dict[str, list[ImageMeasurement]], images: dict[str, list[ImageMeasurement]]):
        rules = ExclusionRules().as_dict()
        self.identity, self.refs, self.images = identity, refs, images
        self.stats = {a: ReferenceStats(backend=identity, rules=rules, measurements=r) for a, r in refs.items()}
        self.own: dict[str, np.ndarray] = {}
        self.other: dict[str, np.ndarray] = {}
        self.own_face: dict[str, np.ndarray] = {}  # whether each image has a usable face
        self.other_face: dict[str, np.ndarray] = {}
        for a, ref in self.stats.items():
            self.own[a] = np.array([image_score(ref, m).score for m in images[a]])
            self.own_face[a] = np.array([m.status == "ok" for m in images[a]])
            others = [m for b, ms in images.items() if b != a for m in ms]
            self.other[a] = np.array([image_score(ref, m).score for m in others])
            self.other_face[a] = np.array([m.status == "ok" for m in others])

    def auc(self, faces_only: bool = False) -> tuple[float, dict[str, float]]:
        if faces_only:
            per = {a: metrics.auc(self.own[a][self.own_face[a]], self.other[a][self.other_face[a]]) for a in self.stats}
        else:
            per = {a: metrics.auc(self.own[a], self.other[a]) for a in self.stats}
        return float(np.nanmean(list(per.values()))), per

    def set_auc(self, n: int = 4) -> float:
        """The set score's pairwise AUC over disjoint blocks of n images (as bench/validity*.py measure it)."""
        per = []
        for a, ref in self.stats.items():
            own = np.array([compare(ref, b).score for b in metrics.blocks(self.images[a], n)])
            other = np.array([compare(ref, b).score for c, ms in self.images.items() if c != a for b in metrics.blocks(ms, n)])
            per.append(metrics.auc(own, other))
        return float(np.nanmean(per))

    def detection(self) -> float:
        ms = [m for v in self.images.values() for m in v]
        return float(np.mean([m.status == "ok" for m in ms])) if ms else float("nan")

    def pass_rates(self, t: float, faces_only: bool = False) -> tuple[float, float]:
        """(same-character images passing, other-character images passing) at threshold t, averaged over characters."""
        def rate(v, face):
            v = v[face] if faces_only else v
            return np.mean(v >= t) if v.size else np.nan
        same = np.nanmean([rate(self.own[a], self.own_face[a]) for a in self.stats])
        other = np.nanmean([rate(self.other[a], self.other_face[a]) for a in self.stats])
        return float(same), float(other)

    def medians(self) -> tuple[float, float]:
        return (float(np.median(np.concatenate(list(self.own.values())))),
                float(np.median(np.concatenate(list(self.other.values())))))


def print_half(title: str, s: Scores) -> None:
    a, per = s.auc()
    af, _ = s.auc(faces_only=True)
    worst = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: kv[1])[:3])
    ms, mo = s.medians()
    print(f"| {title} | {len(s.stats)} | {a:.3f} | {af:.3f} | {s.set_auc(4):.3f} | {s.detection():.2f} | {ms:.2f} / {mo:.2f} | {worst} |")


def print_rates(title: str, s: Scores, faces_only: bool = False) -> None:
    cells = []
    for t in THRESHOLDS:
        same, other = s.pass_rates(t, faces_only)
        cells.append(f"{same:.2f} / {other:.2f}")
    print(f"| {title} | " + " | ".join(cells) + " |")


HEAD = ("| data (half) | characters | per-image AUC | per-image AUC, faces only | set AUC (n=4) | face detection | "
        "median score same / other | worst characters |\n|---|---|---|---|---|---|---|---|")
RATE_HEAD = ("| data (half) | " + " | ".join(f"t={t:.1f}" for t in THRESHOLDS) + " |\n|---|" + "---|" * len(THRESHOLDS))


# -- the shared portraits ---------------------------------------------------------------------------

def run_tadne(args) -> list[tuple[str, Scores]]:
    import validity as v  # bench/validity.py: same variants, same cache format

    tiles = v.load_tiles(Path(args.grid))
    store = v.Store(tiles, Path(args.cache), args.threads)
    n = len(tiles)
    store.ensure([(t, k) for t in range(n) for k in list(v.REF_VARIANTS) + list(v.SAMPLE_VARIANTS)])
    prod = v.Production(store.identity)
    usable = [t for t in range(n) if store.get(t, "orig").m.status == "ok"]
    out = []
    for name, parity in (("tadne (tune, even tiles)", 0), ("tadne (report, odd tiles)", 1)):
        chars = [t for t in usable if t % 2 == parity]
        refs = {str(t): prod._ms([store.get(t, k) for k in v.REF_VARIANTS]) for t in chars}
        imgs = {str(t): prod._ms([store.get(t, k) for k in v.SAMPLE_VARIANTS]) for t in chars}
        out.append((name, Scores(store.identity, refs, imgs)))
    return out


# -- real drawings ----------------------------------------------------------------------------------

def run_real(args) -> list[tuple[str, Scores]]:
    import real_data as rd  # bench/real_data.py, bench/real_eval.py: the real-drawing benchmark's loaders (issue 9)
    import real_eval as ev
    from kohya_ext.backends.nvxs import NvxsBackend

    chars = rd.select(Path(args.dir), args.refs, args.new)
    print(f"{len(chars)} characters with >= {args.refs + args.new} distinct drawings", file=sys.stderr)
    cache = rd.DetectionCache(Path(args.cache), NvxsBackend(threads=args.threads, colors=False))
    cache.ensure_backgrounds([p for c in chars for p in c.spare])
    renderer = rd.Renderer(chars, cache.background_ok)
    cache.renderer = renderer
    pres = [p for p in args.presentations.split(",") if p]
    keys = [rd.Key(pr, c.name, p.name) for pr in pres for c in chars for p in c.refs + c.new]
    cache.ensure(renderer, keys)
    ms = ev.Measurements(Path(args.cache), renderer, cache)
    identity = cache.backend.identity()
    out = []
    for half, members in rd.halves(chars).items():
        for pr in pres:
            refs = {c.name: [ms.get(rd.Key(pr, c.name, p.name)) for p in c.refs] for c in members}
            imgs = {c.name: [ms.get(rd.Key(pr, c.name, p.name)) for p in c.new] for c in members}
            out.append((f"real {pr} ({half})", Scores(identity, refs, imgs)))
    ms.save()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="data", required=True)
    t = sub.add_parser("tadne")
    t.add_argument("--grid", default=str(Path(__file__).resolve().parents[2] / "shared/data/tadne/grid.jpg"))
    t.add_argument("--cache", default=str(Path.home() / ".cache/kohya_ext_bench/validity"))
    t.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("real")
    r.add_argument("dir")
    r.add_argument("--cache", default=str(Path.home() / ".cache/kohya_validity_real"))
    r.add_argument("--seed-detections", default=None, help="copy this detections-*.jsonl into --cache first (if --cache has none)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--refs", type=int, default=16)
    r.add_argument("--new", type=int, default=32)
    r.add_argument("--presentations", default="tight,white,busy,busy_blur")
    args = ap.parse_args()
    t0 = time.time()
    if args.data == "real" and args.seed_detections:
        dest = Path(args.cache) / Path(args.seed_detections).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(args.seed_detections, dest)
    results = run_tadne(args) if args.data == "tadne" else run_real(args)
    first = results[0][1]
    ref = next(iter(first.stats.values()))
    faced = next(m for ms in first.images.values() for m in ms if m.status == "ok")
    print(f"\n### Per-image score ({ref.backend_name}, version {image_score(ref, faced).version})\n")
    print(HEAD)
    for name, s in results:
        print_half(name, s)
    print(f"\n### Pass rates: same-character / other-character images at or above t (gate default {DEFAULT_THRESHOLD})\n")
    print(RATE_HEAD)
    for name, s in results:
        print_rates(name, s)
    print("\n### The same, counting only images with a usable face (a faceless image always fails)\n")
    print(RATE_HEAD)
    for name, s in results:
        print_rates(name, s, faces_only=True)
    print(f"\n({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
