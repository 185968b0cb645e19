"""`kohya-ext rank OUTPUT_DIR`: the checkpoints of a finished run, best first.

A run trained with kohya-ext already has its leaderboard (``consistency/leaderboard.json``):
it is read, never re-scored and never overwritten. Any other run is scored from the samples
sd-scripts saved in ``sample/``, grouped by the step or epoch in their names. Either way
``rank`` writes its own ``leaderboard.csv`` / ``leaderboard.json`` (the training
leaderboard's schema and writer, rows best first) into ``OUTPUT_DIR/kohya-ext-rank/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import BackendSpec
from ..errors import KohyaExtError
from ..io_utils import atomic_save_image, atomic_write_text, dumps_json, unwritable
from ..ratios import FORMULA_VERSION, RATIO_NAMES
from ..training.decisions import is_memorized
from ..training.leaderboard import COLUMNS, FOLDER, JSON_NAME, Leaderboard
from ..training.options import ConsistencyOptions
from . import run_info
from ..patches.sample_names import SampleGroup, group_samples

logger = logging.getLogger(__name__)

RANK_DIR = "kohya-ext-rank"
#: Fewer images than this per sampling point and close scores are noise (docs/posthoc.md
#: has the spread of the score over subsets of the shared portraits).
MIN_STEADY_IMAGES = 4


@dataclass
class RankResult:
    rows: list[dict[str, Any]]  # leaderboard schema, best first
    source: str  # "leaderboard" (kohya-ext run) or "samples" (scored here)
    folder: Path  # where rank wrote its files
    images_root: Path  # the folder the rows' images_dir are relative to
    reference: str | None = None
    images_per_point: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("is_best")), None)

    @property
    def last(self) -> dict[str, Any] | None:
        return max(self.rows, key=lambda r: r.get("eval") or 0, default=None)


def rank_key(row: dict[str, Any]) -> tuple:
    """Scored before failed, clean before memorised, higher score first (a run watching only the validation loss:
    lower loss first), earlier step on ties."""
    score, val = row.get("score"), row.get("val_loss")
    return (row.get("status") != "ok" or (score is None and val is None), bool(row.get("memorized")),
            -score if score is not None else val if val is not None else 0.0, row.get("eval") or 0)


def images_in(folder: Path) -> int:
    return sum(1 for p in folder.glob("*.png") if p.name != "overlay_grid.png") if folder.is_dir() else 0


def _few_warning(n: int | None, unit: str) -> str | None:
    if n is None or n >= MIN_STEADY_IMAGES:
        return None
    return (f"only {n} image(s) per {unit}: too few for a steady verdict: close scores are a tie; render >= {MIN_STEADY_IMAGES} prompts per evaluation")


def rank_run(
    output_dir: str | Path,
    reference: str | Path | None = None,
    backend: BackendSpec | str = "auto",
    out_dir: str | Path | None = None,
    output_name: str | None = None,
    rescore: bool = False,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> RankResult:
    """Rank the run in ``output_dir`` and write ``leaderboard.csv/json`` into ``out_dir``."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise KohyaExtError(f"{output_dir}: no such output folder")
    out = Path(out_dir) if out_dir else output_dir / RANK_DIR
    if out.resolve() == (output_dir / FOLDER).resolve():
        raise KohyaExtError(f"{out}: that is the training leaderboard's folder; rank never overwrites it: pick another --out")
    why = unwritable(out)
    if why:  # said before any scoring, not as a traceback halfway through
        raise KohyaExtError(f"cannot write the ranking into {out} ({why}): pass --out DIR, a folder you can write to")
    lb_path = output_dir / FOLDER / JSON_NAME
    if lb_path.exists() and not rescore:
        result = _from_leaderboard(output_dir, lb_path, out)
        if reference is not None:
            result.warnings.append(f"--reference {reference} not used: the run's kohya-ext leaderboard was read "
                                   "(--rescore scores sample/ against it instead)")
    else:
        result = _from_samples(output_dir, reference, backend, out, output_name, use_cache, cache_dir, progress)
    _write(result, output_dir)
    return result


