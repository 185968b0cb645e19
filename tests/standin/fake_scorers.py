"""Scorers for `--consistency_scorer fake_scorers:scripted` (CI only).

``$FAKE_SCORES`` is a comma list, one entry per scoring call in order: a number (the
score), ``raise``, ``segv`` (the worker process crashes in native code), ``hang`` (sleeps
far past any deadline), ``memorized:0.9`` (score 0.9 with memorisation share 1.0). The call
count lives in ``$FAKE_COUNTER`` (a file), so it survives worker restarts.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path


class _Report:
    def __init__(self, score: float, memorization: float | None = None):
        self.score = score
        self.detection_rate = 1.0
        self.memorization = memorization
        self.score_version = "fake-1"
        self.backend = {"name": "fake"}
        self.ratios = {}
        self.samples = []

    def scalars(self) -> dict:
        out = {"consistency/score": self.score, "consistency/detection_rate": self.detection_rate,
               "consistency/interocular_ratio_diff_pct": 10 * (1 - self.score)}
        if self.memorization is not None:
            out["consistency/memorization"] = self.memorization
        return out

    def to_dict(self) -> dict:
        return {"score": self.score, "memorization": self.memorization}


class Scripted:
    def __init__(self, cfg: dict):
        self.script = [s.strip() for s in os.environ["FAKE_SCORES"].split(",")]
        self.counter = Path(os.environ["FAKE_COUNTER"])
        if os.environ.get("FAKE_FAIL_AT_LOAD"):
            from kohya_ext.errors import KohyaExtError

            raise KohyaExtError(os.environ["FAKE_FAIL_AT_LOAD"])

    def score_images(self, images, names):
        n = int(self.counter.read_text()) if self.counter.exists() else 0
        self.counter.write_text(str(n + 1))
        action = self.script[n] if n < len(self.script) else self.script[-1]
        if action == "raise":
            raise RuntimeError("fake scorer failure")
        if action == "segv":
            ctypes.string_at(0)  # a real segmentation fault inside the worker process
        if action == "hang":
            time.sleep(3600)
        if action.startswith("memorized:"):
            return _Report(float(action.split(":")[1]), memorization=1.0)
        return _Report(float(action))


def scripted(cfg: dict) -> Scripted:
    return Scripted(cfg)
