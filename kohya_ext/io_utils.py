"""Small file helpers shared by the reference, report and leaderboard writers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def slug(name: str) -> str:
    """A name (class token, character) as a file-name or tracker-tag part: ``sks girl`` -> ``sks_girl``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip()) or "_"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename,
    so an interrupted write never leaves a half-written file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (umask applied)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
