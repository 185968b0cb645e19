"""On-disk cache of per-image measurements.

Keyed by the file's contents (SHA-256), the backend identity (name, weights,
settings), the exclusion rules and the formula/code version, so an unchanged
image set is measured once and a changed file, weight or formula is measured
again. A stat index (path, size, mtime) skips re-hashing unchanged files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import __version__
from .io_utils import atomic_write_text
from .color import COLOR_VERSION
from .measure import MEASUREMENT_VERSION, ImageMeasurement
from .ratios import FORMULA_VERSION


def default_cache_dir() -> Path:
    env = os.environ.get("KOHYA_EXT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kohya_ext"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class MeasurementCache:
    """A JSON file of measurements for one (backend identity, rules, version) namespace."""

    def __init__(self, identity: dict, rules: dict, cache_dir: Path | None = None):
        ns = json.dumps(
            {
                "identity": identity, "rules": rules, "formula": FORMULA_VERSION, "color": COLOR_VERSION,
                "measurement": MEASUREMENT_VERSION, "code": __version__,
            }, sort_keys=True
        )
        self.namespace = hashlib.sha256(ns.encode()).hexdigest()[:16]
        self.path = Path(cache_dir or default_cache_dir()) / f"measurements-{self.namespace}.json"
        self._entries: dict[str, dict] = {}
        self._stat: dict[str, list] = {}
        self._dirty = False
        try:
            data = json.loads(self.path.read_text())
            self._entries = data.get("entries", {})
            self._stat = data.get("stat", {})
        except (OSError, ValueError):
            pass  # no cache yet, or a broken one: start empty

    def file_key(self, path: Path) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        skey = str(Path(path).resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        cached = self._stat.get(skey)
        if cached and cached[:2] == stamp:
            return cached[2]
        try:
            digest = sha256_file(path)
        except OSError:
            return None
        self._stat[skey] = stamp + [digest]
        self._dirty = True
        return digest

    def get(self, key: str) -> ImageMeasurement | None:
        d = self._entries.get(key)
        return ImageMeasurement.from_dict(d) if d is not None else None

    def put(self, key: str, m: ImageMeasurement) -> None:
        self._entries[key] = m.to_dict()
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"entries": self._entries, "stat": self._stat}))
            self._dirty = False
        except OSError:
            pass  # a read-only cache dir must not break scoring
