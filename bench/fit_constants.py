"""Tuned constants of the score and the copy gate, from a measurement file of bench/validity_real.py (tune half only).

Usage:
    python bench/fit_constants.py tests/data/validity_real_nvxs.json.gz [--quick]
    python bench/fit_constants.py LOCAL_FILE   # from validity_real.py --export LOCAL_FILE --export-thumbnails: also MEMORIZATION_PLACED

Per backend (the file says which): prints the values to paste into kohya_ext/similarity.py
(BACKEND_RATIO_WEIGHTS, BACKEND_COLOR_WEIGHTS) and kohya_ext/comparison.py (MEMORIZATION_*), with the
tune-half numbers behind each choice. With hrnet weights present, ``bench/validity_real.py DIR
--backend hrnet --export F`` writes the hrnet file and this prints hrnet's constants.

Rules (docs/validity.md):
- ratio weights within the geometry part are proportional to each ratio's signal-to-noise (across-character
  std of character means / pooled within-character std), pooled over presentations;
- the geometry scale (sum of ratio weights, relative to hair = 1), the eye-colour and the hair-histogram weights
  are the grid point with the best mean tune AUC at n = 4 over all presentations (shipped score, compare()),
  with the geometry scale kept >= GEOMETRY_MIN so that proportion drift still moves the score, and among points
  within AUC_TIE of the best the one with the most geometry;
- copy gate: the limit of each hash (drawn area/windows, face) is the midpoint between the 95th percentile of
  the copies it is meant for and the 1st percentile of genuine new drawings (same and other characters), but at
  most 3/4 of the closest genuine new drawing seen; MEMORIZATION_RELATIVE = the drawn-area limit over the smallest
  25th-percentile distinct distance of the tune reference sets (so the cap binds on none of them, only on sets of
  nearly identical drawings); MEMORIZATION_PLACED (the moved-onto-another-background search) = the midpoint between the
  5th percentile of the copies it applies to and the 99.9th percentile of genuine new drawings (gate presentations
  crossed).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import metrics  # bench/metrics.py (the script's folder is on sys.path)

import real_export as rx

from kohya_ext import similarity
from kohya_ext.ratios import RATIO_NAMES, UNAVAILABLE
from kohya_ext.comparison import CopyGate, nearest_other, reference_face_hashes, reference_hashes, reference_placed, sample_hashes

GEOMETRY_MIN = 0.125
GRID = {"geometry": (0.125, 0.25, 0.5), "eyes": (1.0, 1.5, 2.0), "hair_hist": (3.0, 4.0, 6.0, 8.0)}
QUICK_GRID = {"geometry": (0.125, 0.25), "eyes": (1.0,), "hair_hist": (2.0, 3.0)}
#: grid points within this of the best tune AUC count as tied; the tie goes to the most geometry
AUC_TIE = 0.003


def ratio_snr(data: rx.Loaded, backend: str) -> dict[str, float]:
    names = [n for n in RATIO_NAMES if n not in UNAVAILABLE.get(backend, {})]
    out = {}
    for n in names:
        within, means = [], []
        for pres in data.presentations:
            for c in data.halves["tune"]:
                s = data.sets[pres][c]
                v = np.array([m.ratios[n] for m in s["refs"] + s["new"] if m.status == "ok" and m.ratios.get(n) is not None])
                if len(v) > 3:
                    within.append(v.var(ddof=1))
                    means.append(v.mean())
        out[n] = float(np.std(means, ddof=1) / np.sqrt(np.mean(within)))
    return out


def tune_auc(data: rx.Loaded, identity: dict, n: int = 4) -> dict[str, float]:
    f = rx.shipped_score(identity)
    return {p: metrics.pairwise_auc(data.sets[p], data.halves["tune"], n, f)[0] for p in data.presentations}


def gate_distances(data: rx.Loaded) -> dict:
    """Tune half, gate presentations: drawn/window and face distances of genuine new drawings and of copies; reference nn."""
    out = {"genuine": {"img": [], "face": []}, "copies": {}, "nn_q25": {"img": [], "face": []}}
    for pres in data.gate_presentations:
        sets = data.sets[pres]
        for a in data.halves["tune"]:
            refs = sets[a]["refs"]
            rs = SimpleNamespace(measurements=refs)
            g = CopyGate(reference_hashes(rs), reference_face_hashes(rs))
            for c in data.halves["tune"]:
                for m in sets[c]["new"]:
                    d, f = g.distances(m)
                    out["genuine"]["img"].append(d)
                    out["genuine"]["face"].append(f)
            for e, ms in sets[a]["copies"].items():
                for m in ms:
                    d, f = g.distances(m)
                    out["copies"].setdefault((pres, e), {"img": [], "face": []})
                    out["copies"][(pres, e)]["img"].append(d)
                    out["copies"][(pres, e)]["face"].append(f)
            img = nearest_other([sample_hashes(m) for m in refs], [reference_hashes([m]) for m in refs])
            face = nearest_other([[m.face_phash] if m.face_phash else [] for m in refs], [reference_face_hashes([m]) for m in refs])
            if len(img) >= 4:
                out["nn_q25"]["img"].append(float(np.percentile(img, 25)))
            if len(face) >= 4:
                out["nn_q25"]["face"].append(float(np.percentile(face, 25)))
    return out


def placed_similarities(data: rx.Loaded) -> tuple[np.ndarray, np.ndarray]:
    """Tune half: the placed-copy search's best similarity for the copies it is meant for (any copy where one side has a
    plain canvas and the other not) and for genuine new drawings of every gate presentation against the references of
    every gate presentation (same and other characters)."""
    copies, genuine = [], []
    chars = data.halves["tune"]
    for ref_p in data.gate_presentations:
        gates = {a: CopyGate([], [], reference_placed=reference_placed(data.sets[ref_p][a]["refs"])) for a in chars}
        for a in chars:
            for ms in data.sets[ref_p][a]["copies"].values():
                copies += [v for m in ms if (v := gates[a].placed_similarity(m)) is not None]
            for smp_p in data.gate_presentations:
                for c in chars:
                    genuine += [v for m in data.sets[smp_p][c]["new"] if (v := gates[a].placed_similarity(m)) is not None]
    return np.array(copies), np.array(genuine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--quick", action="store_true", help="a smaller weight grid")
    args = ap.parse_args()
    t0 = time.time()
    data = rx.Loaded(args.file)
    identity = data.meta["backend"]
    backend = identity["backend"]
    print(f"# constants for {backend} from {args.file.name} (tune half: {', '.join(data.halves['tune'])})\n")

    snr = ratio_snr(data, backend)
    print("ratio signal-to-noise (tune, pooled over presentations):", {k: round(v, 2) for k, v in snr.items()})
    rel = {k: v / sum(snr.values()) for k, v in snr.items()}  # shares of the geometry part

    saved = (dict(similarity.BACKEND_RATIO_WEIGHTS.get(backend, {})), dict(similarity.BACKEND_COLOR_WEIGHTS.get(backend, {})))
    grid = QUICK_GRID if args.quick else GRID
    rows = []
    for geo, eyes, hist in itertools.product(grid["geometry"], grid["eyes"], grid["hair_hist"]):
        similarity.BACKEND_RATIO_WEIGHTS[backend] = {k: round(geo * v, 3) for k, v in rel.items()}
        similarity.BACKEND_COLOR_WEIGHTS[backend] = {"hair": 1.0, "eyes": eyes, "hair_hist": hist}
        a = tune_auc(data, identity)
        rows.append((float(np.mean(list(a.values()))), geo, eyes, hist, a))
        print(f"  geometry {geo} eyes {eyes} hair_hist {hist}: tune AUC n=4 mean {rows[-1][0]:.3f} "
              + " ".join(f"{p} {v:.3f}" for p, v in a.items()), flush=True)
    similarity.BACKEND_RATIO_WEIGHTS[backend], similarity.BACKEND_COLOR_WEIGHTS[backend] = saved
    top = max(r[0] for r in rows)
    best = max((r for r in rows if r[0] >= top - AUC_TIE), key=lambda r: (r[1], r[0]))
    _, geo, eyes, hist, _ = best
    print(f"\nbest: geometry {geo}, eyes {eyes}, hair_hist {hist} (tune AUC n=4 mean {best[0]:.3f})\n")
    print("# kohya_ext/similarity.py")
    print(f'BACKEND_RATIO_WEIGHTS["{backend}"] = {{' + ", ".join(f'"{k}": {geo * v:.3f}' for k, v in rel.items()) + "}")
    print(f'BACKEND_COLOR_WEIGHTS["{backend}"] = {{"hair": 1.0, "eyes": {eyes}, "hair_hist": {hist}}}')

    gd = gate_distances(data)
    gen = {k: np.array([x for x in v if x is not None]) for k, v in gd["genuine"].items()}
    limits = {}
    for part in ("img", "face"):
        cps = np.array([x for (pres, e), v in gd["copies"].items() for x in v[part] if x is not None
                        and (part == "face" or not (e == "new_bg" and pres.startswith("busy")))])
        if len(cps) == 0 or len(gen[part]) == 0:
            continue
        c95, g01, gmin = float(np.percentile(cps, 95)), float(np.percentile(gen[part], 1)), float(gen[part].min())
        limits[part] = int(min((c95 + g01) / 2, 0.75 * gmin)) // 2 * 2  # the midpoint, at most 3/4 of the closest genuine drawing; even
        print(f"\ncopy gate, {part}: copies 95th pct {c95:.0f} bits, genuine new drawings 1st pct {g01:.0f}, min {gmin:.0f} -> limit {limits[part]}")
    nn = np.array(gd["nn_q25"]["img"])
    relative = int(100 * limits["img"] / float(nn.min())) / 100 if len(nn) else None  # the cap binds on no tune set
    print(f"reference sets' 25th-percentile distinct distance (drawn/windows): median {np.median(nn):.0f}, min {nn.min():.0f} -> relative {relative}")
    pc, pg = placed_similarities(data)
    placed = None
    if not len(pc):
        print("no placed-copy thumbnails in this file (export with --export-thumbnails for MEMORIZATION_PLACED)")
    elif len(pg):
        c05, g999 = float(np.percentile(pc, 5)), float(np.percentile(pg, 99.9))
        placed = round((c05 + g999) / 2, 2)  # the midpoint; the few genuine drawings above it are same-artist near-variants
        print(f"placed copies ({len(pc)}): 5th pct {c05:.3f}, min {pc.min():.3f}; genuine new drawings ({len(pg)}): "
              f"99th pct {np.percentile(pg, 99):.3f}, 99.9th {g999:.3f}, max {pg.max():.3f} -> limit {placed}")
    print("\n# kohya_ext/comparison.py")
    print(f"MEMORIZATION_HAMMING = {limits['img']}")
    if "face" in limits:
        print(f"MEMORIZATION_FACE_HAMMING = {limits['face']}")
    print(f"MEMORIZATION_RELATIVE = {relative}")
    if placed is not None:
        print(f"MEMORIZATION_PLACED = {placed}")
    print(f"\n{time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
