"""Fault injection for the stand-in's training process (tests/test_train_faults.py puts this folder on
PYTHONPATH). ``KOHYA_EXT_FAULT`` picks one fault:

- ``write:ENOSPC:GLOB`` / ``write:EROFS:GLOB``: opening for writing, creating, renaming or replacing a
  file whose name matches GLOB (several: ``A|B``) fails with that errno, after the first
  ``KOHYA_EXT_FAULT_SKIP`` such writes went through (kohya-ext's files only: sd-scripts' own writes
  are not the subject of the test);
- ``kill:GLOB``: the process is SIGKILLed while a file matching GLOB is being written (its temporary
  file holds half the bytes, the rename has not happened);
- ``readonly:DIR``: DIR is a read-only mount: every write, creation or rename under it fails with EROFS
  (as it does for root too);
- ``tracker``: every call kohya-ext makes into a tracker (accelerate's, or the TensorBoard writer /
  wandb run inside it) raises; sd-scripts' own logging goes through.
Each injected failure is appended to ``$KOHYA_EXT_FAULT_LOG`` so a test knows it really happened.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import os
import re
import signal
import sys

SPEC = os.environ.get("KOHYA_EXT_FAULT", "")
LOG = os.environ.get("KOHYA_EXT_FAULT_LOG")
_skip = [int(os.environ.get("KOHYA_EXT_FAULT_SKIP", "0"))]


def _note(what: str) -> None:
    if LOG:
        with builtins.open(LOG, "a", encoding="utf-8") as f:  # the unpatched open
            f.write(what + "\n")


def _logical(path) -> str:
    """The file a write is for: ``.leaderboard.json.k2x9a0bq.tmp`` (an atomic write's temporary) -> ``leaderboard.json``."""
    name = os.path.basename(os.fspath(path))
    m = re.match(r"^\.(.+?)\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)?$", name)
    return m.group(1) if m else name


def _matches(path, pattern: str) -> bool:
    name = os.path.basename(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
    name = name.decode() if isinstance(name, bytes) else name
    # temporary files of atomic writes are named .{name}.XXXX.tmp
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name, f".{p}.*") for p in pattern.split("|"))


def _install_write_faults(code: int, pattern: str) -> None:
    real_open, real_os_open, real_replace, real_rename = builtins.open, os.open, os.replace, os.rename

    def fail(path):
        if _skip[0] > 0:
            return
        _note(f"{errno.errorcode[code]} {_logical(path)}")
        raise OSError(code, os.strerror(code), os.fspath(path))

    def open_(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+") and _matches(file, pattern):
            fail(file)
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _matches(path, pattern):
            fail(path)
        return real_os_open(path, flags, *a, **kw)

    def commit(real, src, dst, *a, **kw):
        if _matches(dst, pattern):
            fail(dst)
            _skip[0] -= 1  # one more matching write went through
        return real(src, dst, *a, **kw)

    def replace(src, dst, *a, **kw):
        return commit(real_replace, src, dst, *a, **kw)

    def rename(src, dst, *a, **kw):
        return commit(real_rename, src, dst, *a, **kw)

    builtins.open, os.open, os.replace, os.rename = open_, os_open, replace, rename


def _install_kill(pattern: str) -> None:
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if _matches(dst, pattern) and _skip[0] > 0:
            _skip[0] -= 1
        elif _matches(dst, pattern):
            _note(f"KILL {_logical(dst)}")
            with open(src, "r+b") as f:  # as if the kill came halfway through writing the temporary file
                f.truncate(max(0, os.path.getsize(src) // 2))
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **kw)

    os.replace = replace


def _install_readonly(folder: str) -> None:
    real_open, real_os_open, real_mkdir, real_replace = builtins.open, os.open, os.mkdir, os.replace
    root = os.path.realpath(folder)

    def check(path):
        p = os.path.realpath(os.fspath(path))
        if p == root or p.startswith(root + os.sep):
            _note(f"EROFS {p}")
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def open_(file, mode="r", *a, **kw):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            check(file)
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            check(path)
        return real_os_open(path, flags, *a, **kw)

    def mkdir(path, *a, **kw):
        if not os.path.isdir(path):
            check(path)
        return real_mkdir(path, *a, **kw)

    def replace(src, dst, *a, **kw):
        check(dst)
        return real_replace(src, dst, *a, **kw)

    builtins.open, os.open, os.mkdir, os.replace = open_, os_open, mkdir, replace


class _Raising:
    """Proxy: attribute reads go through; calls made from kohya_ext's modules raise."""

    def __init__(self, target, label: str):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_label", label)

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if name in ("tracker", "writer", "run", "config", "summary"):
            return _Raising(value, f"{self._label}.{name}")
        if not callable(value):
            return value

        def call(*a, **kw):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("kohya_ext"):
                _note(f"TRACKER {self._label}.{name}")
                raise RuntimeError(f"injected failure in {self._label}.{name}")
            return value(*a, **kw)

        return call

    def __setattr__(self, name, value):
        setattr(self._target, name, value)

    def __setitem__(self, key, value):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("kohya_ext"):
            _note(f"TRACKER {self._label}[]")
            raise RuntimeError(f"injected failure in {self._label}[{key!r}]")
        self._target[key] = value


def _install_tracker_faults() -> None:
    import accelerate

    real_init = accelerate.Accelerator.init_trackers

    def init_trackers(self, *a, **kw):
        out = real_init(self, *a, **kw)
        self.trackers = [_Raising(t, getattr(t, "name", "tracker")) for t in self.trackers]
        return out

    accelerate.Accelerator.init_trackers = init_trackers


if SPEC.startswith("write:"):
    _, name, glob_ = SPEC.split(":", 2)
    _install_write_faults(getattr(errno, name), glob_)
elif SPEC.startswith("kill:"):
    _install_kill(SPEC.split(":", 1)[1])
elif SPEC.startswith("readonly:"):
    _install_readonly(SPEC.split(":", 1)[1])
elif SPEC == "tracker":
    _install_tracker_faults()
