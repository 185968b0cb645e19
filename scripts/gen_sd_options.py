#!/usr/bin/env python
"""Regenerate kohya_ext/sd_options/<version>.json: the options sd-scripts' training parsers accept.

Run it with sd-scripts' own python from inside an sd-scripts checkout (the scripts import
``library.*`` relative to it)::

    cd /path/to/sd-scripts && /path/to/venv/bin/python /path/to/kohya-ext/scripts/gen_sd_options.py

The version (v0.10.x, v0.11.x) is the checkout's module layout, as patches/sd_scripts.py
detects it; one table per supported version. It builds each network trainer's parser through
the script's own ``setup_parser()`` and records, per ``--config_file`` key (the argparse
dest), only what a check needs: action kind, value type name, ``nargs``, ``choices`` and
flags. No sd-scripts code or help text is copied. ``--check`` compares with the file in the
tree instead of writing (exit 1 when stale).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "kohya_ext" / "sd_options"
SCRIPTS = ("train_network.py", "sdxl_train_network.py", "flux_train_network.py")

sys.path.insert(0, str(REPO))
from kohya_ext.preset_loader import describe_parser  # noqa: E402  (after the path tweak on purpose)
from kohya_ext.sd_options import render  # noqa: E402


def _patches():
    """patches/sd_scripts.py by path (a source tree has no kohya_ext.patches until installed)."""
    spec = importlib.util.spec_from_file_location("kohya_ext_patches_sd_scripts", REPO / "patches" / "sd_scripts.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def generate(checkout: Path) -> dict:
    """Option table of the checkout at ``checkout`` (must be importable: cwd/sys.path)."""
    sys.path.insert(0, str(checkout))
    scripts = {}
    for script in SCRIPTS:
        module = importlib.import_module(script[: -len(".py")])
        scripts[script] = describe_parser(module.setup_parser())
    return {"source": _describe_checkout(checkout), "scripts": scripts}


def _describe_checkout(checkout: Path) -> str:
    """The checkout's commit and git describe (or $SD_SCRIPTS_LABEL)."""
    label = os.environ.get("SD_SCRIPTS_LABEL")
    if label:
        return label
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=checkout, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
        head = run("rev-parse", "--short=8", "HEAD")
        described = subprocess.run(["git", "describe", "--tags"], cwd=checkout, capture_output=True, text=True).stdout.strip()
        return f"{head} ({described})" if described else head
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", default=".", help="sd-scripts checkout (default: the current folder)")
    ap.add_argument("--out-dir", default=str(OUT_DIR), help=f"folder of the tables (default: {OUT_DIR})")
    ap.add_argument("--label", default=None, help="source label stored in the file (default: the checkout's commit)")
    ap.add_argument("--check", action="store_true", help="compare with the stored table instead of writing; exit 1 when it differs")
    args = ap.parse_args(argv)
    checkout = Path(args.checkout).resolve()
    if not (checkout / "train_network.py").exists():
        print(f"gen_sd_options: {checkout} has no train_network.py: run inside an sd-scripts checkout or pass --checkout", file=sys.stderr)
        return 2
    spec = _patches().detect_version(checkout)
    if spec is None:
        print(f"gen_sd_options: {checkout} has the module layout of no supported sd-scripts version", file=sys.stderr)
        return 2
    if args.label:
        os.environ["SD_SCRIPTS_LABEL"] = args.label
    os.chdir(checkout)
    table = {"version": spec.name, **generate(checkout)}
    out = Path(args.out_dir) / f"{spec.name}.json"
    if args.check:
        old = json.loads(out.read_text(encoding="utf-8"))["scripts"] if out.exists() else {}
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(table), encoding="utf-8")
    print(f"gen_sd_options: wrote {out} ({', '.join(f'{k}: {len(v)}' for k, v in table['scripts'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
