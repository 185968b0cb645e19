"""The best checkpoint: crown an evaluation, copy exactly its weights to ``{output_name}-best``,
and know at every moment which evaluation that file holds (a failed copy is recorded, never hidden)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from kohya_ext.training import best as bestcopy
from kohya_ext.training import decisions
from kohya_ext.training.messages import measured, say

logger = logging.getLogger("kohya_ext")
SUMMARY_KEYS = ("eval", "cum_step", "kohya_step", "epoch", "checkpoint", "score", "val_loss")


def summary(row: dict | None) -> dict | None:
    return None if row is None else {k: row.get(k) for k in SUMMARY_KEYS}


class BestCheckpoint:
    """``{output_name}-best``: crowned by score (``decisions.crown``), copied from kohya's file of
    the evaluated step (now, or when kohya writes it right after the hook), or saved from the
    network when kohya saves nothing at that step. ``held`` is what the file holds now."""

    def __init__(self, path: Path, memorization_max: float):
        self.path = Path(path)
        self.memorization_max = memorization_max
        self.held: dict | None = None  # the evaluation the file holds (summary), None: not written by this run
        self.error: str | None = None  # why the last copy failed, until one succeeds
        self.pending: dict | None = None  # a crowned row waiting for kohya's save at its step
        self.last_save: dict | None = None  # kohya's last checkpoint: path, metadata, dtype, global_step
        self.saving_own = False

    # -- state (fields only; files are reconciled after a resume by kohya_ext.training.resume) --
    def state_dict(self) -> dict:
        return {"held": self.held}

    def load_state_dict(self, state: dict) -> None:
        self.held = state.get("held")

    # -- crowning and copying ---------------------------------------------------------------
    def crown(self, row: dict, best_score: float | None) -> bool:
        """Set the row's ``memorized`` and ``is_best`` (a finite, non-memorised score above ``best_score``); True when eligible."""
        memorized, eligible, is_best = decisions.crown(row.get("score"), row.get("memorization"), self.memorization_max, best_score)
        row.update(memorized=memorized, is_best=is_best)
        return eligible

    def keep(self, row: dict, global_step: int, network: Any) -> None:
        """After the crowned ``row`` is recorded: its weights into the best file (``row["best_copy"]`` says how it went)."""
        last_step = None if self.last_save is None else self.last_save["global_step"]
        source = decisions.best_copy_source(global_step, last_step, row.get("checkpoint"))
        if source is decisions.BestCopy.COPY_SAVED:
            self.copy_from(self.last_save["path"], row)
        elif source is decisions.BestCopy.AWAIT_SAVE:
            self.pending = {"row": row, "global_step": global_step}
            row["best_copy"] = "pending: copied when sd-scripts writes " + str(row["checkpoint"])
        else:
            self._save_own(row, global_step, network)

    def checkpoint_saved(self, path: str, metadata: dict | None, dtype: Any, global_step: int) -> dict | None:
        """kohya wrote ``path`` at ``global_step``: remember it; a pending copy is made now (its row is returned)."""
        self.last_save = {"path": str(path), "metadata": dict(metadata or {}), "dtype": dtype, "global_step": global_step}
        if self.pending is None or self.pending["global_step"] != global_step:
            return None
        row, self.pending = self.pending["row"], None
        self.copy_from(str(path), row)
        return row

    def _done(self, row: dict, outcome: str, error: str | None) -> None:
        row["best_copy"] = outcome
        if error is None:
            self.held, self.error = {**summary(row), "file": self.path.name}, None
        else:
            self.error = error
            holds = f"still holds cumulative step {self.held['cum_step']}" if self.held else "was not written"
            say(f"keeping the best weights (step {row['kohya_step']}) in {self.path.name} failed: {error}; "
                f"{self.path.name} {holds}; the evaluated weights are in {row.get('checkpoint') or 'no file'}")

    def copy_from(self, src: str, row: dict) -> None:
        try:
            bestcopy.copy_with_metadata(src, self.path, bestcopy.best_metadata(row))
        except Exception as e:
            return self._done(row, f"failed: {type(e).__name__}: {e}", f"{type(e).__name__}: {e}")
        self._done(row, "copied", None)
        say(f"best checkpoint so far: {Path(src).name} ({measured(row)}) copied to {self.path.name}")

    def _save_own(self, row: dict, global_step: int, network: Any) -> None:
        if network is None or not hasattr(network, "save_weights"):
            return self._done(row, "failed: no network to save from", "no network to save the weights from")
        meta = dict(self.last_save["metadata"]) if self.last_save and self.last_save.get("metadata") else {}
        meta.update({"ss_steps": str(global_step), "ss_epoch": str(row.get("epoch"))})
        meta.update(bestcopy.best_metadata(row))
        tmp = None
        self.saving_own = True
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=self.path.suffix)
            os.close(fd)
            network.save_weights(tmp, self.last_save["dtype"] if self.last_save else None, meta)
            bestcopy.umask_mode(tmp)  # as kohya's own files get, not mkstemp's 0600
            os.replace(tmp, self.path)
        except Exception as e:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            return self._done(row, f"failed: {type(e).__name__}: {e}", f"{type(e).__name__}: {e}")
        finally:
            self.saving_own = False
        self._done(row, "saved", None)
        say(f"best weights so far (step {global_step}, {measured(row)}) saved to {self.path.name}")

    def outcome(self) -> dict:
        """For the leaderboard, run.json and the end line: the file, what it holds, why a copy failed."""
        return {"file": self.path.name, "holds": self.held, "error": self.error,
                "pending": None if self.pending is None else self.pending["row"].get("checkpoint")}
