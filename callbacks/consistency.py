"""Consistency evaluation inside the training loop: render, score (isolated), log, rank, stop.

Order at one evaluation, on every rank: render the evaluation prompts through the
family's own sampler (prompts split across ranks, images land in a shadow folder),
barrier; then on the main process: collect the images, score them in the worker
process (deadline), write the leaderboard, log to the trackers, keep the best copy;
then the stop decision is broadcast so that every rank acts on the same step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kohya_ext.errors import KohyaExtError
from kohya_ext.io_utils import atomic_write_text, dumps_json
from kohya_ext.patches.sample_names import parse_sample_name
from kohya_ext.ratios import FORMULA_VERSION
from kohya_ext.training import best as bestcopy
from kohya_ext.training import decisions, messages, resume, trackers
from kohya_ext.training.early_stop import EarlyStopState, StopConfig, StopReason, decide
from kohya_ext.training.leaderboard import FOLDER, RUN_RECORD, Leaderboard
from kohya_ext.training.options import ConsistencyOptions
from kohya_ext.training.prompts import (assign_characters, default_prompts, fix_prompts, inherit_sampler_settings,
                                        load_prompt_file, parse_resolution, write_prompt_file)
from kohya_ext.training.ranks import RankSync, rank_sync
from kohya_ext.training.devices import choose_device
from kohya_ext.training.worker import ScoringWorker

from .base import Callback

logger = logging.getLogger("kohya_ext")


class EarlyStopped(Exception):
    """Raised on every rank at the same point to leave ``train()`` after an early stop."""

    def __init__(self, global_step: int, message: str):
        super().__init__(message)
        self.global_step = global_step
        self.message = message


class ConsistencyCallback(Callback):
    def __init__(self, opts: ConsistencyOptions, surface: Any):
        self.opts = opts
        self.surface = surface
        self.stop_cfg = StopConfig(opts.patience, opts.min_delta, opts.warmup, opts.target)
        self.es = EarlyStopState()
        self.is_main = True
        self.folder = Path(".")
        self.prompt_file = Path(".")
        self.worker: ScoringWorker | None = None
        self.board: Leaderboard | None = None
        self.network: Any = None
        self.epoch = 0
        self.step_offset = 0  # cumulative steps before this training segment (--resume)
        self.segment = 0  # 0, then +1 at every resume
        self.current_step = 0
        self.evaluated_steps: set[int] = set()
        self.last_save: dict | None = None
        self.character_names: list[str] = []
        self.prompt_characters: list[str] | None = None  # per prompt, with several characters
        self.pending_best: dict | None = None
        self.stop_message: str | None = None
        self._trackers_ready = False
        self._own_save = False
        self.args: Any = None
        self.run_record: dict | None = None
        self.accelerator: Any = None
        self.ranks: RankSync | None = None

    # -- setup -------------------------------------------------------------------------------
    def reference_source(self, args: Any) -> str:
        if self.opts.reference:
            return self.opts.reference
        src = getattr(args, "dataset_config", None) or getattr(args, "train_data_dir", None)
        if not src:
            raise KohyaExtError("--consistency needs a reference: give --consistency_reference, --train_data_dir or --dataset_config")
        return str(src)

    def characters(self, args: Any) -> list[str]:
        """The class tokens of the reference when it holds several characters, else []."""
        ref = self.reference_source(args)
        if ref.endswith(".json"):  # a ref.json is one character
            return []
        from kohya_ext.datasets import resolve_image_groups

        try:
            names = [g.name for g in resolve_image_groups(ref)]
        except KohyaExtError:
            return []  # the worker reports an unusable reference with its own message
        return names if len(names) > 1 else []

    def _prompts(self, args: Any) -> list[dict]:
        if self.opts.prompts:
            prompts = load_prompt_file(self.opts.prompts)
        else:
            prompts = inherit_sampler_settings(default_prompts(args, self.reference_source(args), self.opts.num_prompts),
                                               getattr(args, "sample_prompts", None))
        size = parse_resolution(getattr(args, "resolution", None))
        if self.opts.size:
            size = (self.opts.size, self.opts.size)
        return fix_prompts(prompts, self.opts.seed, size)

    def on_fit_start(self, args: Any, is_main: bool) -> None:
        """Prompts on every rank; the scoring worker and its reference check on the main one."""
        self.is_main = is_main
        self.args = args
        if not getattr(args, "output_dir", None):
            raise KohyaExtError("--consistency needs --output_dir (evaluations are kept under output_dir/consistency)")
        self.folder = Path(args.output_dir) / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        prompts = self._prompts(args)
        self.character_names = self.characters(args)
        self.prompt_characters = assign_characters(prompts, self.character_names) if self.character_names else None
        self.prompt_file = write_prompt_file(prompts, self.folder / "prompts.json")
        self.n_prompts = len(prompts)
        if not is_main:
            return
        self.board = Leaderboard(self.folder)  # a fresh run starts a fresh history (resume: see load_state)
        self.board.meta = {"output_name": getattr(args, "output_name", None), "options": self.opts.as_config()}
        cfg = {"reference": self.reference_source(args), "backend": self.opts.backend, "device": self.opts.device,
               "scorer": self.opts.scorer, "threads": max(1, (os.cpu_count() or 2) // 4),
               "characters": sorted(set(self.prompt_characters)) if self.prompt_characters else None}
        self.worker = ScoringWorker(cfg, self.deadline(args))
        self.worker.start()
        t0 = time.monotonic()
        info = self.worker.wait_ready(max(1800.0, self.opts.timeout))
        messages.say(messages.reference_ready(time.monotonic() - t0, info, self.n_prompts, self.deadline(args), self.prompt_characters))

    def deadline(self, args: Any) -> float:
        """The scoring deadline, kept under half of the collective timeout other ranks wait on."""
        minutes = getattr(args, "ddp_timeout", None)
        collective = float(minutes) * 60 if minutes else 1800.0
        return min(self.opts.timeout, 0.5 * collective)

    def on_network_ready(self, accelerator: Any, args: Any, network: Any) -> None:
        """Also registers our state hooks: kohya registers its own, then loads ``--resume``, later."""
        self.accelerator = accelerator
        self.network = network
        self._rank_sync(accelerator)
        if hasattr(accelerator, "register_save_state_pre_hook"):
            accelerator.register_save_state_pre_hook(self._on_save_state)
            accelerator.register_load_state_pre_hook(self._on_load_state)

    def on_epoch_start(self) -> None:
        self.epoch += 1

    def _rank_sync(self, accelerator: Any) -> RankSync:
        """How the ranks agree (decided once, alike on every rank; see kohya_ext.training.ranks)."""
        if self.ranks is None:
            self.ranks = rank_sync(accelerator)
            if self.ranks.world > 1 and self.is_main:
                messages.say(self.ranks.describe())
        return self.ranks

    # -- the sample hook -----------------------------------------------------------------------
    def check_stop(self, epoch: int | None, global_step: int) -> None:
        """At the epoch end after an early stop: leave train() on every rank."""
        if self.stop_message is not None and epoch is not None:
            raise EarlyStopped(global_step, self.stop_message)

    def trigger(self, args: Any, epoch: int | None, global_step: int) -> str | None:
        return decisions.evaluation_trigger(
            global_step, epoch, stopped=self.stop_message is not None, every_n_steps=self.opts.every_n_steps,
            step_save_due=self.surface.step_save_due(args, global_step),
            epoch_save_due=epoch is not None and self.surface.epoch_save_due(args, epoch),
            final=self.surface.is_final(args, global_step), already_evaluated=global_step in self.evaluated_steps)

    def on_sample_point(self, accelerator: Any, args: Any, epoch: int | None, global_step: int, render: Any) -> None:
        self.current_step = global_step
        if epoch is not None:
            self.epoch = epoch
        if self.is_main and not self._trackers_ready:
            self._trackers_ready = True
            self._start_trackers(accelerator, args)
        kind = self.trigger(args, epoch, global_step)
        if kind is None:
            return
        self.evaluated_steps.add(global_step)
        cum = self.step_offset + global_step
        render_dir = self.folder / "_render" / f"{cum:08d}"
        t0 = time.monotonic()
        render_error = None
        try:
            render(self.prompt_file, render_dir)
        except Exception as e:  # a sampler failure is an evaluation failure, not a training failure
            render_error = f"rendering failed: {type(e).__name__}: {e}"
        ranks = self._rank_sync(accelerator)
        ranks.barrier(accelerator)  # every rank's images are written
        t_render = time.monotonic() - t0
        decision = None
        if self.is_main:
            try:
                decision = self._score_and_record(accelerator, args, kind, epoch, global_step, cum, render_dir, t_render, render_error)
            except Exception as e:  # the other ranks wait in the broadcast: always reach it
                logger.exception("kohya-ext: recording the evaluation at step %d failed, training goes on: %s: %s",
                                 global_step, type(e).__name__, e)
        message = ranks.broadcast(decision)
        if message:
            self.stop_message = message
            if epoch is None:
                # kohya breaks its step loop once global_step >= max_train_steps; the epoch-end
                # hook then raises EarlyStopped, so no further optimizer step runs.
                args.max_train_steps = global_step
            else:
                raise EarlyStopped(global_step, message)

    # -- main process --------------------------------------------------------------------------
    def _start_trackers(self, accelerator: Any, args: Any) -> None:
        tb_dir = None
        for t in getattr(accelerator, "trackers", []) or []:
            if t.name == "tensorboard":
                tb_dir = getattr(getattr(t, "writer", None), "log_dir", None) or getattr(t, "logging_dir", None)
        trackers.add_custom_scalars(accelerator)
        trackers.wandb_config(accelerator, self.opts.as_config())
        trackers.wandb_step_metric(accelerator)
        self.run_record = {
            "format": "kohya-ext-run", "output_dir": str(Path(args.output_dir).resolve()),
            "output_name": getattr(args, "output_name", None), "tensorboard_dir": None if tb_dir is None else str(Path(tb_dir).resolve()),
            "log_with": getattr(args, "log_with", None), "prompts": str(self.prompt_file), "started": time.time(),
            "options": self.opts.as_config(), "best": None, "stopped": None,
        }
        self._write_run_record()

    def _write_run_record(self) -> None:
        if getattr(self, "run_record", None) is not None:
            atomic_write_text(self.folder / RUN_RECORD, dumps_json(self.run_record, indent=1, default=str))

    def _collect(self, render_dir: Path, eval_dir: Path) -> list[Path]:
        """Move the rendered images (every rank's) into the evaluation folder as NN.png."""
        eval_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for p in sorted((render_dir / "sample").glob("*.png")):
            name = parse_sample_name(p)  # kohya names them {num}_{i:02d}_{YYYYmmddHHMMSS}[_{seed}].png
            idx = name.prompt_index if name else len(out)
            dst = eval_dir / f"{idx:02d}.png"
            shutil.move(str(p), dst)
            out.append(dst)
        shutil.rmtree(render_dir, ignore_errors=True)
        try:
            render_dir.parent.rmdir()  # only when empty
        except OSError:
            pass
        return sorted(out)

    def _score_and_record(self, accelerator, args, kind, epoch, global_step, cum, render_dir, t_render, render_error) -> str | None:
        eval_dir = self.folder / f"eval-{cum:08d}"
        paths = self._collect(render_dir, eval_dir)
        t0 = time.monotonic()
        if render_error:
            result = {"ok": False, "error": render_error}
        elif not paths:
            result = {"ok": False, "error": f"the sampler wrote no images for {self.prompt_file}"}
        else:
            job = {"paths": [str(p) for p in paths], "out_dir": str(eval_dir), "cum_step": cum}
            if self.prompt_characters:  # images are NN.png, NN = prompt index
                job["characters"] = [self.prompt_characters[int(p.stem)] for p in paths]
            job["device"], job["device_note"] = choose_device(self.opts.device)
            result = self.worker.score(job)
        t_score = time.monotonic() - t0
        log_epoch = epoch if epoch is not None else max(1, self.epoch)
        row: dict[str, Any] = {
            "status": "ok" if result["ok"] else "failed", "cum_step": cum, "kohya_step": global_step, "epoch": log_epoch,
            "segment": self.segment,
            "trigger": kind, "checkpoint": self._checkpoint_for(args, kind, epoch, global_step),
            "images_dir": eval_dir.name, "seconds_render": round(t_render, 3), "seconds_score": round(t_score, 3),
            "time": time.time(), "formula_version": FORMULA_VERSION,
        }
        if not result["ok"]:
            row["error"] = result["error"]
            messages.say(f"evaluation at step {global_step} failed, training goes on: {result['error']}")
            score, eligible = None, False
        else:
            score, mem, prev = result["score"], result.get("memorization"), self.board.best()
            memorized, eligible, is_best = decisions.crown(score, mem, self.opts.memorization_max, None if prev is None else prev["score"])
            row.update(score=score, detection_rate=result["detection_rate"], memorization=mem, memorized=memorized, is_best=is_best,
                       backend=result.get("backend"), score_version=result.get("score_version"), scoring_device=result.get("device"))
            if result.get("device_note"):
                row["device_note"] = result["device_note"]
                messages.say(f"step {global_step}: {result['device_note']}")
            for name, r in (result.get("ratios") or {}).items():
                row[f"{name}_diff_pct"], row[f"{name}_z"] = r.get("diff_pct"), r.get("z")
            if result.get("characters"):
                row["characters"] = ";".join(f"{c}={v['score']:.6f}" for c, v in result["characters"].items())
                row["character_details"] = result["characters"]
            trackers.log_scalars(accelerator, result["scalars"], global_step, log_epoch)
            if result.get("grid"):
                try:
                    from PIL import Image

                    with Image.open(result["grid"]) as g:
                        trackers.log_grid(accelerator, g.convert("RGB"), "consistency/landmarks", global_step, log_epoch,
                                          caption=f"step {global_step} score {score:.4f}")
                except OSError as e:
                    logger.warning("kohya-ext: cannot read %s: %s", result["grid"], e)
            messages.say(messages.evaluation(global_step, kind, row, self.opts.memorization_max))
        self.es, stop, reason, message = decide(self.es, score, self.stop_cfg, eligible)
        row.update(es_best=self.es.best, es_wait=self.es.wait, stop=stop, stop_reason=None if reason is StopReason.NONE else reason.value,
                   message=message)
        row = self.board.add(row)
        if row.get("is_best"):
            self._keep_best(args, row, global_step)
            trackers.wandb_summary(accelerator, {"consistency/best_score": row["score"], "consistency/best_step": global_step,
                                                 "consistency/best_cum_step": cum, "consistency/best_checkpoint": row.get("checkpoint")})
            self.run_record["best"] = {k: row.get(k) for k in ("eval", "cum_step", "kohya_step", "epoch", "checkpoint", "score")}
        if stop:
            messages.say(f"early stop at step {global_step}: {message}")
            trackers.wandb_summary(accelerator, {"consistency/stopped_at_step": global_step, "consistency/stop_reason": reason.value})
            self.run_record["stopped"] = {"kohya_step": global_step, "cum_step": cum, "reason": reason.value, "message": message}
        trackers.flush(accelerator)
        self._write_run_record()
        return message if stop else None

    def _checkpoint_for(self, args, kind, epoch, global_step) -> str | None:
        ext = "." + getattr(args, "save_model_as", "safetensors")
        which = decisions.checkpoint_kind(kind, self.surface.step_save_due(args, global_step))
        if which == "step":
            return self.surface.step_ckpt_name(args, ext, global_step)
        if which == "epoch":
            return self.surface.epoch_ckpt_name(args, ext, epoch)
        return self.surface.last_ckpt_name(args, ext) if which == "last" else None

    # -- the best copy -------------------------------------------------------------------------
    def best_path(self, args: Any) -> Path:
        ext = "." + getattr(args, "save_model_as", "safetensors")
        return Path(args.output_dir) / bestcopy.best_name(getattr(args, "output_name", None), ext)

    def _keep_best(self, args: Any, row: dict, global_step: int) -> None:
        """Copy exactly the evaluated weights: the file kohya already wrote for this step, the
        one it writes right after this hook, or (no kohya save at this step) a save of our own."""
        source = decisions.best_copy_source(global_step, None if self.last_save is None else self.last_save["global_step"],
                                            row.get("checkpoint"))
        if source is decisions.BestCopy.COPY_SAVED:
            self._copy_best(args, self.last_save["path"], row)
        elif source is decisions.BestCopy.AWAIT_SAVE:
            self.pending_best = {"row": row, "global_step": global_step}
        else:
            self._save_own_best(args, row, global_step)

    def _copy_best(self, args: Any, src: str, row: dict) -> None:
        dst = self.best_path(args)
        try:
            bestcopy.copy_with_metadata(src, dst, bestcopy.best_metadata(row))
            messages.say(f"best checkpoint so far: {Path(src).name} (score {row['score']:.4f}) copied to {dst.name}")
        except Exception as e:
            logger.warning("kohya-ext: copying the best checkpoint %s failed: %s", src, e)

    def _save_own_best(self, args: Any, row: dict, global_step: int) -> None:
        if self.network is None or not hasattr(self.network, "save_weights"):
            logger.warning("kohya-ext: no network to save the best weights from at step %d", global_step)
            return
        dst = self.best_path(args)
        meta = dict(self.last_save["metadata"]) if self.last_save and self.last_save.get("metadata") else {}
        meta.update({"ss_steps": str(global_step), "ss_epoch": str(row.get("epoch"))})
        meta.update(bestcopy.best_metadata(row))
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=dst.suffix)
        os.close(fd)
        self._own_save = True
        try:
            self.network.save_weights(tmp, self.last_save["dtype"] if self.last_save else None, meta)
            os.replace(tmp, dst)
            messages.say(f"best weights so far (step {global_step}, score {row['score']:.4f}) saved to {dst.name}")
        except Exception as e:
            Path(tmp).unlink(missing_ok=True)
            logger.warning("kohya-ext: saving the best weights failed: %s", e)
        finally:
            self._own_save = False

    def on_checkpoint_saved(self, path: str, metadata: dict | None, dtype: Any) -> None:
        if self._own_save or not self.is_main:
            return
        self.last_save = {"path": str(path), "metadata": dict(metadata or {}), "dtype": dtype, "global_step": self.current_step}
        cum = self.step_offset + self.current_step
        if self.board is not None and any(r.get("cum_step") == cum and not r.get("checkpoint") for r in self.board.rows):
            self.board.set_checkpoint(cum, Path(path).name)
        if self.pending_best is not None and self.pending_best["global_step"] == self.current_step:
            row, self.pending_best = self.pending_best["row"], None
            self._copy_best(self.args, path, row)

    # -- end -----------------------------------------------------------------------------------
    def on_fit_end(self, accelerator: Any, stopped_early: bool) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if not self.is_main or self.board is None:
            return
        messages.say(messages.fit_end(self.board.rows, self.board.best(), self.best_path(self.args).name,
                                      self.stop_message if stopped_early else None))
        if getattr(self, "run_record", None) is not None:
            self.run_record["finished"] = time.time()
            self._write_run_record()

    # -- state (resume) ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a ``--save_state`` folder must hold for a resume to continue this run's history:
        the cumulative step, the segment and epoch, and which evaluations belong to these weights
        (the early-stopping state is replayed from them on load). Written as kohya_ext_consistency.json
        into kohya's state folder by accelerate's save-state pre hook."""
        best = None if self.board is None else self.board.best()
        return {"cum_step": self.step_offset + self.current_step, "segment": self.segment, "epoch": self.epoch,
                "evaluations": [r["eval"] for r in self.board.rows] if self.board is not None else [],
                "best": None if best is None else {k: best.get(k) for k in ("eval", "cum_step", "kohya_step", "checkpoint", "score")}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved ``state_dict()`` (every rank): the cumulative step, the history
        of the resumed lineage, the best score and the patience count."""
        self.step_offset = int(state["cum_step"])
        self.segment = int(state.get("segment", 0)) + 1
        self.epoch = int(state.get("epoch", 0))
        if not self.is_main:
            return
        try:
            old = Leaderboard.load(self.folder)
        except (OSError, ValueError) as e:  # never break kohya's resume over our history
            messages.say(f"cannot read the consistency history ({e}): continuing from cumulative step {self.step_offset} with a fresh one")
            return
        kept, abandoned = resume.split_rows(old.rows, state)
        self.board.rows = kept
        self.board.abandoned = old.abandoned + [{**r, "is_best": False} for r in abandoned]
        best = self.board.best()
        self.es = resume.replay(kept, self.stop_cfg)
        self.board.write()
        self._check_best_copy(best)
        self.resume_note = messages.resumed(kept, abandoned, best, self.es.wait if self.stop_cfg.active else None)

    def _on_save_state(self, models: Any, weights: Any, output_dir: str) -> None:
        """accelerate's save-state pre hook: our side file next to kohya's train_state.json."""
        if not self.is_main or self.board is None:
            return
        try:
            resume.write_side_file(output_dir, self.state_dict())
        except Exception as e:  # never break kohya's state save
            logger.warning("kohya-ext: writing %s into %s failed: %s", resume.SIDE_FILE, output_dir, e)

    def _on_load_state(self, models: Any, input_dir: str) -> None:
        """accelerate's load-state pre hook (every rank)."""
        side = resume.read_side_file(input_dir)
        if side is None:
            if self.is_main:
                messages.say(f"{input_dir} holds no {resume.SIDE_FILE} (saved without kohya-ext): the consistency history starts afresh "
                     "at cumulative step 0")
            return
        self.resume_note = ""
        self.load_state_dict(side)
        if self.is_main:
            messages.say(f"resumed from {input_dir} at cumulative step {self.step_offset}: {self.resume_note}")

    def _check_best_copy(self, best: dict | None) -> None:
        """After a resume the ``-best`` file must hold the kept history's best evaluation. If it
        holds one from the replaced continuation, it is moved aside to ``-best-abandoned``."""
        dst = self.best_path(self.args)
        if not dst.exists():
            return
        try:
            step = bestcopy.read_metadata(dst).get(bestcopy.META_STEP) if dst.suffix == ".safetensors" else \
                json.loads(dst.with_name(dst.name + ".json").read_text(encoding="utf-8")).get(bestcopy.META_STEP)
        except Exception:
            step = None
        if not decisions.best_copy_stale(best, step):
            return
        aside = dst.with_name(dst.stem + "-abandoned" + dst.suffix)
        os.replace(dst, aside)
        messages.say(f"{dst.name} held cumulative step {step}, not the kept history's best: moved to {aside.name}")
        if best is not None and best.get("checkpoint"):
            src = Path(self.args.output_dir) / best["checkpoint"]
            if src.exists() and src.suffix == ".safetensors" and bestcopy.read_metadata(src).get("ss_steps") == str(best["kohya_step"]):
                self._copy_best(self.args, str(src), best)