def _from_leaderboard(output_dir: Path, lb_path: Path, out: Path) -> RankResult:
    try:
        board = Leaderboard.load(lb_path.parent)
    except (ValueError, OSError) as e:
        raise KohyaExtError(f"{lb_path}: cannot read the training leaderboard ({e}): rank with --rescore --reference DATA") from e
    if not board.rows:
        raise KohyaExtError(f"{lb_path}: the training leaderboard holds no evaluations yet")
    rows = [dict(r) for r in board.rows]
    held = (board.best_file or {}).get("holds") or {}
    warnings = []
    for r in rows:  # after a --resume kohya overwrites step-named files: name what holds the scored weights now
        if r.get("checkpoint_overwritten"):
            warnings.append(f"{point_label(r)} (cumulative step {r['cum_step']}): {r['checkpoint']} was overwritten "
                            f"{r['checkpoint_overwritten']}")
            r["checkpoint"] = board.best_file["file"] if held.get("eval") == r.get("eval") else None
    best = board.best()
    if best is not None and board.best_file is not None and held.get("eval") != best.get("eval"):
        warnings.append(f"{board.best_file['file']} does not hold the best evaluation ({point_label(best)}): "
                        f"{board.best_file.get('error') or 'not copied'}")
    counts = [images_in(lb_path.parent / r["images_dir"]) for r in rows if r.get("images_dir") and r.get("status") == "ok"]
    n = min((c for c in counts if c), default=None)
    res = RankResult(sorted(rows, key=rank_key), "leaderboard", out, lb_path.parent,
                     reference=(board.meta.get("options") or {}).get("consistency_reference"), images_per_point=n)
    res.warnings.extend(warnings)
    if (w := _few_warning(n, "evaluation")):
        res.warnings.append(w)
    return res


def _pick_output_name(groups: list[SampleGroup], output_name: str | None, folder: Path) -> str | None:
    names = sorted({s.output_name or "" for g in groups for s in g.samples})
    if output_name is None and len(names) > 1:
        shown = ", ".join(repr(n) if n else "(no output name)" for n in names)
        raise KohyaExtError(f"{folder}: samples of several runs ({shown}): pick one with --output-name")
    if output_name is not None:
        return output_name or None
    return (names[0] or None) if names else None


def _from_samples(output_dir, reference, backend, out, output_name, use_cache, cache_dir, progress) -> RankResult:
    from ..cache import MeasurementCache
    from ..measure import measure_files
    from ..scorer import Scorer

    sample_dir = output_dir / "sample"
    if not sample_dir.is_dir():
        raise KohyaExtError(f"{sample_dir}: no sample folder (train with --sample_prompts and --sample_every_n_steps/epochs, "
                            "or --consistency, to have checkpoints to rank)")
    groups, other = group_samples(sample_dir)
    name = _pick_output_name(groups, output_name, sample_dir)
    if groups:
        groups, _ = group_samples(sample_dir, name)
    if not groups:
        raise KohyaExtError(f"{sample_dir}: no sd-scripts sample images ({{output_name}}_{{step}}_{{NN}}_{{YYYYmmddHHMMSS}}.png)"
                            + (f"; {len(other)} other image(s) ignored" if other else ""))
    if reference is None:
        found = run_info.find_training_data(output_dir)
        if found is None:
            raise KohyaExtError(run_info.missing_reference_message(output_dir))
        reference = found.path
        logger.info("reference: %s (%s in %s)", found.path, found.key, found.found_in.name)
    spec = backend if isinstance(backend, BackendSpec) else BackendSpec(backend)
    scorer = Scorer(reference, spec, use_cache=use_cache, cache_dir=cache_dir, progress=progress)
    files = [p for g in groups for p in g.paths]
    cache = MeasurementCache(scorer.backend.identity(), scorer.rules.as_dict(), cache_dir) if use_cache else None
    ms = measure_files(files, scorer.backend.create, scorer.backend.name, cache=cache, rules=scorer.rules, progress=progress)
    by_path = dict(zip(files, ms))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, g in enumerate(groups, start=1):
        rows.append(_score_group(i, g, [by_path[p] for p in g.paths], scorer, output_dir, name, out))
    ok = [r for r in rows if r["status"] == "ok" and not r["memorized"]]
    if ok:
        max(ok, key=lambda r: (r["score"], -r["eval"]))["is_best"] = True
    n = min(len(g.samples) for g in groups)
    unit = "step" if all(g.kind == "step" for g in groups) else "sampling point"
    res = RankResult(sorted(rows, key=rank_key), "samples", out, out, reference=str(reference), images_per_point=n)
    if (w := _few_warning(n, unit)):
        res.warnings.append(w)
    if other:
        res.warnings.append(f"{len(other)} image(s) in {sample_dir.name}/ are not sd-scripts sample names and were left out")
    unknown = [g.number for g in groups if g.kind == "epoch" and not any(r["epoch"] == g.number and r["kohya_step"] for r in rows)]
    if unknown:
        res.warnings.append(f"epoch-end samples (epoch {', '.join(map(str, unknown))}) are listed by epoch: their step is not in "
                            "their names and no checkpoint of that epoch with ss_steps metadata is left")
    return res


