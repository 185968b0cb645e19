"""User-facing errors: one line that names the thing and the fix."""

from __future__ import annotations


class KohyaExtError(Exception):
    """An error whose message is meant for the user, not a traceback.

    The CLI prints ``str(error)`` on one line and exits non-zero; the
    training integration logs it and carries on where it can.
    """


class ImageError(KohyaExtError):
    """One image cannot be used (unreadable, corrupt, too small)."""


class WeightsNotFoundError(KohyaExtError):
    """Model weights are neither local nor downloadable."""


class BackendMismatchError(KohyaExtError):
    """Reference and samples were measured by different backends, weights or formulas."""


def require(module: str, package: str, needed_for: str):
    """``import module``, or a KohyaExtError naming the package to install (an optional
    dependency: scripts/install.sh installs it, a bare ``pip install kohya-ext`` does not)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        import sys

        raise KohyaExtError(f"{needed_for} needs {package}, which is not installed in {sys.prefix}: "
                            f"pip install {package} (or install kohya-ext with scripts/install.sh)") from None
