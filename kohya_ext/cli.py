"""`kohya-ext` command line: reference, score, demo.

Errors are one line on stderr and a non-zero exit code; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .backends import BACKEND_NAMES, BackendSpec
from .errors import KohyaExtError
from .i18n import LANGUAGES
from .io_utils import slug

logger = logging.getLogger("kohya_ext")

EXIT_USAGE = 2
EXIT_ERROR = 1
EXIT_INTERNAL = 3


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("landmark backend")
    g.add_argument("--backend", choices=BACKEND_NAMES, default="auto",
                   help="hrnet (anime-face-detector, needs weights), nvxs (offline, CPU, Linux x86-64), "
                        "or auto: hrnet when its weights are available, else nvxs (default)")
    g.add_argument("--device", default="auto", help="hrnet device: auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--threads", type=int, default=None, help="nvxs worker threads (default: all cores)")
    g.add_argument("--face-detector", choices=("yolov3", "faster-rcnn"), default=None, help="hrnet face detector (default yolov3)")
    g.add_argument("--landmark-weights", default=None, help="HRNetV2 weights file (else $KOHYA_EXT_HRNET_WEIGHTS or the Hub cache)")
    g.add_argument("--detector-weights", default=None, help="face detector weights file (else $KOHYA_EXT_YOLOV3_WEIGHTS / the Hub cache)")
    g.add_argument("--no-cache", action="store_true", help="measure every image again instead of using the on-disk cache")
    g.add_argument("--cache-dir", default=None, help="measurement cache folder (default $KOHYA_EXT_CACHE or ~/.cache/kohya_ext)")


def _spec(args) -> BackendSpec:
    return BackendSpec(
        args.backend, device=args.device, threads=args.threads, face_detector=args.face_detector,
        landmark_weights=args.landmark_weights, detector_weights=args.detector_weights,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kohya-ext",
        description="Facial-proportion consistency of anime character samples against their training images.",
    )
    parser.add_argument("--version", action="version", version=f"kohya-ext {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notices")
    # the same flags after the subcommand (`kohya-ext score -q ...`); SUPPRESS keeps the top-level value otherwise
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars or notices")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("reference", parents=[common], help="measure reference images (folder, kohya train_data_dir or dataset config) into ref.json")
    p.add_argument("data", help="image folder, kohya train_data_dir, or kohya dataset config .toml")
    p.add_argument("-o", "--output", default="ref.json", help="reference file to write (default ref.json)")
    p.add_argument("--by-class", action="store_true",
                   help="one reference per class token (several characters in one dataset): writes OUTPUT_STEM.<token>.json")
    _add_backend_args(p)

    p = sub.add_parser("score", parents=[common], help="score sample images against a reference")
    p.add_argument("--reference", "-r", required=True, help="ref.json, image folder, kohya train_data_dir or dataset config")
    p.add_argument("samples", nargs="+", help="sample image files or folders")
    p.add_argument("--json", dest="json_out", default=None, help="write the full report (per-image ratios included) as JSON")
    p.add_argument("--overlay", default=None, help="write each sample with its face box and landmarks drawn into this folder")
    p.add_argument("--lang", choices=LANGUAGES, default="en", help="report language (default en)")
    _add_backend_args(p)

    p = sub.add_parser("demo", parents=[common], help="score the demo set: 36 TADNE portraits split into a reference and a sample half")
    p.add_argument("--out", default="demo_out", help="folder for the demo's images, reference, report and overlays")
    p.add_argument("--grid", default=None, help="the 6x6 portrait grid (default ../shared/data/tadne/grid.jpg, else downloaded)")
    p.add_argument("--lang", choices=LANGUAGES, default="en")
    _add_backend_args(p)

    p = sub.add_parser("rank", parents=[common], help="rank the checkpoints of a finished run, best first (its leaderboard, or its sd-scripts samples)")
    p.add_argument("output_dir", help="the run's --output_dir (holds sample/ or, trained with kohya-ext, consistency/)")
    p.add_argument("--reference", "-r", default=None,
                   help="training images: folder, train_data_dir, dataset config or ref.json (default: found from a config saved in OUTPUT_DIR)")
    p.add_argument("--out", default=None, help="folder for rank's leaderboard.csv/json (default OUTPUT_DIR/kohya-ext-rank)")
    p.add_argument("--output-name", default=None, help="whose samples to rank when sample/ holds several runs' (their --output_name)")
    p.add_argument("--rescore", action="store_true", help="score sample/ even when the run has a kohya-ext leaderboard")
    p.add_argument("--json", dest="json_out", action="store_true", help="print the ranking as JSON instead of a table")
    _add_backend_args(p)

    p = sub.add_parser("compare", parents=[common], help="several runs side by side: best step, best score, score at the last step")
    p.add_argument("runs", nargs="+", help="run output folders (each ranked as `rank` does; rankings already written are reused)")
    p.add_argument("--reference", "-r", default=None, help="training images for runs that need scoring (default: found per run)")
    p.add_argument("--csv", dest="csv_out", default=None, help="also write the comparison as CSV")
    p.add_argument("--rescore", action="store_true", help="rank every run again instead of reusing kohya-ext-rank/")
    _add_backend_args(p)

    p = sub.add_parser("report", parents=[common], help="one self-contained HTML page: curves, early stop, ratio bars, landmark grids")
    p.add_argument("run_dir", help="the run's --output_dir")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--logging-dir", default=None, help="TensorBoard folder with the loss curves (default: from the run record or a saved config)")
    p.add_argument("--reference", "-r", default=None, help="training images, when the run has not been ranked yet (see `rank`)")
    _add_backend_args(p)

    p = sub.add_parser("check-config", parents=[common], help="unknown or misspelled keys and bad values of a kohya --config_file TOML")
    p.add_argument("config", help="the TOML you pass to --config_file (yours, the GUI's, or a kohya-ext preset)")
    p.add_argument("--script", default=None, help="the sd-scripts script it is for (default: from a preset's name, else train_network.py)")
    p.add_argument("--sd-scripts", default=None, help="check against this sd-scripts checkout's own parser "
                   "(default: $KOHYA_SD_SCRIPTS or the current folder when it is one; else the shipped option tables)")
    return parser


def cmd_reference(args) -> int:
    from .scorer import load_references

    spec = _spec(args)
    refs = load_references(args.data, spec, by_class=args.by_class, use_cache=not args.no_cache,
                           cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=not args.quiet)
    out = Path(args.output)
    for ref in refs:  # every reference is checked before any file is written: a failed run replaces nothing
        ref.check_usable()
    for ref in refs:
        path = out.with_name(f"{out.stem}.{slug(ref.name)}{out.suffix}") if args.by_class else out
        _write_or_explain(path, "reference", lambda p=path, r=ref: r.save(p))
        c = ref.counts
        skipped = {k: v for k, v in c.items() if k not in ("images", "faces", "usable", "multi_face_images") and v}
        print(f"{path}: {ref.name!r}, {c['images']} images, {c['usable']} usable faces"
              + (f", skipped {skipped}" if skipped else "") + f", backend {ref.backend_name}")
    return 0


def _write_or_explain(path: Path, what: str, write) -> None:
    """Run ``write()`` (an atomic writer); an OS error is one line naming the file and the fix. The
    previous file, if any, is left as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write()
    except OSError as e:
        raise KohyaExtError(f"cannot write the {what} {path} ({e.strerror or e}); nothing was replaced: "
                            "choose a folder you can write to, or free disk space") from None


