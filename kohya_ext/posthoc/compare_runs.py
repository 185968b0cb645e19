"""`kohya-ext compare RUN_DIR...`: runs side by side (best step, best score, score at the last step)."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from ..errors import KohyaExtError
from ..io_utils import atomic_write_text
from ..training.leaderboard import FOLDER, JSON_NAME
from .rank import RANK_DIR, RankResult, load_rank, point_label, rank_run, unwritable

FIELDS = ["run", "source", "evaluations", "best", "best_score", "best_val_loss", "best_checkpoint", "last", "last_score",
          "last_minus_best", "images_per_point", "warnings"]


def _newest_input(run: Path) -> float:
    """mtime of the newest thing a ranking of ``run`` depends on."""
    paths = [run / FOLDER / JSON_NAME, *(run / "sample").glob("*.png")]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def ranked(run: Path, reference: str | None, rescore: bool, **kw: Any) -> RankResult:
    """The run's ranking: the one `rank` wrote when it is newer than its inputs, else a new one."""
    stored = run / RANK_DIR / JSON_NAME
    if not rescore and reference is None and stored.exists() and stored.stat().st_mtime >= _newest_input(run):
        return load_rank(stored.parent)
    why = unwritable(stored.parent) if run.is_dir() else None  # a missing run is rank_run's error to say
    if why is None:
        return rank_run(run, reference=reference, rescore=rescore, **kw)
    with tempfile.TemporaryDirectory(prefix="kohya-ext-rank-") as tmp:  # a read-only run is compared, not stored
        result = rank_run(run, reference=reference, rescore=rescore, out_dir=tmp, **kw)
    result.warnings.append(f"ranking not stored in {stored.parent} ({why})")
    return result


def summarize(run: Path, result: RankResult) -> dict[str, Any]:
    best, last = result.best, result.last
    bs = None if best is None else best.get("score")
    ls = None if last is None else last.get("score")
    return {
        "run": str(run), "source": result.source, "evaluations": len(result.rows),
        "best": None if best is None else point_label(best), "best_score": bs,
        "best_val_loss": None if best is None else best.get("val_loss"),
        "best_checkpoint": None if best is None else best.get("checkpoint"),
        "last": None if last is None else point_label(last), "last_score": ls,
        "last_minus_best": None if bs is None or ls is None else ls - bs,
        "images_per_point": result.images_per_point, "warnings": "; ".join(result.warnings),
    }


def compare_runs(runs: list[str | Path], reference: str | None = None, rescore: bool = False, **kw: Any) -> list[dict[str, Any]]:
    """One summary per run, best run (by best score) first. A run that cannot be ranked says why."""
    rows = []
    for r in runs:
        run = Path(r)
        try:
            rows.append(summarize(run, ranked(run, reference, rescore, **kw)))
        except (KohyaExtError, OSError) as e:  # one run that cannot be ranked is reported, the others compared
            rows.append({k: None for k in FIELDS} | {"run": str(run), "source": "error", "warnings": str(e)})
    return sorted(rows, key=lambda d: (d["best_score"] is None, -(d["best_score"] or 0.0)))


def format_comparison(rows: list[dict[str, Any]]) -> str:
    heads = ["run", "best", "best score", "val loss", "last", "last score", "last-best", "img/pt"]

    def num(v: float | None, sign: bool = False) -> str:
        return "-" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")

    table = [[d["run"], d["best"] or "-", num(d["best_score"]), num(d.get("best_val_loss")), d["last"] or "-", num(d["last_score"]),
              num(d["last_minus_best"], True), "-" if d["images_per_point"] is None else str(d["images_per_point"])] for d in rows]
    widths = [max(len(h), *(len(t[j]) for t in table)) for j, h in enumerate(heads)]
    lines = ["  ".join(c.ljust(w) if j in (0, 1, 4) else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))
             for cells in [heads, *table]]
    for d in rows:
        if d["warnings"]:
            # errors already name the run folder
            lines.append(f"error: {d['warnings']}" if d["source"] == "error" else f"warning: {d['run']}: {d['warnings']}")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The comparison as CSV, written atomically: a failed write leaves the previous file."""
    path = Path(path)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if d.get(k) is None else d.get(k)) for k in FIELDS} for d in rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, buf.getvalue())
    except OSError as e:
        raise KohyaExtError(f"cannot write the comparison CSV {path} ({e.strerror or e}); nothing was replaced: "
                            "choose a folder you can write to") from None
