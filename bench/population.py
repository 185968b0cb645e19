"""Per-ratio spread across many different characters: the prior behind reference.POPULATION_STD.

Prints mean, std and robust std (MAD) of each ratio over one face per portrait.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kohya_ext.backends import BackendSpec
from kohya_ext.demo import grid_tiles
from kohya_ext.images import load_image
from kohya_ext.measure import measure_arrays
from kohya_ext.ratios import RATIO_NAMES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="nvxs")
    ap.add_argument("--grid", default=str(Path(__file__).resolve().parents[2] / "shared/data/tadne/grid.jpg"))
    args = ap.parse_args()
    ms = measure_arrays(BackendSpec(args.backend).create(), grid_tiles(load_image(args.grid)))
    ok = [m for m in ms if m.status == "ok"]
    print(f"{args.backend}: {len(ok)} usable faces of {len(ms)} portraits\n")
    print("| ratio | n | mean | std | MAD-std |\n|---|---|---|---|---|")
    for name in RATIO_NAMES:
        v = np.array([m.ratios[name] for m in ok if m.ratios.get(name) is not None])
        if len(v) < 2:
            print(f"| {name} | {len(v)} | - | - | - |")
            continue
        mad = np.median(np.abs(v - np.median(v))) * 1.4826
        print(f"| {name} | {len(v)} | {v.mean():.4f} | {v.std(ddof=1):.4f} | {mad:.4f} |")


if __name__ == "__main__":
    main()