def cmd_score(args) -> int:
    from .scorer import Scorer, backend_for_reference

    spec = backend_for_reference(args.reference, _spec(args))
    scorer = Scorer(args.reference, spec, use_cache=not args.no_cache,
                    cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=not args.quiet)
    report = scorer.score_paths(args.samples)
    print(report.format_text(args.lang))
    if args.json_out:
        from .io_utils import atomic_write_text

        _write_or_explain(Path(args.json_out), "report", lambda: atomic_write_text(args.json_out, report.to_json()))
        print(f"report: {args.json_out}")
    if args.overlay:
        _write_overlays(report, args.overlay)
    return 0


def _write_overlays(report, out_dir) -> None:
    from .overlay import write_report_overlays

    written: list = []
    _write_or_explain(Path(out_dir), "overlay images in", lambda: written.extend(write_report_overlays(report, out_dir)))
    print(f"overlays: {len(written)} images in {out_dir}")


def cmd_demo(args) -> int:
    from .demo import run_demo

    report, out = run_demo(args.grid, Path(args.out), _spec(args), use_cache=not args.no_cache, progress=not args.quiet)
    print(report.format_text(args.lang))
    _write_overlays(report, out / "overlays")
    print(f"reference: {out / 'ref.json'}  report: {out / 'report.json'}")
    return 0


