"""Derived measurements of the real-drawing benchmark: written by bench/validity_real.py --export, read by
bench/fit_constants.py and tests/test_validity_real.py (offline CI floors). No images, no thumbnails:
per image its status, face box, landmark points, colours, hair histogram and copy-gate hashes. The copy
gate's moved-drawing search (kohya_ext.placed_copy) works on small greyscale copies of the images, which
are not committed for drawings without a licence: ``--export-thumbnails`` adds them to a local file for
bench/fit_constants.py (never commit it); CI floors of the search come from the shared portraits
(tests/test_placed_copy.py).

File (JSON, gzip): {"format": "kohya-ext-validity-real", "version": 1, "backend": identity, "chain": detection,
"measurement_version", "halves": {"tune": [names], "report": [names]}, "presentations", "gate_presentations",
"copy_edits", "images": {presentation: {character: {"refs": [m...], "new": [m...], "copies": {edit: [m...]}}}}}.
A compact measurement m holds only what the score and the gate read; ratios are recomputed from the points
with the current formulas (kohya_ext.ratios), so a formula change is tested too. Copies and copy-gate hashes
are kept for ``gate_presentations`` only (size).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from kohya_ext.measure import ImageMeasurement
from kohya_ext.phash import REFERENCE_WINDOW_INDEX, SAMPLE_WINDOW_INDEX, WINDOWS
from kohya_ext.ratios import RATIO_NAMES, ExclusionRules, compute_ratios

FORMAT = "kohya-ext-validity-real"
VERSION = 1


def _hist(h):
    """Histogram as {bin: value*1000} with zeros left out (sums to ~1000)."""
    return None if h is None else {str(i): int(round(1000 * v)) for i, v in enumerate(h) if round(1000 * v)}


def compact(m: ImageMeasurement, role: str, gate: bool, thumbnails: bool = False) -> dict:
    """role: "ref" or "sample" (what the copy gate reads of it differs); thumbnails: keep kohya_ext.placed_copy's (local files only)."""
    d: dict = {"s": m.status}
    if m.face_box is not None and m.points is not None:
        d["b"] = [round(float(v), 1) for v in m.face_box]
        d["p"] = np.round(np.asarray(m.points, float), 2).tolist()
    if m.status == "ok":
        if m.colors:
            d["c"] = {k: [round(float(x), 1) for x in v] for k, v in m.colors.items()}
        if m.hair_hist is not None:
            d["h"] = _hist(m.hair_hist)
    if gate and m.drawn_hash:
        wins = m.window_hashes or []
        if role == "ref":
            d["g"] = [m.drawn_hash, m.drawn_hash_mirror] + [wins[i] for i in REFERENCE_WINDOW_INDEX]
            if m.face_phash:
                d["f"] = [m.face_phash, m.face_phash_mirror] + list(m.face_phash_scaled or [])
        else:
            d["g"] = [m.drawn_hash] + [wins[i] for i in SAMPLE_WINDOW_INDEX]
            if m.face_phash:
                d["f"] = [m.face_phash]
        if thumbnails and m.placed:
            d["t"] = m.placed
    return d


def expand(d: dict, role: str, name: str = "") -> ImageMeasurement:
    """A compact measurement back as an ImageMeasurement (hashes in their production slots; Loaded sets the ratios)."""
    m = ImageMeasurement(name=name, status=d["s"])
    if "p" in d:
        m.points, m.face_box = d["p"], d["b"]
        m.point_scores = [1.0] * len(d["p"])
        m.face_score = 1.0
    m.colors = d.get("c")
    if d.get("h") is not None:
        from kohya_ext.color import HIST_BINS

        h = np.zeros(HIST_BINS)
        for k, v in d["h"].items():
            h[int(k)] = v / 1000.0
        m.hair_hist = h.tolist()
    if "g" in d:
        wins: list = [None] * len(WINDOWS)
        if role == "ref":
            m.drawn_hash, m.drawn_hash_mirror = d["g"][0], d["g"][1]
            for i, h in zip(REFERENCE_WINDOW_INDEX, d["g"][2:]):
                wins[i] = h
            if "f" in d:
                m.face_phash, m.face_phash_mirror, m.face_phash_scaled = d["f"][0], d["f"][1], d["f"][2:]
        else:
            m.drawn_hash = d["g"][0]
            for i, h in zip(SAMPLE_WINDOW_INDEX, d["g"][1:]):
                wins[i] = h
            if "f" in d:
                m.face_phash = d["f"][0]
        m.window_hashes = wins
        m.placed = d.get("t")
    return m


