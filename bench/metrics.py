"""The metrics every real-data bench reports, in one place (bench/real_eval.py, bench/fit_constants.py,
bench/image_score.py, tests/test_validity_real.py): blocks of n drawings, the pairwise AUC, the copy
gate's flag rates. ``sets[character]`` = {"refs": [...], "new": [...], "copies": {edit: [...]}}."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def blocks(items: Any, n: int) -> list:
    """Disjoint, consecutive blocks of n (a short tail is dropped)."""
    return [items[k : k + n] for k in range(0, len(items) - n + 1, n)]


def auc(own: np.ndarray, other: np.ndarray) -> float:
    """P(own > other) over every pair, ties counted 1/2 (NaN when either side is empty)."""
    own, other = np.asarray(own), np.asarray(other)
    if own.size == 0 or other.size == 0:
        return float("nan")
    return float(((own[:, None] > other[None]).sum() + 0.5 * (own[:, None] == other[None]).sum()) / (own.size * other.size))


def pairwise_auc(sets: dict, chars: list[str], n: int, score: Callable) -> tuple[float, dict[str, float]]:
    """P(score(S_A vs R_A) > score(S_B vs R_A)) over A != B in ``chars`` and blocks of n new drawings (ties 1/2); per character."""
    smp = {c: blocks(sets[c]["new"], n) for c in chars}
    per = {}
    for a in chars:
        ref = sets[a]["refs"]
        per[a] = auc(np.array([score(ref, b) for b in smp[a]]), np.array([score(ref, b) for c in chars if c != a for b in smp[c]]))
    return float(np.mean(list(per.values()))), per


def gate_rates(sets: dict, chars: list[str], gate_for: Callable, evals=(4, 8), memorization_max: float = 0.5) -> dict[str, float]:
    """Per-image flag rates of ``gate_for(refs) -> is_copy(sample)``: genuine new drawings (same / other characters),
    evaluations of n new drawings it would deny (share flagged > memorization_max), and each kind of copy."""
    same, other = [], []
    denied = {n: [] for n in evals}
    copies: dict[str, list] = {}
    for a in chars:
        g = gate_for(sets[a]["refs"])
        flags = [bool(g(m)) for m in sets[a]["new"]]
        same += flags
        for n in evals:
            denied[n] += [np.mean(b) > memorization_max for b in blocks(flags, n)]
        for c in chars:
            if c != a:
                other += [bool(g(m)) for m in sets[c]["new"]]
        for e, ms in (sets[a].get("copies") or {}).items():
            copies.setdefault(e, []).extend(bool(g(m)) for m in ms)
    out = {"new drawings, same character": float(np.mean(same)), "new drawings, other characters": float(np.mean(other))}
    for n in evals:
        out[f"evaluations of {n} new drawings denied"] = float(np.mean(denied[n]))
    for e, v in copies.items():
        out[f"copies: {e}"] = float(np.mean(v))
    return out
