"""Every evaluation of a run, as ``leaderboard.csv`` and ``leaderboard.json`` (written atomically).

Rows are keyed by ``cum_step``, a step count of our own that keeps growing across
``--resume`` (kohya's ``global_step`` restarts at 0), plus the checkpoint file evaluated.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..io_utils import DamagedFileError, atomic_write_text, dumps_json, read_json
from ..ratios import RATIO_NAMES

FOLDER = "consistency"  # output_dir/consistency/: everything a run with kohya-ext writes
RUN_RECORD = "run.json"
FORMAT = "kohya-ext-leaderboard"
VERSION = 1
CSV_NAME = "leaderboard.csv"
JSON_NAME = "leaderboard.json"

BASE_COLUMNS = [
    "eval", "status", "cum_step", "kohya_step", "epoch", "trigger", "checkpoint", "score", "val_loss", "val_loss_step",
    "detection_rate", "memorization", "memorized", "is_best", "backend", "score_version", "formula_version",
]
RATIO_COLUMNS = [f"{r}_{k}" for r in RATIO_NAMES for k in ("diff_pct", "z")]
TAIL_COLUMNS = ["es_best", "es_wait", "stop", "stop_reason", "message", "error", "best_copy", "checkpoint_overwritten", "images_dir",
                "seconds_render", "seconds_score", "time", "segment", "characters"]
COLUMNS = BASE_COLUMNS + RATIO_COLUMNS + TAIL_COLUMNS
BEST_KEYS = ("eval", "cum_step", "kohya_step", "epoch", "checkpoint", "score", "val_loss", "best_copy", "checkpoint_overwritten")


class Leaderboard:
    """The evaluation history of one run folder (``output_dir/consistency``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.rows: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        # evaluations of a continuation that a --resume from an earlier state replaced (kept for the record)
        self.abandoned: list[dict[str, Any]] = []
        # what {output_name}-best holds (training: BestCheckpoint.outcome()), so no reader takes the crowned row's word for it
        self.best_file: dict[str, Any] | None = None

    @property
    def csv_path(self) -> Path:
        return self.folder / CSV_NAME

    @property
    def json_path(self) -> Path:
        return self.folder / JSON_NAME

    @classmethod
    def load(cls, folder: str | Path) -> "Leaderboard":
        """The stored history, or an empty one when there is none yet."""
        lb = cls(folder)
        if lb.json_path.exists():
            fix = "move it aside (training starts a fresh history; `kohya-ext rank --rescore` rebuilds a ranking)"
            # NaN in a history means "no number": older kohya-ext wrote a failed score that way
            d = read_json(lb.json_path, "leaderboard", fix, nonfinite_as_null=True)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise DamagedFileError(f"{lb.json_path}: not a kohya-ext leaderboard (no \"format\": \"{FORMAT}\"): {fix}")
            problem = _problem(d)
            if problem:
                raise DamagedFileError(f"{lb.json_path}: damaged leaderboard ({problem}): {fix}")
            lb.rows = list(d.get("evaluations", []))
            lb.meta = dict(d.get("run", {}))
            lb.abandoned = list(d.get("abandoned", []))
            lb.best_file = d.get("best_file") if isinstance(d.get("best_file"), dict) else None
            for r in lb.rows:  # a row without a number is never the best, whatever the file says
                if r.get("is_best") and (r.get("status") != "ok" or (r.get("score") is None and r.get("val_loss") is None)):
                    r["is_best"] = False
        return lb

    def best(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("is_best")), None)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        row = self.append(row)
        self.write()
        return row

    def append(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row as stored (columns first, numbered ``eval``), crowned alone when ``is_best``; not written yet."""
        row = {k: row.get(k) for k in COLUMNS} | {k: v for k, v in row.items() if k not in COLUMNS}
        row["eval"] = 1 + max((int(r.get("eval") or 0) for r in self.rows + self.abandoned), default=0)
        if row.get("is_best"):
            for r in self.rows:
                r["is_best"] = False
        self.rows.append(row)
        return row

    def set_checkpoint(self, cum_step: int, checkpoint: str) -> bool:
        """Name the checkpoint file of the evaluation at ``cum_step`` when kohya writes it after the evaluation."""
        row = next((r for r in reversed(self.rows) if r.get("cum_step") == cum_step and not r.get("checkpoint")), None)
        if row is not None:
            row["checkpoint"] = checkpoint
        return row is not None

    def mark_overwritten(self, checkpoint: str, cum_step: int, best_holds: dict | None, best_file: str) -> list[dict]:
        """kohya wrote ``checkpoint`` again at ``cum_step`` (its step count restarts after ``--resume``):
        earlier evaluations of that file no longer have their weights there. Each gets
        ``checkpoint_overwritten`` saying when, and where its weights still are (the best file, or nowhere)."""
        hit = []
        for r in self.rows:
            if r.get("checkpoint") == checkpoint and r.get("cum_step") != cum_step and not r.get("checkpoint_overwritten"):
                kept = best_holds is not None and best_holds.get("eval") == r.get("eval")
                r["checkpoint_overwritten"] = (f"at cumulative step {cum_step}; these weights are in {best_file}" if kept
                                               else f"at cumulative step {cum_step}; no file holds these weights now")
                hit.append(r)
        return hit

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        best = self.best()
        doc = {"format": FORMAT, "version": VERSION, "run": self.meta,
               "best": None if best is None else {k: best.get(k) for k in BEST_KEYS},
               "best_file": self.best_file, "columns": COLUMNS, "evaluations": self.rows}
        if self.abandoned:
            doc["abandoned"] = self.abandoned
        atomic_write_text(self.json_path, dumps_json(doc, indent=1, ensure_ascii=False, default=str))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
        atomic_write_text(self.csv_path, buf.getvalue())


_NUMBER_COLUMNS = {"score", "val_loss", "detection_rate", "memorization", "es_best", "seconds_render", "seconds_score", "time", *RATIO_COLUMNS}
_INT_COLUMNS = {"eval", "cum_step", "kohya_step", "epoch", "es_wait", "segment", "images", "val_loss_step"}
_BOOL_COLUMNS = {"memorized", "is_best", "stop"}


def _problem(doc: dict) -> str | None:
    """The first value of a stored leaderboard that is not of its column's type (None: all fit)."""
    for key, kind in (("evaluations", list), ("abandoned", list), ("run", dict)):
        if key in doc and not isinstance(doc[key], kind):
            return f"{key!r} is not a {kind.__name__}"
    for where, rows in (("evaluation", doc.get("evaluations", [])), ("abandoned evaluation", doc.get("abandoned", []))):
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                return f"{where} {i} is not an object"
            for k, v in row.items():
                if v is None:
                    continue
                if k in _NUMBER_COLUMNS and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    return f"{where} {i}: {k} = {v!r:.40} is not a number"
                if k in _INT_COLUMNS and (isinstance(v, bool) or not isinstance(v, int)):
                    return f"{where} {i}: {k} = {v!r:.40} is not a whole number"
                if k in _BOOL_COLUMNS and not isinstance(v, bool):
                    return f"{where} {i}: {k} = {v!r:.40} is not true/false"
                if k in ("status", "checkpoint", "images_dir", "label", "best_copy", "checkpoint_overwritten") and not isinstance(v, str):
                    return f"{where} {i}: {k} = {v!r:.40} is not text"
    return None