def _rank_kwargs(args) -> dict:
    return dict(backend=_spec(args), use_cache=not args.no_cache,
                cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=not args.quiet)


def cmd_rank(args) -> int:
    from .posthoc.rank import format_table, rank_run

    result = rank_run(args.output_dir, reference=args.reference, out_dir=args.out, output_name=args.output_name,
                      rescore=args.rescore, **_rank_kwargs(args))
    if args.json_out:
        print(Path(result.folder, "leaderboard.json").read_text(encoding="utf-8"))
    else:
        print(format_table(result))
    return 0


def cmd_compare(args) -> int:
    from .posthoc.compare_runs import compare_runs, format_comparison, write_csv

    rows = compare_runs(args.runs, reference=args.reference, rescore=args.rescore, **_rank_kwargs(args))
    print(format_comparison(rows))
    if args.csv_out:
        write_csv(rows, args.csv_out)
    return EXIT_ERROR if any(d["source"] == "error" for d in rows) else 0  # the table still shows the others


def cmd_report(args) -> int:
    from .posthoc.report_html import write_report

    path = write_report(args.run_dir, args.output, logging_dir=args.logging_dir, reference=args.reference, **_rank_kwargs(args))
    print(f"report: {path}")
    return 0


def cmd_check_config(args) -> int:
    import os

    from .preset_loader import check_preset, script_for

    try:
        script = args.script or script_for(args.config)
    except KohyaExtError:
        script = "train_network.py"
    root = args.sd_scripts or os.environ.get("KOHYA_SD_SCRIPTS") or (os.getcwd() if Path(script).is_file() else None)
    live, note = None, ""
    if root:
        from .patches.sd_scripts import live_options

        try:
            live = live_options(Path(root), script)
        except KohyaExtError as e:
            note = f" ({e}; checked against the shipped option tables instead)"
    result = check_preset(args.config, script, live=live)
    against = live[0] if live else "the option tables of every supported sd-scripts version"
    for problem in result.problems:
        print(f"{result.path}: {problem}")
    print(f"{result.path}: {len(result.values)} keys checked for {script} against {against}{note}: "
          + (f"{len(result.problems)} problem(s)" if result.problems else "OK"))
    return EXIT_ERROR if result.problems else 0


COMMANDS = {"reference": cmd_reference, "score": cmd_score, "demo": cmd_demo, "rank": cmd_rank, "compare": cmd_compare,
            "report": cmd_report, "check-config": cmd_check_config}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="kohya-ext: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except KohyaExtError as e:
        if args.debug:
            raise
        print(f"kohya-ext: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("kohya-ext: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a disk or permission problem the code did not foresee: still one line
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"kohya-ext: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        print("kohya-ext: error: out of memory (fewer or smaller images at a time, or a machine with more memory)", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug: one line, the traceback on request
        if args.debug:
            raise
        print(f"kohya-ext: internal error: {type(e).__name__}: {e} (run again with --debug for the traceback, and report it)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