def set_ratios(ms: list[ImageMeasurement], backend: str) -> None:
    """Ratios and face status of every measurement with points, recomputed in one batch with the current formulas and rules."""
    faces = [m for m in ms if m.points is not None]
    if not faces:
        return
    pts = np.asarray([m.points for m in faces], float)
    rb = compute_ratios(backend, pts, np.ones(pts.shape[:2]), np.asarray([m.face_box for m in faces], float), ExclusionRules())
    for i, m in enumerate(faces):
        reason = rb.face_excluded[i]
        m.status = "ok" if reason is None else reason.replace(" ", "_")
        m.ratios = {n: (float(rb.values[i, j]) if rb.valid[i, j] else None) for j, n in enumerate(RATIO_NAMES)}


def write(path: Path, meta: dict, images: dict) -> None:
    data = {"format": FORMAT, "version": VERSION, **meta, "images": images}
    raw = json.dumps(data, separators=(",", ":")).encode()
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: the same measurements give the same bytes
        f.write(raw)


class Loaded:
    """A measurement file, expanded: ``sets[presentation][character]`` = {"refs", "new", "copies": {edit: [...]}}."""

    def __init__(self, path: Path):
        with gzip.open(path, "rb") as f:
            d = json.loads(f.read())
        if d.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        self.meta = {k: v for k, v in d.items() if k != "images"}
        self.halves: dict[str, list[str]] = d["halves"]
        self.presentations: list[str] = d["presentations"]
        self.gate_presentations: list[str] = d["gate_presentations"]
        self.sets: dict = {}
        for pres, by_char in d["images"].items():
            self.sets[pres] = {}
            for c, s in by_char.items():
                self.sets[pres][c] = {
                    "refs": [expand(x, "ref", f"{c}/ref{i}") for i, x in enumerate(s["refs"])],
                    "new": [expand(x, "sample", f"{c}/new{i}") for i, x in enumerate(s["new"])],
                    "copies": {e: [expand(x, "sample", f"{c}/{e}{i}") for i, x in enumerate(v)] for e, v in s.get("copies", {}).items()},
                }
        every = [m for by_char in self.sets.values() for s in by_char.values() for m in s["refs"] + s["new"] + [x for v in s["copies"].values() for x in v]]
        set_ratios(every, self.meta["backend"]["backend"])


def shipped_gate_for(refs):
    """The copy gate exactly as kohya_ext.comparison.compare applies it to a reference set."""
    from types import SimpleNamespace

    from kohya_ext.comparison import CopyGate, reference_face_hashes, reference_hashes, reference_placed, reference_thresholds

    rs = SimpleNamespace(measurements=refs)
    return CopyGate(reference_hashes(rs), reference_face_hashes(rs), *reference_thresholds(rs), reference_placed(rs)).is_copy


def shipped_score(identity: dict, colors: bool = True):
    """The shipped score through kohya_ext.comparison.compare; ``colors=False``: geometry only (colours dropped)."""
    from kohya_ext.reference import ReferenceStats
    from kohya_ext.comparison import compare

    rules = ExclusionRules().as_dict()
    memo: dict = {}

    def strip(ms):
        if colors:
            return ms
        out = []
        for m in ms:
            c = ImageMeasurement.from_dict(m.to_dict())
            c.colors = None
            c.hair_hist = None
            out.append(c)
        return out

    def f(ref, smp):
        k = tuple(id(x) for x in ref)
        if k not in memo:
            memo[k] = ReferenceStats(backend=identity, rules=rules, measurements=strip(ref))
        return compare(memo[k], strip(smp)).score

    return f
