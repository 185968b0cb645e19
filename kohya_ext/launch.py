"""``python -m kohya_ext SCRIPT.py ARGS`` / ``accelerate launch -m kohya_ext SCRIPT.py ARGS``.

Runs an sd-scripts network trainer (found in the current folder or in ``$KOHYA_SD_SCRIPTS``)
exactly as its own ``__main__`` would, with the ``--consistency_*`` flags added.
"""

from __future__ import annotations

import sys

from .errors import KohyaExtError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith(".py"):
        print("usage: python -m kohya_ext SCRIPT.py [sd-scripts arguments] --consistency [--consistency_* ...]", file=sys.stderr)
        return 2
    from kohya_ext.patches.sd_scripts import run

    try:
        return run(argv[0], argv[1:])
    except KohyaExtError as e:
        print(f"kohya-ext: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
