#!/usr/bin/env python
"""Regenerate kohya_ext/sd_options.py: the option names sd-scripts' training parsers accept.

Run it with sd-scripts' own python from inside an sd-scripts checkout (the scripts import
``library.*`` relative to it)::

    cd /path/to/sd-scripts && /path/to/venv/bin/python /path/to/kohya-ext/scripts/gen_sd_options.py

It builds each network trainer's parser through the script's own ``setup_parser()`` and
records, per ``--config_file`` key (the argparse dest), only what a check needs: action kind,
value type name, ``nargs`` and ``choices``. No sd-scripts code or help text is copied.
``--check`` compares with the file in the tree instead of writing (exit 1 when stale).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pprint
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "kohya_ext" / "sd_options.py"
SCRIPTS = ("train_network.py", "sdxl_train_network.py", "flux_train_network.py")

sys.path.insert(0, str(REPO))
from kohya_ext.preset_loader import describe_parser  # noqa: E402  (after the path tweak on purpose)

HEADER = '''"""sd-scripts' training options, per script, as ``--config_file`` keys. GENERATED: do not edit.

Regenerate with scripts/gen_sd_options.py (run with sd-scripts' python inside a checkout);
tests/test_presets_real.py checks it is still current. Each option: ``kind`` (store /
store_true / ...), ``type`` (the type callable's name; None = plain string), ``nargs``,
``choices``, ``flags``.
"""

'''


def generate(checkout: Path) -> dict:
    """Option table of the checkout at ``checkout`` (must be importable: cwd/sys.path)."""
    sys.path.insert(0, str(checkout))
    scripts = {}
    for script in SCRIPTS:
        module = importlib.import_module(script[: -len(".py")])
        scripts[script] = describe_parser(module.setup_parser())
    return {"source": _describe_checkout(checkout), "scripts": scripts}


def _describe_checkout(checkout: Path) -> str:
    """A short label for the checkout (its git describe when it is a git tree)."""
    label = os.environ.get("SD_SCRIPTS_LABEL")
    if label:
        return label
    head = checkout / ".git" / "HEAD"
    if head.exists():
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_file = checkout / ".git" / ref[5:]
            return ref_file.read_text().strip()[:8] if ref_file.exists() else ref[5:]
        return ref[:8]
    return "unknown"


def render(table: dict) -> str:
    """Python source, one option per line (readable diffs when sd-scripts adds an option)."""
    lines = [HEADER + "# fmt: off", "SD_OPTIONS = {", f"    'source': {table['source']!r},", "    'scripts': {"]
    for script, options in sorted(table["scripts"].items()):
        lines.append(f"        {script!r}: {{")
        for dest, info in sorted(options.items()):
            lines.append(f"            {dest!r}: {pprint.pformat(info, width=10_000, sort_dicts=True)},")
        lines.append("        },")
    lines += ["    },", "}", "# fmt: on", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", default=".", help="sd-scripts checkout (default: the current folder)")
    ap.add_argument("--out", default=str(OUT), help=f"output file (default: {OUT})")
    ap.add_argument("--label", default=None, help="version label stored in the file (default: from .git, else 'unknown')")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing; exit 1 when it differs")
    args = ap.parse_args(argv)
    checkout = Path(args.checkout).resolve()
    if not (checkout / "train_network.py").exists():
        print(f"gen_sd_options: {checkout} has no train_network.py: run inside an sd-scripts checkout or pass --checkout", file=sys.stderr)
        return 2
    if args.label:
        os.environ["SD_SCRIPTS_LABEL"] = args.label
    os.chdir(checkout)
    table = generate(checkout)
    out = Path(args.out)
    if args.check:
        ns: dict = {}
        exec(compile(out.read_text(encoding="utf-8"), str(out), "exec"), ns)
        old = ns["SD_OPTIONS"]["scripts"]
        if old != table["scripts"]:
            for script in SCRIPTS:
                a, b = old.get(script, {}), table["scripts"][script]
                added, removed = sorted(set(b) - set(a)), sorted(set(a) - set(b))
                changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
                if added or removed or changed:
                    print(f"{script}: added {added}, removed {removed}, changed {changed}")
            print(f"gen_sd_options: {out} is stale: rerun scripts/gen_sd_options.py", file=sys.stderr)
            return 1
        print(f"gen_sd_options: {out} is current ({sum(len(v) for v in table['scripts'].values())} options)")
        return 0
    out.write_text(render(table), encoding="utf-8")
    print(f"gen_sd_options: wrote {out} ({', '.join(f'{k}: {len(v)}' for k, v in table['scripts'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
