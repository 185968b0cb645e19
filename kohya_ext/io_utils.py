"""Small file helpers shared by every writer and reader of kohya-ext's files.

Writes are atomic (a temporary file in the same folder, then a rename), so an
interrupted or failed write never leaves a half-written file and never replaces a
good one. JSON is written with finite numbers only and read strictly, so a NaN that
got into a file is refused instead of turning into a confident number.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .errors import KohyaExtError

#: a temporary file of ours older than this is a leftover of a killed write, removed on the next write
STALE_TMP_SECONDS = 600


def _read_umask() -> int:
    # read once at import: setting the umask to read it is process-wide, and a thread of the trainer
    # or of a ComfyUI server creating a file in that instant would get the wrong mode
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class DamagedFileError(KohyaExtError, ValueError):
    """A file of ours (or given as one) that does not hold what it should: one line naming it and the fix."""


def slug(name: str) -> str:
    """A name (class token, character) as a file-name or tracker-tag part: ``sks girl`` -> ``sks_girl``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip()) or "_"


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written into ``folder`` (created if missing), or None when they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_tmp(path: Path) -> None:
    """Temporary files that a killed write of ``path`` left behind (older than STALE_TMP_SECONDS)."""
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    now = time.time()
    for e in entries:
        if e.name.startswith(_tmp_prefix(path)) and e.name.endswith(".tmp"):
            try:
                if now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                    os.unlink(e.path)
            except OSError:
                pass


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it over ``path``.

    ``path`` is untouched unless ``write`` returns and the data reached the disk. Text is UTF-8;
    characters it cannot encode (a file name that is not UTF-8, held as surrogate escapes) are
    written as backslash escapes, which inside a JSON string read back as the same name.
    """
    path = Path(path)
    remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (umask applied).
        # os.fchmod is POSIX-only before Python 3.13; Windows has no such modes to fix.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)
        kw = {} if binary else {"encoding": "utf-8", "errors": "backslashreplace", "newline": ""}
        with os.fdopen(fd, "wb" if binary else "w", **kw) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))


def atomic_save_image(image, path: str | os.PathLike, format: str = "PNG") -> None:
    """Save a Pillow image atomically: a failed or killed save leaves the previous file as it was."""
    atomic_write(path, lambda f: image.save(f, format=format), binary=True)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps_json(obj: Any, **kw) -> str:
    """JSON text with non-finite numbers written as null (json.dumps would write NaN, which no
    strict reader, ours included, accepts)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)


def _no_constant(name: str) -> float:
    raise ValueError(f"non-finite number ({name})")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number out of range ({text})")
    return v


def _float_or_none(text: str) -> float | None:
    v = float(text)
    return v if math.isfinite(v) else None


def loads_json(text: str, nonfinite_as_null: bool = False) -> Any:
    """Parse JSON, refusing NaN, Infinity and numbers out of float range (ValueError), or reading
    them as None with ``nonfinite_as_null`` (histories, where NaN meant "no number")."""
    if nonfinite_as_null:
        return json.loads(text, parse_constant=lambda name: None, parse_float=_float_or_none)
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def read_json(path: str | os.PathLike, what: str, fix: str, nonfinite_as_null: bool = False) -> Any:
    """The JSON in ``path``; any failure is one :class:`DamagedFileError` line: ``path``, ``what``, why, ``fix``.

    A missing or unreadable file raises OSError as usual (callers decide what absence means).
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        return loads_json(raw.decode("utf-8"), nonfinite_as_null)
    except UnicodeDecodeError as e:
        raise DamagedFileError(f"{path}: {what} is not UTF-8 text (byte {e.start}): {fix}") from None
    except json.JSONDecodeError as e:
        raise DamagedFileError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}"
                               f"{'; the file looks cut short' if e.pos >= len(raw.rstrip()) - 1 else ''}): {fix}") from None
    except (ValueError, RecursionError) as e:
        raise DamagedFileError(f"{path}: {what} holds a {e} (the file was damaged or edited): {fix}") from None
