"""One training run with kohya-ext: the object both entry points (``python -m kohya_ext`` and the GUI's
``--network_module kohya_ext.gui_network``) build, install and finish.

It owns the parts (``kohya_ext.callbacks``: the evaluator, early stopping, the best checkpoint), the
history (leaderboard, run.json) and the trackers, and offers the sd-scripts glue
(``kohya_ext.patches``) a narrow set of hook methods. Order at one evaluation, on every rank:
render the evaluation prompts through the family's own sampler (prompts split across ranks, images
land in a shadow folder), barrier; then on the main process: score in the worker (deadline), crown,
decide, record, keep the best copy, log; then the stop decision is broadcast so that every rank acts
on the same step. Nothing kohya-ext writes or logs can end the training: each failure is recorded
(``write_errors``, the tracker failures) and said in one line, and the end line tells what is true.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from ..callbacks import BestCheckpoint, ConsistencyEvaluator, EarlyStopping
from ..callbacks.best_checkpoint import summary
from ..errors import KohyaExtError
from ..io_utils import atomic_write_text, dumps_json, unwritable
from . import decisions, messages, resume
from .best import best_name
from .early_stop import StopConfig
from .leaderboard import FOLDER, RUN_RECORD, Leaderboard
from .options import ConsistencyOptions
from .distributed import RankSync, is_main_process, rank_sync
from .trackers import Trackers

logger = logging.getLogger("kohya_ext")
VAL_LOSS_KEYS = ("loss/validation/step_average", "loss/validation/epoch_average")  # what sd-scripts (v0.10+) logs


class EarlyStopped(Exception):
    """Raised on every rank at the same point to leave ``train()`` after an early stop."""

    def __init__(self, global_step: int, message: str):
        super().__init__(message)
        self.global_step = global_step
        self.message = message


def check_validation_args(args: Any) -> None:
    """Watching the validation loss needs sd-scripts to compute and log it: say so before anything is spent."""
    if not (getattr(args, "logging_dir", None) or getattr(args, "log_with", None)):
        raise KohyaExtError("--consistency_monitor val_loss/both reads sd-scripts' validation loss from its logs, and sd-scripts "
                            "logs only with a tracker: add --logging_dir DIR (or --log_with tensorboard/wandb)")
    if not getattr(args, "validation_split", None) and not getattr(args, "dataset_config", None):
        raise KohyaExtError("--consistency_monitor val_loss/both needs a validation set: add --validation_split 0.1 "
                            "(or validation_split in the dataset config; sd-scripts v0.10 or later)")


def prepare_folder(output_dir: Any) -> Path:
    """``output_dir/consistency``, created and checked writable: one line before anything is spent."""
    if not output_dir:
        raise KohyaExtError("--consistency needs --output_dir (evaluations are kept under output_dir/consistency)")
    folder = Path(output_dir) / FOLDER
    why = unwritable(folder)
    if why:
        raise KohyaExtError(f"{folder}: cannot write there ({why}): --output_dir must be a folder you can write to "
                            f"(sd-scripts saves its checkpoints there too)")
    return folder


class TrainingRun:
    """Evaluations, early stopping and the best checkpoint for one sd-scripts ``train()`` call."""

    def __init__(self, opts: ConsistencyOptions, surface: Any):
        self.opts = opts
        self.surface = surface  # kohya_ext.patches.sd_scripts.KohyaSurface: save cadence, names, hooks
        self.is_main = is_main_process()
        val_cfg = StopConfig(opts.patience, opts.min_delta, opts.warmup, None, "loss/validation", "min")
        # val_loss: one signal, the validation loss; both: the consistency score, and the validation loss beside it
        self.stopping = EarlyStopping(val_cfg if opts.monitor == "val_loss" else
                                      StopConfig(opts.patience, opts.min_delta, opts.warmup, opts.target))
        self.val_stopping = EarlyStopping(val_cfg) if opts.monitor == "both" else None
        self.val_losses: list[dict] = []  # main process: every validation loss sd-scripts logged, in order
        self._validation_steps = 0
        self.args: Any = None
        self.folder = Path(".")
        self.evaluator: ConsistencyEvaluator | None = None
        self.best: BestCheckpoint | None = None
        self.board: Leaderboard | None = None
        self.trackers: Trackers | None = None
        self.record: dict | None = None  # run.json
        self.write_errors: dict[str, str] = {}  # file -> last error, until a write of it succeeds
        self.accelerator: Any = None
        self.network: Any = None
        self.ranks: RankSync | None = None
        self.epoch = 0
        self.step_offset = 0  # cumulative steps before this training segment (--resume)
        self.segment = 0  # 0, then +1 at every resume
        self.current_step = 0
        self.evaluated_steps: set[int] = set()
        self.stop_message: str | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def start(self, args: Any) -> None:
        """Before training: the folder, the prompts (every rank), the scoring worker (main process)."""
        self.args = args
        if self.opts.watches_val_loss:
            check_validation_args(args)
        self.folder = prepare_folder(getattr(args, "output_dir", None))
        ext = "." + getattr(args, "save_model_as", "safetensors")
        self.best = BestCheckpoint(Path(args.output_dir) / best_name(getattr(args, "output_name", None), ext), self.opts.memorization_max)
        if self.opts.watches_consistency:  # val_loss alone renders nothing and needs no reference
            self.evaluator = ConsistencyEvaluator(self.opts, self.folder)
            self.evaluator.setup(args, self.is_main, self.deadline(args))
        if self.is_main:
            self.board = Leaderboard(self.folder)  # a fresh run starts a fresh history (resume: _on_load_state)
            self.board.meta = {"output_name": getattr(args, "output_name", None), "options": self.opts.as_config()}

    def install(self, trainer: Any) -> None:
        """The hooks on the trainer instance (its family's own overrides stay in charge)."""
        self.surface.install_hooks(trainer, self)

    def deadline(self, args: Any) -> float:
        """The scoring deadline, kept under half of the collective timeout other ranks wait on."""
        minutes = getattr(args, "ddp_timeout", None)
        return min(self.opts.timeout, 0.5 * (float(minutes) * 60 if minutes else 1800.0))

    @property
    def prompt_file(self) -> Path | None:
        return None if self.evaluator is None else self.evaluator.prompt_file

    @property
    def last_save(self) -> dict | None:
        return None if self.best is None else self.best.last_save

    # -- hooks the sd-scripts glue calls -----------------------------------------------------------
    def network_ready(self, accelerator: Any, network: Any) -> None:
        """Also registers our state hooks: kohya registers its own, then loads ``--resume``, later."""
        self.accelerator, self.network = accelerator, network
        self._rank_sync(accelerator)
        if hasattr(accelerator, "register_save_state_pre_hook"):
            accelerator.register_save_state_pre_hook(self._on_save_state)
            accelerator.register_load_state_pre_hook(self._on_load_state)

    def epoch_started(self) -> None:
        self.epoch += 1

    def kohya_epoch(self, epoch: int) -> None:
        """kohya's own 1-based epoch (our counter can be off by one after a mid-epoch resume)."""
        self.epoch = epoch

    def check_stop(self, epoch: int | None, global_step: int) -> None:
        """At the epoch end after an early stop: leave train() on every rank."""
        if self.stop_message is not None and epoch is not None:
            raise EarlyStopped(global_step, self.stop_message)

    def sample_point(self, accelerator: Any, args: Any, epoch: int | None, global_step: int,
                     render: Callable[[Path, Path], None]) -> None:
        """kohya's sampler hook (after every optimizer step, epoch None, and at each epoch end)."""
        self.current_step = global_step
        if epoch is not None:
            self.epoch = epoch
        if self.evaluator is None:
            return
        kind = decisions.evaluation_trigger(
            global_step, epoch, stopped=self.stop_message is not None, every_n_steps=self.opts.every_n_steps,
            step_save_due=self.surface.step_save_due(args, global_step),
            epoch_save_due=epoch is not None and self.surface.epoch_save_due(args, epoch),
            final=self.surface.is_final(args, global_step), already_evaluated=global_step in self.evaluated_steps)
        if kind is None:
            return
        self.evaluated_steps.add(global_step)
        cum = self.step_offset + global_step
        render_dir, seconds, error = self.evaluator.render(render, cum)
        self._rank_sync(accelerator).barrier(accelerator)  # every rank's images are written
        message = self._decided_on_main(accelerator, "the evaluation", global_step, lambda: self._evaluate(
            accelerator, args, kind, epoch, global_step, cum, render_dir, seconds, error))
        if message:
            self.stop_message = message
            if epoch is None:
                # kohya breaks its step loop once global_step >= max_train_steps; the epoch-end
                # hook then raises EarlyStopped, so no further optimizer step runs.
                args.max_train_steps = global_step
            else:
                raise EarlyStopped(global_step, message)

    def logged(self, logs: dict, global_step: int) -> None:
        """sd-scripts logged ``logs`` (main process, with a tracker): keep its validation losses."""
        for key in VAL_LOSS_KEYS:
            if key in logs:
                self.val_losses.append({"kohya_step": global_step, "cum_step": self.step_offset + global_step,
                                        "value": float(logs[key]), "key": key})

    def validation_step_ended(self) -> None:
        self._validation_steps += 1

    def network_mode(self, training: bool) -> None:
        """The network was put back in training mode: after validation steps, that is where sd-scripts' validation
        ends, on every rank (v0.10 and v0.11 call ``unwrap_model(network).train()`` right after logging it)."""
        if training and self._validation_steps:
            self._validation_steps = 0
            self.validation_ended()

    def validation_ended(self) -> None:
        """Every rank, after each validation: the main process decides on the validation loss, every rank hears it.
        After a stop (known alike on every rank) the validations sd-scripts still runs before leaving are not counted."""
        if not self.opts.watches_val_loss or self.stop_message is not None:
            return
        message = self._decided_on_main(self.accelerator, "the validation loss", self.current_step,
                                        lambda: self._validation(self.args))
        if message:
            self.stop_message = message
            # leaves kohya's step loop at this step; the epoch-end sample hook then raises EarlyStopped
            self.args.max_train_steps = self.current_step

    def checkpoint_saved(self, path: str, metadata: dict | None, dtype: Any) -> None:
        """kohya wrote a checkpoint (every rank calls; the main process records it)."""
        if not self.is_main or self.best is None or self.best.saving_own:
            return
        cum, name = self.step_offset + self.current_step, Path(path).name
        changed = self.board.set_checkpoint(cum, name)
        for r in self.board.mark_overwritten(name, cum, self.best.held, self.best.path.name):
            changed = True
            messages.say(f"{name} was written again at cumulative step {cum} (sd-scripts restarts its step count after "
                         f"--resume): the evaluation at cumulative step {r['cum_step']} scored other weights; "
                         f"{r['checkpoint_overwritten'].split('; ', 1)[1]}")
        if self.best.checkpoint_saved(path, metadata, dtype, self.current_step) is not None or changed:
            self._save_records()

    def finish_after_stop(self, stop: EarlyStopped) -> None:
        """The tail of ``train()`` that an early stop skipped: trackers closed, end state, the final save."""
        self.surface.finish_after_stop(self.args, self, stop)

    def end(self, stopped_early: bool) -> None:
        """After the final save (trackers already closed), and on an exception."""
        if self.evaluator is not None:
            self.evaluator.close()
        if not self.is_main or self.board is None:
            return
        if self.record is not None:
            self.record["finished"] = time.time()
        if self.opts.watches_val_loss and not self.val_losses:
            messages.say("--consistency_monitor watched the validation loss, but sd-scripts logged none: give --validation_split "
                         "(or validation_split in the dataset config) and --logging_dir")
        self._save_records()
        messages.say(messages.fit_end(self.board.rows, self.board.best(), self.best.outcome(),
                                      self.stop_message if stopped_early else None, self.write_errors))

    # -- one evaluation, main process ----------------------------------------------------------------
    def _rank_sync(self, accelerator: Any) -> RankSync:
        """How the ranks agree (decided once, alike on every rank; see kohya_ext.training.distributed)."""
        if self.ranks is None:
            self.ranks = rank_sync(accelerator)
            if self.ranks.world > 1 and self.is_main:
                messages.say(self.ranks.describe())
        return self.ranks

    def _decided_on_main(self, accelerator: Any, what: str, step: int, decide: Callable[[], str | None]) -> str | None:
        """``decide()`` on the main process, its stop message (or None) broadcast to every rank."""
        decision = None
        if self.is_main:
            try:
                decision = decide()
            except Exception as e:  # the other ranks wait in the broadcast: always reach it
                logger.exception("kohya-ext: recording %s at step %d failed, training goes on: %s: %s",
                                 what, step, type(e).__name__, e)
        return self._rank_sync(accelerator).broadcast(decision)

    def _start_trackers(self, accelerator: Any, args: Any) -> None:
        self.trackers = Trackers(accelerator)
        self.trackers.setup(self.opts.as_config())
        tb = self.trackers.tensorboard_dir
        self.record = {
            "format": "kohya-ext-run", "output_dir": str(Path(args.output_dir).resolve()),
            "output_name": getattr(args, "output_name", None), "tensorboard_dir": None if tb is None else str(Path(tb).resolve()),
            "log_with": getattr(args, "log_with", None), "prompts": str(self.prompt_file), "started": time.time(),
            "options": self.opts.as_config(), "best": None, "stopped": None,
        }

    def _evaluate(self, accelerator, args, kind, epoch, global_step, cum, render_dir, seconds, error) -> str | None:
        if self.trackers is None:
            self._start_trackers(accelerator, args)
        ev = self.evaluator.score(render_dir, seconds, error, cum)
        row, log_epoch = ev.row, epoch if epoch is not None else max(1, self.epoch)
        row.update(kohya_step=global_step, epoch=log_epoch, segment=self.segment, trigger=kind,
                   checkpoint=self._checkpoint_for(args, kind, epoch, global_step))
        eligible = False
        last = next((v for v in reversed(self.val_losses) if v["cum_step"] <= cum), None)  # validation runs after us
        if last is not None:
            row.update(val_loss=last["value"], val_loss_step=last["kohya_step"])
        if ev.ok:
            best = self.board.best()
            eligible = self.best.crown(row, None if best is None else best["score"])
            if eligible and self.val_stopping is not None and last is not None and \
                    last["value"] > min(v["value"] for v in self.val_losses) * (1 + self.opts.val_loss_slack):
                eligible = row["is_best"] = False
                row["val_loss_diverging"] = True
            if row.get("device_note"):
                messages.say(f"step {global_step}: {row['device_note']}")
            self.trackers.log_scalars(ev.scalars, global_step, log_epoch)
            if ev.grid:
                self._log_grid(ev.grid, global_step, log_epoch, row["score"])
            messages.say(messages.evaluation(global_step, kind, row, self.opts.memorization_max))
        else:
            messages.say(f"evaluation at step {global_step} failed, training goes on: {row['error']}")
        stop = self.stopping.update(row, eligible, alone=self.val_stopping is None)
        if stop is None and self.val_stopping is not None and self.stopping.exhausted and self.val_stopping.exhausted:
            stop = self._neither_improved()
            row.update(stop=True, stop_reason="patience_exhausted", message=stop)
        row = self.board.append(row)
        if row.get("is_best"):
            self.best.keep(row, global_step, self.network)
            self.trackers.summary({"consistency/best_score": row["score"], "consistency/best_step": global_step,
                                   "consistency/best_cum_step": cum, "consistency/best_checkpoint": row.get("checkpoint")})
        if stop:
            messages.say(f"early stop at step {global_step}: {stop}")
            self.trackers.summary({"consistency/stopped_at_step": global_step, "consistency/stop_reason": row["stop_reason"]})
            self.record["stopped"] = {"kohya_step": global_step, "cum_step": cum, "reason": row["stop_reason"], "message": stop}
        self.trackers.flush()
        self._save_records()
        return stop

    def _validation(self, args: Any) -> str | None:
        """Main process, after sd-scripts' validation at this step: record it, and decide on it."""
        step, cum = self.current_step, self.step_offset + self.current_step
        v = next((v for v in reversed(self.val_losses) if v["cum_step"] == cum), None)
        if self.trackers is None:
            self._start_trackers(self.accelerator, args)
        if v is None:
            messages.say(f"step {step}: sd-scripts validated but logged no {' or '.join(VAL_LOSS_KEYS)}: not counted")
            return None
        finite = math.isfinite(v["value"])
        if self.val_stopping is not None:  # both: the validation loss's own patience; a stop needs both exhausted
            self.val_stopping.update({}, finite, value=v["value"], alone=False)
            stop = self._neither_improved() if self.stopping.exhausted and self.val_stopping.exhausted else None
        else:  # val_loss alone: every validation is an evaluation
            saved = self.last_save if self.last_save and self.last_save["global_step"] == step else None
            row = {"status": "ok", "cum_step": cum, "kohya_step": step, "epoch": max(1, self.epoch), "segment": self.segment,
                   "trigger": "validation" if v["key"].endswith("step_average") else "epoch_validation",
                   "checkpoint": None if saved is None else Path(saved["path"]).name, "val_loss": v["value"],
                   "val_loss_step": step, "time": time.time()}
            best = self.board.best()
            row["is_best"] = finite and (best is None or v["value"] < best["val_loss"])
            stop = self.stopping.update(row, finite, value=v["value"])
            row = self.board.append(row)
            messages.say(f"step {step}: validation loss {v['value']:.4f}" + (" - new best" if row["is_best"] else ""))
            if row["is_best"]:
                self.best.keep(row, step, self.network)
        if stop:
            messages.say(f"early stop at step {step}: {stop}")
            self.trackers.summary({"consistency/stopped_at_step": step, "consistency/stop_reason": "patience_exhausted"})
            self.record["stopped"] = {"kohya_step": step, "cum_step": cum, "reason": "patience_exhausted", "message": stop}
        self._save_records()
        return stop

    def _neither_improved(self) -> str:
        c, v = self.stopping.state, self.val_stopping.state
        return (f"neither consistency/score (best {c.best:.4f}, {c.wait} evaluations without improvement) nor loss/validation "
                f"(best {v.best:.4f}, {v.wait} validations without improvement) improved by more than "
                f"{self.stopping.cfg.min_delta:g} for {self.stopping.cfg.patience} of its evaluations")

    def _log_grid(self, grid: str, global_step: int, epoch: int, score: float) -> None:
        from PIL import Image

        try:
            with Image.open(grid) as g:
                self.trackers.log_image("consistency/landmarks", g.convert("RGB"), global_step, epoch,
                                        caption=f"step {global_step} score {score:.4f}")
        except OSError as e:
            logger.warning("kohya-ext: cannot read %s: %s", grid, e)

    def _checkpoint_for(self, args, kind, epoch, global_step) -> str | None:
        ext = "." + getattr(args, "save_model_as", "safetensors")
        which = decisions.checkpoint_kind(kind, self.surface.step_save_due(args, global_step))
        if which == "step":
            return self.surface.step_ckpt_name(args, ext, global_step)
        if which == "epoch":
            return self.surface.epoch_ckpt_name(args, ext, epoch)
        return self.surface.last_ckpt_name(args, ext) if which == "last" else None

    # -- the records: every write guarded, every failure kept for the end line -------------------------
    def _write(self, path: Path, write: Callable[[], Any]) -> None:
        try:
            write()
            self.write_errors.pop(path.name, None)
        except Exception as e:  # a full disk or a read-only folder must not end the training
            if path.name not in self.write_errors:
                messages.say(f"cannot write {path} ({type(e).__name__}: {e}); training goes on, the file is retried "
                             f"at the next evaluation: free some space or fix its folder's permissions")
            self.write_errors[path.name] = f"{type(e).__name__}: {e}"

    def _save_records(self) -> None:
        best = summary(self.board.best())
        self.board.best_file = self.best.outcome()
        self._write(self.board.json_path, self.board.write)
        if self.record is not None:
            self.record.update(best=best, best_file=self.board.best_file, write_errors=dict(self.write_errors) or None,
                               validation=self.val_losses or None,
                               tracker_errors=dict(self.trackers.failed) or None)
            self._write(self.folder / RUN_RECORD,
                        lambda: atomic_write_text(self.folder / RUN_RECORD, dumps_json(self.record, indent=1, default=str)))

    # -- resume: fields from kohya's state folder, then the files reconciled --------------------------
    def state_dict(self) -> dict:
        """What a ``--save_state`` folder must hold for a resume to continue this run's history."""
        return {"cum_step": self.step_offset + self.current_step, "segment": self.segment, "epoch": self.epoch,
                "evaluations": [r["eval"] for r in self.board.rows] if self.board is not None else [],
                "best": None if self.board is None else summary(self.board.best()),
                "early_stopping": self.stopping.state_dict(), "best_checkpoint": self.best.state_dict(),
                "val_early_stopping": None if self.val_stopping is None else self.val_stopping.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Fields only; a resume's stop is lifted (resuming asks for more training)."""
        self.step_offset = int(state["cum_step"])
        self.segment = int(state.get("segment", 0)) + 1
        self.epoch = int(state.get("epoch", 0))
        lifted = {"stopped": False, "reason": "none", "message": ""}
        if isinstance(state.get("early_stopping"), dict):
            self.stopping.load_state_dict({**state["early_stopping"], **lifted})
        if self.val_stopping is not None and isinstance(state.get("val_early_stopping"), dict):
            self.val_stopping.load_state_dict({**state["val_early_stopping"], **lifted})
        if isinstance(state.get("best_checkpoint"), dict):
            self.best.load_state_dict(state["best_checkpoint"])

    def reconcile_after_resume(self, state: dict) -> str:
        """Main process: keep the resumed lineage's history, set the rest aside, make ``-best`` hold its best."""
        try:
            old = Leaderboard.load(self.folder)
        except (OSError, ValueError) as e:  # never break kohya's resume over our history
            return f"cannot read the consistency history ({e}): continuing from cumulative step {self.step_offset} with a fresh one"
        kept, abandoned = resume.split_rows(old.rows, state)
        self.board.rows = kept
        self.board.abandoned = old.abandoned + [{**r, "is_best": False} for r in abandoned]
        best = self.board.best()
        if "early_stopping" not in state or len(kept) != len(state.get("evaluations") or []):
            self.stopping.state = resume.replay(kept, self.stopping.cfg)  # older side file, or an evaluation after the save
        aside, recopy = resume.reconcile_best_file(self.best.path, best, Path(self.args.output_dir))
        if aside is not None:
            messages.say(f"{self.best.path.name} did not hold the kept history's best: moved to {aside.name}")
            self.best.held = None
            if recopy is not None:
                self.best.copy_from(str(recopy), best)
        elif best is not None and resume.held_step(self.best.path) == str(best["cum_step"]):
            self.best.held = {**summary(best), "file": self.best.path.name}
        self._save_records()
        return messages.resumed(kept, abandoned, best, self.stopping.state.wait if self.stopping.cfg.active else None)

    def _on_save_state(self, models: Any, weights: Any, output_dir: str) -> None:
        """accelerate's save-state pre hook: our side file next to kohya's train_state.json."""
        if not self.is_main or self.board is None:
            return
        try:
            resume.write_side_file(output_dir, self.state_dict())
        except Exception as e:  # never break kohya's state save
            messages.say(f"writing {resume.SIDE_FILE} into {output_dir} failed ({e}): a --resume from it starts a fresh history")

    def _on_load_state(self, models: Any, input_dir: str) -> None:
        """accelerate's load-state pre hook (every rank)."""
        side = resume.read_side_file(input_dir)
        if side is None:
            if self.is_main:
                messages.say(f"{input_dir} holds no {resume.SIDE_FILE} (saved without kohya-ext): the consistency history "
                             "starts afresh at cumulative step 0")
            return
        try:
            self.load_state_dict(side)
            if self.is_main:
                note = self.reconcile_after_resume(side)
                messages.say(f"resumed from {input_dir} at cumulative step {self.step_offset}: {note}")
        except Exception as e:  # never break kohya's resume over our history
            logger.exception("kohya-ext: reading %s from %s failed, training resumes with a fresh history: %s: %s",
                             resume.SIDE_FILE, input_dir, type(e).__name__, e)
