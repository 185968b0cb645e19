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


def by_character(cfg: dict):
    """{character: Scripted} when the run has several characters (they share one script, in
    the worker's order: sorted by character), else one Scripted."""
    if cfg.get("characters"):
        return {c: Scripted(cfg) for c in cfg["characters"]}
    return Scripted(cfg)


class DeviceAware(Scripted):
    """Scripted, plus ``to(device)``: ``oom:S`` raises CUDA's out-of-memory error unless it is
    on the CPU (then scores S; the OOM attempt does not advance the script), ``cudaerror``
    raises the RuntimeError torch gives after an illegal memory access."""

    device = "cpu"

    def to(self, device: str) -> None:
        self.device = device
        Path(os.environ["FAKE_COUNTER"] + ".devices").open("a").write(device + "\n")

    def score_images(self, images, names):
        n = int(self.counter.read_text()) if self.counter.exists() else 0
        action = self.script[n] if n < len(self.script) else self.script[-1]
        if action.startswith("oom:") and self.device != "cpu":
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if action == "cudaerror":
            self.counter.write_text(str(n + 1))
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if action.startswith("oom:"):
            self.counter.write_text(str(n + 1))
            return _Report(float(action.split(":")[1]))
        return super().score_images(images, names)


def device_aware(cfg: dict) -> DeviceAware:
    return DeviceAware(cfg)
