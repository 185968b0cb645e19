"""Several characters in one evaluation: each scored against its own reference, then combined.

The combined numbers are the per-character ones weighted by their number of images; a key a
character lacks (an unavailable ratio) is left out of that key's mean.
"""

from __future__ import annotations

from typing import Any


def weighted_means(parts: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Per-key means of several dicts of numbers, weighted (keys a part lacks are left out of its mean)."""
    keys = {k for _, d in parts for k in d}
    out = {}
    for k in sorted(keys):
        have = [(w, d[k]) for w, d in parts if d.get(k) is not None]
        if have and sum(w for w, _ in have) > 0:
            out[k] = sum(w * v for w, v in have) / sum(w for w, _ in have)
    return out


def combine_characters(per: dict[str, dict[str, Any]], tag: Any) -> dict[str, Any]:
    """One result from per-character results (each with ``images``, ``scalars``, ``ratios``,
    ``memorization``, ``score_version``, ``backend``); ``tag(character)`` names its tracker tags."""
    combined = weighted_means([(r["images"], r["scalars"]) for r in per.values()])
    scalars = dict(combined)
    for c, r in per.items():
        for k in ("score", "detection_rate", "memorization"):
            if r.get(k) is not None:
                scalars[f"consistency/character/{tag(c)}/{k}"] = float(r[k])
    ratio_names = {n for r in per.values() for n in r["ratios"]}
    ratios = {n: {k: weighted_means([(r["images"], {k: (r["ratios"].get(n) or {}).get(k)}) for r in per.values()]).get(k)
                  for k in ("diff_pct", "z")} for n in sorted(ratio_names)}
    mems = [(r["images"], {"m": r["memorization"]}) for r in per.values() if r.get("memorization") is not None]
    first = next(iter(per.values()))
    return {
        "score": combined["consistency/score"], "detection_rate": combined.get("consistency/detection_rate", 0.0),
        "memorization": weighted_means(mems).get("m") if mems else None, "score_version": first.get("score_version"),
        "backend": first.get("backend"), "ratios": ratios, "scalars": scalars,
        "characters": {c: {k: r.get(k) for k in ("score", "detection_rate", "memorization", "images")} for c, r in per.items()},
    }
