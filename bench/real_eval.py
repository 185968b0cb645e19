"""Measurements and metrics of the real-drawing benchmark (bench/validity_real.py).

Measurements come from kohya_ext.measure.measure_faces (what users get) on
re-rendered images and cached detections, so a change of hashing, colour or ratio
code is measured without re-detecting. The metrics take a score function
``f(ref_measurements, sample_measurements) -> float`` and a copy gate
``g(sample_measurement, ref_measurements) -> bool``, so shipped code and
candidates are measured the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

import metrics
import real_data as rd
from kohya_ext.measure import ImageMeasurement, measure_faces
from kohya_ext.ratios import ExclusionRules

import kohya_ext

_CODE = Path(kohya_ext.__file__).resolve().parent  # the package imported (a checkout of another version measures itself)
#: A detection "mode" of a Setting is a chain of real_data.detect_mode modes joined by "+": the first that finds
#: a face is used (e.g. "plain+padsmall+pad"); "pad" alone always pads.


def code_version() -> str:
    """Measurements are re-made when the code that makes them changes."""
    h = hashlib.sha256()
    for f in ("measure.py", "phash.py", "color.py", "ratios.py"):
        h.update((_CODE / f).read_bytes())
    return h.hexdigest()[:12]


class Measurements:
    """ImageMeasurement per (mode, key), made by measure_faces and cached in a JSON file per code version."""

    def __init__(self, cache_dir: Path, renderer: rd.Renderer, det: rd.DetectionCache, backend_name: str = "nvxs"):
        self.renderer, self.det, self.backend_name = renderer, det, backend_name
        self.version = code_version()
        self.path = cache_dir / f"measurements-{self.version}.json"
        self.data: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.memo: dict[str, ImageMeasurement] = {}
        self.dirty = 0

    def _source_mode(self, key: rd.Key, chain: str) -> str:
        """The detection a chain resolves to: its first mode that found a face (else its last)."""
        modes = chain.split("+")
        for m in modes:
            if self.det.has(key, m) and self.det.get(key, m).faces:
                return m
        return modes[-1] if self.det.has(key, modes[-1]) else "plain"

    def get(self, key: rd.Key, mode: str = "plain") -> ImageMeasurement:
        src = self._source_mode(key, mode)
        k = f"{src}:{self.renderer.cache_key(key)}"
        if k in self.memo:
            return self.memo[k]
        if k not in self.data:
            img = self.renderer.image(key)
            det = self.det.get(key, src)
            m = measure_faces(self.backend_name, [str(key)], [img], [det], ExclusionRules())[0]
            self.data[k] = m.to_dict()
            self.dirty += 1
            if self.dirty % 500 == 0:
                self.save()
        m = ImageMeasurement.from_dict(self.data[k])
        self.memo[k] = m
        return m

    def save(self) -> None:
        if self.dirty:
            self.path.write_text(json.dumps(self.data))


@dataclass
class Half:
    name: str
    chars: list[rd.Character]


@dataclass
class Setting:
    presentation: str
    mode: str = "plain"


class Bench:
    def __init__(self, ms: Measurements, halves: dict[str, Half], copies: int):
        self.ms, self.halves, self.copies = ms, halves, copies

    def refs(self, c: rd.Character, s: Setting) -> list[ImageMeasurement]:
        return [self.ms.get(rd.Key(s.presentation, c.name, p.name), s.mode) for p in c.refs]

    def new(self, c: rd.Character, s: Setting) -> list[ImageMeasurement]:
        return [self.ms.get(rd.Key(s.presentation, c.name, p.name), s.mode) for p in c.new]

    def copy(self, c: rd.Character, s: Setting, edit: str) -> list[ImageMeasurement]:
        if edit == "exact":
            return self.refs(c, s)[: self.copies]
        return [self.ms.get(rd.Key(s.presentation, c.name, p.name, edit), s.mode) for p in c.refs[: self.copies]]

    # --- score ------------------------------------------------------------------------------------
    def sets(self, half: str, s: Setting, copies: bool = False) -> dict:
        """The half's characters as bench/metrics.py takes them."""
        return {c.name: {"refs": self.refs(c, s), "new": self.new(c, s),
                         "copies": {e: self.copy(c, s, e) for e in rd.COPY_EDITS} if copies else {}} for c in self.halves[half].chars}

    def auc(self, half: str, s: Setting, n: int, f: Callable) -> tuple[float, dict[str, float]]:
        """Pairwise AUC (bench/metrics.py) over the half's characters and all blocks of n; per character too."""
        return metrics.pairwise_auc(self.sets(half, s), [c.name for c in self.halves[half].chars], n, f)

    def detection_rate(self, half: str, s: Setting) -> tuple[float, float]:
        """(usable-face rate, rate where the usable face is the placed drawing) over reference and new drawings."""
        ok = right = total = 0
        for c in self.halves[half].chars:
            for p in c.refs + c.new:
                key = rd.Key(s.presentation, c.name, p.name)
                m = self.ms.get(key, s.mode)
                total += 1
                if m.status == "ok":
                    ok += 1
                    box = self.ms.renderer.placed_box(key)
                    cx, cy = (m.face_box[0] + m.face_box[2]) / 2, (m.face_box[1] + m.face_box[3]) / 2
                    right += box is None or (box[0] <= cx <= box[2] and box[1] <= cy <= box[3])
        return ok / total, right / total

    # --- copy gate ----------------------------------------------------------------------------------
    def gate_rates(self, half: str, s: Setting, g: Callable, evals: Iterable[int] = (4, 8), memorization_max: float = 0.5) -> dict[str, float]:
        """Flag rates of a gate g(sample, refs) -> bool (bench/metrics.py), and the share of evaluations it would deny."""
        return metrics.gate_rates(self.sets(half, s, copies=True), [c.name for c in self.halves[half].chars],
                                  lambda refs: (lambda m: g(m, refs)), tuple(evals), memorization_max)

    def cross_rates(self, half: str, sample_s: Setting, ref_s: Setting, g: Callable) -> dict[str, float]:
        """False alarms of g on genuine new drawings of one presentation against references of another
        (a character sheet on white scored against training scenes, and the reverse)."""
        chars = self.halves[half].chars
        refs = {a.name: self.refs(a, ref_s) for a in chars}
        same = [bool(g(m, refs[a.name])) for a in chars for m in self.new(a, sample_s)]
        other = [bool(g(m, refs[a.name])) for a in chars for c in chars if c.name != a.name for m in self.new(c, sample_s)]
        return {"new drawings, same character": float(np.mean(same)), "new drawings, other characters": float(np.mean(other))}


def fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
