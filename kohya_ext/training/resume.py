"""``--resume``: the extension's state rides in a side file inside kohya's state folder.

kohya restarts ``global_step`` at 0 on resume and then overwrites its step-named checkpoint
files, so the history is keyed by a cumulative step of our own (``cum_step``) plus the file
evaluated. The side file (written by accelerate's save-state pre hook, read by its load-state
pre hook; a state without it resumes with a warning) records the cumulative step and which
evaluations belong to the weights in that state. On load, the leaderboard keeps exactly those
evaluations (plus one made at the same step right after the state was saved, as kohya does at
an epoch end); later ones, from a continuation the resume replaces, move to ``abandoned``.
The early-stopping state (best score, patience count) is replayed from the kept history.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_text, dumps_json
from . import best as bestcopy
from . import decisions
from .early_stop import EarlyStopState, StopConfig, decide

SIDE_FILE = "kohya_ext_consistency.json"
FORMAT = "kohya-ext-state"


def write_side_file(state_dir: str | Path, state: dict[str, Any]) -> Path:
    """``state`` (the callback's ``state_dict()``: cum_step, segment, epoch, evaluations, best)."""
    path = Path(state_dir) / SIDE_FILE
    doc = {"format": FORMAT, "version": 1, **state}
    atomic_write_text(path, dumps_json(doc, indent=1, default=str))
    return path


def read_side_file(state_dir: str | Path) -> dict | None:
    """The side file's contents, or None when the state has none (or an unreadable one)."""
    path = Path(state_dir) / SIDE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def split_rows(rows: list[dict[str, Any]], side: dict) -> tuple[list[dict], list[dict]]:
    """(kept, abandoned): the evaluations of the resumed lineage, and the others."""
    evals, cum, seg = set(side.get("evaluations") or []), side["cum_step"], side.get("segment", 0)
    kept, abandoned = [], []
    for r in rows:
        same_point = r.get("cum_step") == cum and (r.get("segment") or 0) == seg
        (kept if r.get("eval") in evals or same_point else abandoned).append(r)
    return kept, abandoned


def replay(rows: list[dict[str, Any]], cfg: StopConfig) -> EarlyStopState:
    """The early-stopping state after ``rows`` (best, patience count), with any stop lifted:
    resuming asks for more training; the next evaluation applies the rules again."""
    state, key = EarlyStopState(), "val_loss" if cfg.mode == "min" else "score"
    for r in rows:
        ok = r.get("status") == "ok" and r.get(key) is not None
        state, _, _, _ = decide(state, float(r[key]) if ok else None, cfg, eligible=ok and not r.get("memorized"))
    return replace(state, stopped=False, reason="none", message="") if state.stopped else state


def held_step(best_file: Path) -> str | None:
    """The cumulative step a ``-best`` file says it holds (None: unreadable or not ours)."""
    try:
        if best_file.suffix == ".safetensors":
            return bestcopy.read_metadata(best_file).get(bestcopy.META_STEP)
        return json.loads(best_file.with_name(best_file.name + ".json").read_text(encoding="utf-8")).get(bestcopy.META_STEP)
    except Exception:
        return None


def reconcile_best_file(best_file: Path, best: dict | None, output_dir: Path) -> tuple[Path | None, Path | None]:
    """After a resume, the ``-best`` file must hold the kept history's best evaluation. When it holds one of
    the replaced continuation it moves aside to ``-best-abandoned``. Returns (where it went, kohya's file of
    the kept best to copy again when that file still holds its step), each None when nothing applies."""
    if not best_file.exists() or not decisions.best_copy_stale(best, held_step(best_file)):
        return None, None
    aside = best_file.with_name(best_file.stem + "-abandoned" + best_file.suffix)
    os.replace(best_file, aside)
    src = output_dir / best["checkpoint"] if best is not None and best.get("checkpoint") else None
    if src is None or not src.exists() or src.suffix != ".safetensors" or \
            bestcopy.read_metadata(src).get("ss_steps") != str(best["kohya_step"]):
        src = None
    return aside, src
