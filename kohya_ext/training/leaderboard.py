"""Every evaluation of a run, as ``leaderboard.csv`` and ``leaderboard.json`` (written atomically).

Rows are keyed by ``cum_step``, a step count of our own that keeps growing across
``--resume`` (kohya's ``global_step`` restarts at 0), plus the checkpoint file evaluated.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_text
from ..ratios import RATIO_NAMES

FOLDER = "consistency"  # output_dir/consistency/: everything a run with kohya-ext writes
RUN_RECORD = "run.json"
FORMAT = "kohya-ext-leaderboard"
VERSION = 1
CSV_NAME = "leaderboard.csv"
JSON_NAME = "leaderboard.json"

BASE_COLUMNS = [
    "eval", "status", "cum_step", "kohya_step", "epoch", "trigger", "checkpoint", "score",
    "detection_rate", "memorization", "memorized", "is_best", "backend", "score_version", "formula_version",
]
RATIO_COLUMNS = [f"{r}_{k}" for r in RATIO_NAMES for k in ("diff_pct", "z")]
TAIL_COLUMNS = ["es_best", "es_wait", "stop", "stop_reason", "message", "error", "images_dir", "seconds_render", "seconds_score", "time",
                "segment", "characters"]
COLUMNS = BASE_COLUMNS + RATIO_COLUMNS + TAIL_COLUMNS


class Leaderboard:
    """The evaluation history of one run folder (``output_dir/consistency``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.rows: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        # evaluations of a continuation that a --resume from an earlier state replaced (kept for the record)
        self.abandoned: list[dict[str, Any]] = []

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
            d = json.loads(lb.json_path.read_text(encoding="utf-8"))
            if d.get("format") != FORMAT:
                raise ValueError(f"{lb.json_path}: not a kohya-ext leaderboard")
            lb.rows = list(d.get("evaluations", []))
            lb.meta = dict(d.get("run", {}))
            lb.abandoned = list(d.get("abandoned", []))
        return lb

    def best(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("is_best")), None)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {k: row.get(k) for k in COLUMNS} | {k: v for k, v in row.items() if k not in COLUMNS}
        row["eval"] = 1 + max((int(r.get("eval") or 0) for r in self.rows + self.abandoned), default=0)
        if row.get("is_best"):
            for r in self.rows:
                r["is_best"] = False
        self.rows.append(row)
        self.write()
        return row

    def set_checkpoint(self, cum_step: int, checkpoint: str) -> None:
        """Name the checkpoint file of the evaluation at ``cum_step`` (written after the evaluation)."""
        for r in reversed(self.rows):
            if r.get("cum_step") == cum_step:
                r["checkpoint"] = checkpoint
                self.write()
                return

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        best = self.best()
        doc = {"format": FORMAT, "version": VERSION, "run": self.meta,
               "best": None if best is None else {k: best.get(k) for k in ("eval", "cum_step", "kohya_step", "epoch", "checkpoint", "score")},
               "columns": COLUMNS, "evaluations": self.rows}
        if self.abandoned:
            doc["abandoned"] = self.abandoned
        atomic_write_text(self.json_path, json.dumps(doc, indent=1, ensure_ascii=False, default=str))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
        atomic_write_text(self.csv_path, buf.getvalue())