def _score_group(i, g: SampleGroup, ms, scorer, output_dir: Path, output_name, out: Path) -> dict[str, Any]:
    from ..images import load_image
    from ..overlay import draw_overlay, overlay_grid

    report = scorer.score_measurements(ms)
    ckpt, ss_steps = run_info.checkpoint_info(output_dir, output_name, g.kind, g.number)
    step = g.number if g.kind == "step" else ss_steps
    folder = out / (f"eval-step{g.number:08d}" if g.kind == "step" else f"eval-epoch{g.number:06d}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.json", dumps_json(report.to_dict(), indent=1, ensure_ascii=False, default=str))
    overlays = []
    for p, m in zip(g.paths, report.samples):
        try:
            overlays.append(draw_overlay(load_image(p), m))
        except KohyaExtError:
            continue  # unreadable: counted in the report already
    atomic_save_image(overlay_grid(overlays, columns=min(4, max(1, len(overlays)))), folder / "overlay_grid.png")
    mem = report.memorization
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update(
        eval=i, status="ok", cum_step=step, kohya_step=step, epoch=g.number if g.kind == "epoch" else None,
        trigger=f"sample_{g.kind}", checkpoint=ckpt, score=float(report.score), detection_rate=float(report.detection_rate),
        memorization=mem, memorized=is_memorized(mem, ConsistencyOptions().memorization_max), is_best=False,
        backend=(report.backend or {}).get("name") or scorer.backend.name, score_version=report.score_version,
        formula_version=FORMULA_VERSION, images_dir=folder.name, time=g.first_time.timestamp() if g.first_time else None,
        images=len(g.samples), label=g.label if g.kind == "step" or step is None else f"{g.label} (step {step})",
    )
    for rname in RATIO_NAMES:
        c = report.ratios.get(rname)
        row[f"{rname}_diff_pct"] = None if c is None else c.diff_pct
        row[f"{rname}_z"] = None if c is None else c.z
    return row


def _write(result: RankResult, output_dir: Path) -> None:
    """The training leaderboard's writer, into rank's own folder, rows best first."""
    board = Leaderboard(result.folder)
    board.rows = result.rows
    board.meta = {"ranked_by": "kohya-ext rank", "source": result.source, "output_dir": str(output_dir.resolve()),
                  "images_root": str(result.images_root.resolve()), "reference": result.reference,
                  "images_per_point": result.images_per_point, "warnings": result.warnings}
    board.write()


def load_rank(folder: str | Path) -> RankResult:
    """A ranking written by `rank` (for `compare` and `report`)."""
    board = Leaderboard.load(folder)
    m = board.meta
    return RankResult(board.rows, m.get("source", "samples"), Path(folder), Path(m.get("images_root") or folder),
                      m.get("reference"), m.get("images_per_point"), list(m.get("warnings") or []))


def point_label(row: dict[str, Any]) -> str:
    if row.get("label"):
        return str(row["label"])
    if row.get("kohya_step") is not None:
        return f"step {row['kohya_step']}"
    return f"epoch {row.get('epoch')}"


def _short(name: str) -> str:
    return name.replace("_ratio", "").replace("eye_to_", "eye-").replace("nose_to_", "nose-")[:10]


def format_table(result: RankResult) -> str:
    """The leaderboard as text, best first, with the warnings next to it."""
    with_val = any(r.get("val_loss") is not None for r in result.rows)
    heads = ["#", "checkpoint", "score"] + (["val loss"] if with_val else []) + ["det%", "mem%"] + [_short(r) for r in RATIO_NAMES]
    lines = []
    table = []
    for i, r in enumerate(result.rows, start=1):
        label = point_label(r) + (" *best" if r.get("is_best") else "") + (" (memorised)" if r.get("memorized") else "") \
            + (" (file overwritten)" if r.get("checkpoint_overwritten") else "")
        val = ([f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "-"] if with_val else [])
        if r.get("status") != "ok" or r.get("score") is None:
            failed = r.get("status") != "ok" or r.get("val_loss") is None
            table.append([str(i), label, "failed" if failed else "-"] + val + ["", ""] + [""] * len(RATIO_NAMES))
            continue
        mem = r.get("memorization")
        table.append([str(i), label, f"{r['score']:.4f}"] + val + [f"{100 * r['detection_rate']:.0f}",
                      "-" if mem is None else f"{100 * mem:.0f}"]
                     + ["-" if r.get(f"{n}_diff_pct") is None else f"{r[f'{n}_diff_pct']:+.1f}" for n in RATIO_NAMES])
    widths = [max(len(h), *(len(row[j]) for row in table)) for j, h in enumerate(heads)]
    fmt = lambda cells: "  ".join(c.ljust(w) if j == 1 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines.append(fmt(heads))
    lines.extend(fmt(row) for row in table)
    lines.append("(ratio columns: difference from the reference mean, %)")
    src = "the training leaderboard (not re-scored)" if result.source == "leaderboard" else f"the samples in sample/ vs {result.reference}"
    lines.append(f"ranked from {src}; written to {result.folder / 'leaderboard.csv'} and leaderboard.json")
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)
