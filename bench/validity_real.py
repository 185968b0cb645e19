"""Real-drawing benchmark (issue 9): does the score, and the copy gate, hold on genuine art?

DIR holds ``<character>/<images>``: several genuinely different drawings per
character (tuning data: github:Sytwu/Anime-Face-Recognition, ``face_dataset/``).
See bench/real_data.py for selection, presentations and copy edits, and
docs/validity.md for the tables this prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import real_data as rd
import real_eval as ev
import real_export as rx


def shipped_gate():
    """The copy gate as compare() applies it, g(sample, refs) (bench/real_export.shipped_gate_for, one gate per reference set)."""
    memo = {}

    def g(m, ref):
        k = tuple(id(x) for x in ref)
        if k not in memo:
            memo[k] = rx.shipped_gate_for(ref)
        return memo[k](m)

    return g


def print_tables(bench: ev.Bench, identity: dict, title: str, mode: str = "plain") -> None:
    f, fg = rx.shipped_score(identity), rx.shipped_score(identity, colors=False)
    print(f"\n### {title}: score (pairwise AUC, same vs other character; reference 16)\n")
    print("| presentation | half | AUC n=4 | AUC n=8 | geometry n=4 | geometry n=8 | worst characters (n=4) |\n|---|---|---|---|---|---|---|")
    for pres in rd.PRESENTATIONS:
        s = ev.Setting(pres, mode)
        for half in ("tune", "report"):
            a4, per = bench.auc(half, s, 4, f)
            a8, _ = bench.auc(half, s, 8, f)
            g4, _ = bench.auc(half, s, 4, fg)
            g8, _ = bench.auc(half, s, 8, fg)
            worst = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: kv[1])[:3])
            print(f"| {pres} | {half} | {a4:.3f} | {a8:.3f} | {g4:.3f} | {g8:.3f} | {worst} |")
    print(f"\n### {title}: detection (usable face; in brackets: the usable face is the placed drawing)\n")
    print("| presentation | tune | report |\n|---|---|---|")
    for pres in rd.PRESENTATIONS:
        s = ev.Setting(pres, mode)
        cells = [bench.detection_rate(h, s) for h in ("tune", "report")]
        print(f"| {pres} | " + " | ".join(f"{a:.3f} ({b:.3f})" for a, b in cells) + " |")
    print(f"\n### {title}: copy gate (per-image flag rates)\n")
    g = shipped_gate()
    rows = {}
    for pres in rd.PRESENTATIONS:
        for half in ("tune", "report"):
            rows[(pres, half)] = bench.gate_rates(half, ev.Setting(pres, mode), g)
    cols = list(rows)
    print("| rate | " + " | ".join(f"{p} {h}" for p, h in cols) + " |\n|---|" + "---|" * len(cols))
    for k in rows[cols[0]]:
        print(f"| {k} | " + " | ".join(ev.fmt(rows[c][k]) for c in cols) + " |")
    print(f"\n### {title}: copy gate across backgrounds (genuine new drawings of one presentation against references of another)\n")
    pairs = [(smp, ref) for smp, ref in CROSS_PAIRS if smp in rd.PRESENTATIONS and ref in rd.PRESENTATIONS]
    rows = {(smp, ref, half): bench.cross_rates(half, ev.Setting(smp, mode), ev.Setting(ref, mode), g) for smp, ref in pairs for half in ("tune", "report")}
    cols = list(rows)
    print("| rate | " + " | ".join(f"{smp} vs {ref} refs, {h}" for smp, ref, h in cols) + " |\n|---|" + "---|" * len(cols))
    for k in rows[cols[0]]:
        print(f"| {k} | " + " | ".join(ev.fmt(rows[c][k]) for c in cols) + " |")


#: (sample presentation, reference presentation) pairs of the cross-background false-alarm table
CROSS_PAIRS = (("white", "busy"), ("busy", "white"))


def keys_for(chars, copies: int):
    base, cps = [], []
    for pres in rd.PRESENTATIONS:
        for c in chars:
            base += [rd.Key(pres, c.name, p.name) for p in c.refs + c.new]
            cps += [rd.Key(pres, c.name, p.name, e) for p in c.refs[:copies] for e in rd.COPY_EDITS if e != "exact"]
    return base, cps


#: Detection retries measured (bench/real_data.detect_mode), each run on every image the plain detection missed.
RETRY_MODES = ("padsmall", "mirror", "pad")


def detect_all(args, chars, renderer, cache, retry_modes=RETRY_MODES) -> None:
    for keys in keys_for(chars, args.copies):  # the drawings first, then their copies
        for pres in rd.PRESENTATIONS:
            cache.ensure(renderer, [k for k in keys if k.presentation == pres])
        for mode in retry_modes:
            missed = [k for k in keys if not cache.get(k).faces and (mode != "pad" or k.presentation == "tight")]
            cache.ensure(renderer, missed, mode=mode)


def export(path: Path, bench: ev.Bench, chain: str, identity: dict, gate_presentations: list[str], copies: int,
           thumbnails: bool = False) -> None:
    """Derived measurements for CI and bench/fit_constants.py (bench/real_export.py): no images."""
    from kohya_ext.measure import MEASUREMENT_VERSION

    images: dict = {}
    for pres in rd.PRESENTATIONS:
        s = ev.Setting(pres, chain)
        gate = pres in gate_presentations
        images[pres] = {}
        for half in ("tune", "report"):
            for c in bench.halves[half].chars:
                d = {"refs": [rx.compact(m, "ref", gate, thumbnails) for m in bench.refs(c, s)],
                     "new": [rx.compact(m, "sample", gate, thumbnails) for m in bench.new(c, s)]}
                if gate:
                    d["copies"] = {e: [rx.compact(m, "sample", True, thumbnails) for m in bench.copy(c, s, e)[:copies]] for e in rd.COPY_EDITS}
                images[pres][c.name] = d
    meta = {"backend": identity, "chain": chain, "measurement_version": MEASUREMENT_VERSION,
            "source": "github:Sytwu/Anime-Face-Recognition face_dataset (bench/real_data.py selection)",
            "halves": {h: [c.name for c in bench.halves[h].chars] for h in ("tune", "report")},
            "presentations": list(rd.PRESENTATIONS), "gate_presentations": gate_presentations, "copy_edits": list(rd.COPY_EDITS),
            "refs": len(next(iter(bench.halves.values())).chars[0].refs), "new": len(next(iter(bench.halves.values())).chars[0].new),
            "copies_per_character": copies}
    rx.write(path, meta, images)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)


def auc_by_n(bench: ev.Bench, identity: dict, chain: str, sizes=(1, 2, 4, 8, 16)) -> None:
    f = rx.shipped_score(identity)
    print("\n### AUC against the number of new drawings per evaluation (reference 16)\n")
    print("| presentation | half | " + " | ".join(f"n={n}" for n in sizes) + " |\n|---|---|" + "---|" * len(sizes))
    for pres in rd.PRESENTATIONS:
        for half in ("tune", "report"):
            cells = [bench.auc(half, ev.Setting(pres, chain), n, f)[0] for n in sizes]
            print(f"| {pres} | {half} | " + " | ".join(f"{x:.3f}" for x in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/kohya_validity_real")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refs", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--backend", default="nvxs", choices=("nvxs", "hrnet"))
    ap.add_argument("--chain", default=None,
                    help="detection modes tried in order, joined by + (nvxs default: plain + kohya_ext.backends.nvxs.DEFAULT_RETRY)")
    ap.add_argument("--detect-only", action="store_true")
    ap.add_argument("--no-detect", action="store_true", help="use cached detections only (another run is detecting)")
    ap.add_argument("--by-n", action="store_true", help="also print AUC against the number of new drawings (1..16)")
    ap.add_argument("--export", type=Path, help="write the derived measurements (JSON, gzip) to this file")
    ap.add_argument("--gate-presentations", default="white,busy", help="presentations whose copies and gate hashes are exported")
    ap.add_argument("--export-copies", type=int, default=4, help="copies per character and edit in the export")
    ap.add_argument("--export-thumbnails", action="store_true",
                    help="also export the moved-drawing search's small greyscale copies (for bench/fit_constants.py; "
                         "copies of the drawings: a local file, never commit it)")
    args = ap.parse_args()
    t0 = time.time()
    chars = rd.select(args.dir, args.refs, args.new)
    print(f"{len(chars)} characters with >= {args.refs + args.new} distinct drawings", file=sys.stderr)
    if args.backend == "nvxs":
        from kohya_ext.backends import nvxs

        # the bench emulates retries as detection modes (real_data.detect_mode), so its detector retries nothing itself
        backend = nvxs.NvxsBackend(threads=args.threads, colors=False, **({"retry": ()} if hasattr(nvxs, "RETRY_MODES") else {}))
        chain = args.chain or "+".join(("plain",) + tuple(getattr(nvxs, "DEFAULT_RETRY", ())))
        identity = nvxs.NvxsBackend(threads=1).identity()  # what a user's reference records
    else:
        from kohya_ext.backends import BackendSpec

        backend = BackendSpec("hrnet").create()
        chain = args.chain or "plain"
        identity = backend.identity()
    cache = rd.DetectionCache(args.cache, backend)
    cache.ensure_backgrounds([p for c in chars for p in c.spare])
    renderer = rd.Renderer(chars, cache.background_ok)
    cache.renderer = renderer
    if not args.no_detect:
        detect_all(args, chars, renderer, cache, RETRY_MODES if args.backend == "nvxs" else tuple(chain.split("+")[1:]))
    print(f"detections ready ({cache.detected} new) in {time.time() - t0:.0f} s", file=sys.stderr)
    if args.detect_only:
        return
    ms = ev.Measurements(args.cache, renderer, cache, identity["backend"])
    hv = {k: ev.Half(k, v) for k, v in rd.halves(chars).items()}
    print(f"# kohya-ext on real drawings ({identity['backend']}, detection {chain})\n\n{len(chars)} characters; tune = {', '.join(c.name for c in hv['tune'].chars)}; "
          f"report = {', '.join(c.name for c in hv['report'].chars)}. {args.refs} reference + {args.new} new drawings each, "
          f"copies of the first {args.copies} references.")
    bench = ev.Bench(ms, hv, args.copies)
    print_tables(bench, identity, "Shipped code", chain)
    if args.by_n:
        auc_by_n(bench, identity, chain)
    ms.save()
    if args.export:
        export(args.export, bench, chain, identity, [p for p in args.gate_presentations.split(",") if p], args.export_copies, args.export_thumbnails)
    print(f"\n{time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
