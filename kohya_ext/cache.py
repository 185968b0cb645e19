"""On-disk cache of per-image measurements.

Keyed by the file's contents (SHA-256), the backend identity (name, weights,
settings), the exclusion rules and the formula/code version, so an unchanged
image set is measured once and a changed file, weight or formula is measured
again. A stat index (path, size, mtime) skips re-hashing unchanged files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from filelock import FileLock, Timeout as LockTimeout

from . import __version__
from .io_utils import DamagedFileError, atomic_write_text, dumps_json, read_json
from .color import COLOR_VERSION
from .images import MAX_DETECT_PIXELS
from .measure import MEASUREMENT_VERSION, ImageMeasurement
from .ratios import FORMULA_VERSION

logger = logging.getLogger(__name__)


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
                "measurement": MEASUREMENT_VERSION, "code": __version__, "detect_max_pixels": MAX_DETECT_PIXELS,
            }, sort_keys=True
        )
        self.namespace = hashlib.sha256(ns.encode()).hexdigest()[:16]
        self.path = Path(cache_dir or default_cache_dir()) / f"measurements-{self.namespace}.json"
        self._dirty = False
        self._stamp = self._file_stamp()
        self._entries, self._stat = self._read()
        # only what this process measured is merged into the file on flush (other writers keep theirs)
        self._new_entries: dict[str, dict] = {}
        self._new_stat: dict[str, list] = {}

    def _file_stamp(self) -> tuple[int, int] | None:
        """(mtime, size) of the cache file: a flush re-reads it only when another writer changed it."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _read(self) -> tuple[dict[str, dict], dict[str, list]]:
        """The cache file's entries and stat index; a damaged file reads as empty (said once) and is
        rewritten by the next flush."""
        try:
            data = read_json(self.path, "measurement cache", "it is rebuilt as images are measured")
        except FileNotFoundError:
            return {}, {}
        except OSError as e:
            _warn_once(self.path, f"measurement cache {self.path} cannot be read ({e.strerror or e}): measuring without it")
            return {}, {}
        except DamagedFileError as e:
            _warn_once(self.path, f"{e}; starting it afresh")
            return {}, {}
        entries, stat = (data.get("entries"), data.get("stat")) if isinstance(data, dict) else (None, None)
        if not isinstance(entries, dict) or not isinstance(stat, dict):
            _warn_once(self.path, f"{self.path}: measurement cache is not a kohya-ext cache (no entries/stat objects); starting it afresh")
            return {}, {}
        stat = {k: v for k, v in stat.items()
                if isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) for x in v[:2]) and isinstance(v[2], str)}
        return entries, stat

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
        self._stat[skey] = self._new_stat[skey] = stamp + [digest]
        self._dirty = True
        return digest

    def get(self, key: str) -> ImageMeasurement | None:
        d = self._entries.get(key)
        if d is None:
            return None
        try:
            return ImageMeasurement.from_dict(d)
        except ValueError as e:  # a damaged entry is measured again and replaced
            _warn_once(self.path, f"{self.path}: damaged measurement cache entry ({e}); measuring such images again")
            del self._entries[key]
            return None

    def put(self, key: str, m: ImageMeasurement) -> None:
        self._entries[key] = self._new_entries[key] = m.to_dict()
        self._dirty = True

    def flush(self) -> None:
        """Merge this process's new entries into the file under a lock: concurrent scorers
        (several trainings, a ComfyUI server and the CLI) keep each other's work."""
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S):
                if self._file_stamp() != self._stamp:  # another process wrote since we read: take its entries
                    entries, stat = self._read()
                    self._entries.update(entries)
                    self._stat.update(stat)
                self._entries.update(self._new_entries)
                self._stat.update(self._new_stat)
                atomic_write_text(self.path, dumps_json({"entries": self._entries, "stat": self._stat}))
                self._stamp = self._file_stamp()
            self._new_entries, self._new_stat = {}, {}
            self._dirty = False
        except (OSError, LockTimeout) as e:  # a read-only or busy cache must not break scoring
            _warn_once(self.path, f"measurement cache {self.path} not written ({e}); the measurements are still used")


#: how long a flush waits for another process's flush of the same cache before giving up on writing
LOCK_TIMEOUT_S = 30
_warned: set[tuple[str, str]] = set()


def _warn_once(path: Path, message: str) -> None:
    key = (str(path), message.split(":")[0] + message[-40:])
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)
