"""The evaluator: render the fixed prompts with the weights being trained, score the images in the
isolated worker, and emit one evaluation record (a leaderboard row, its scalars and its grid)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kohya_ext.datasets import resolve_image_groups
from kohya_ext.errors import KohyaExtError
from kohya_ext.patches.sample_names import parse_sample_name
from kohya_ext.ratios import FORMULA_VERSION
from kohya_ext.training import messages
from kohya_ext.training.devices import choose_device
from kohya_ext.training.options import ConsistencyOptions
from kohya_ext.training.prompts import (assign_characters, default_prompts, fix_prompts, inherit_sampler_settings,
                                        load_prompt_file, parse_resolution, write_prompt_file)
from kohya_ext.training.worker import ScoringWorker


@dataclass
class Evaluation:
    """One evaluation: its leaderboard row (``score`` None when it failed), what goes to the trackers."""

    row: dict[str, Any]
    scalars: dict[str, float] = field(default_factory=dict)
    grid: str | None = None

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def reference_source(opts: ConsistencyOptions, args: Any) -> str:
    """``--consistency_reference``, else the training data sd-scripts reads."""
    if opts.reference:
        return opts.reference
    src = getattr(args, "dataset_config", None) or getattr(args, "train_data_dir", None)
    if not src:
        raise KohyaExtError("--consistency needs a reference: give --consistency_reference, --train_data_dir or --dataset_config")
    return str(src)


def character_names(reference: str) -> list[str]:
    """The class tokens of the reference when it holds several characters, else []."""
    if reference.endswith(".json"):  # a ref.json is one character
        return []
    try:
        names = [g.name for g in resolve_image_groups(reference)]
    except KohyaExtError:
        return []  # the worker reports an unusable reference with its own message
    return names if len(names) > 1 else []


class ConsistencyEvaluator:
    """Prompts on every rank; the scoring worker (and its reference check) on the main process."""

    def __init__(self, opts: ConsistencyOptions, folder: Path):
        self.opts = opts
        self.folder = folder
        self.prompt_file = folder / "prompts.json"
        self.prompt_characters: list[str] | None = None  # per prompt, with several characters
        self.worker: ScoringWorker | None = None

    def setup(self, args: Any, is_main: bool, deadline: float) -> None:
        reference = reference_source(self.opts, args)
        if self.opts.prompts:
            prompts = load_prompt_file(self.opts.prompts)
        else:
            prompts = inherit_sampler_settings(default_prompts(args, reference, self.opts.num_prompts),
                                               getattr(args, "sample_prompts", None))
        size = (self.opts.size, self.opts.size) if self.opts.size else parse_resolution(getattr(args, "resolution", None))
        prompts = fix_prompts(prompts, self.opts.seed, size)
        names = character_names(reference)
        self.prompt_characters = assign_characters(prompts, names) if names else None
        write_prompt_file(prompts, self.prompt_file)
        if not is_main:
            return
        cfg = {"reference": reference, "backend": self.opts.backend, "device": self.opts.device, "scorer": self.opts.scorer,
               "threads": max(1, (os.cpu_count() or 2) // 4),
               "characters": sorted(set(self.prompt_characters)) if self.prompt_characters else None}
        self.worker = ScoringWorker(cfg, deadline)
        self.worker.start()
        t0 = time.monotonic()
        info = self.worker.wait_ready(max(1800.0, self.opts.timeout))
        messages.say(messages.reference_ready(time.monotonic() - t0, info, len(prompts), deadline, self.prompt_characters))

    def render(self, render: Callable[[Path, Path], None], cum_step: int) -> tuple[Path, float, str | None]:
        """Every rank renders its share into a shadow folder: (folder, seconds, error or None)."""
        render_dir = self.folder / "_render" / f"{cum_step:08d}"
        t0 = time.monotonic()
        try:
            render(self.prompt_file, render_dir)
            error = None
        except Exception as e:  # a sampler failure is an evaluation failure, not a training failure
            error = f"rendering failed: {type(e).__name__}: {e}"
        return render_dir, time.monotonic() - t0, error

    def _collect(self, render_dir: Path, eval_dir: Path) -> list[Path]:
        """Move the rendered images (every rank's) into the evaluation folder as NN.png."""
        eval_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for p in sorted((render_dir / "sample").glob("*.png")):
            name = parse_sample_name(p)  # kohya names them {num}_{i:02d}_{YYYYmmddHHMMSS}[_{seed}].png
            dst = eval_dir / f"{name.prompt_index if name else len(out):02d}.png"
            shutil.move(str(p), dst)
            out.append(dst)
        shutil.rmtree(render_dir, ignore_errors=True)
        try:
            render_dir.parent.rmdir()  # only when empty
        except OSError:
            pass
        return sorted(out)

    def score(self, render_dir: Path, render_seconds: float, render_error: str | None, cum_step: int) -> Evaluation:
        """Main process: collect the images, score them (deadline), and the record of the outcome."""
        eval_dir = self.folder / f"eval-{cum_step:08d}"
        t0 = time.monotonic()
        try:
            paths = self._collect(render_dir, eval_dir)
        except OSError as e:
            paths, render_error = [], render_error or f"collecting the images failed: {type(e).__name__}: {e}"
        if render_error:
            result = {"ok": False, "error": render_error}
        elif not paths:
            result = {"ok": False, "error": f"the sampler wrote no images for {self.prompt_file}"}
        else:
            job = {"paths": [str(p) for p in paths], "out_dir": str(eval_dir), "cum_step": cum_step}
            if self.prompt_characters:  # images are NN.png, NN = prompt index
                job["characters"] = [self.prompt_characters[int(p.stem)] for p in paths]
            job["device"], job["device_note"] = choose_device(self.opts.device)
            result = self.worker.score(job)
        row: dict[str, Any] = {"status": "ok" if result["ok"] else "failed", "cum_step": cum_step, "images_dir": eval_dir.name,
                               "seconds_render": round(render_seconds, 3), "seconds_score": round(time.monotonic() - t0, 3),
                               "time": time.time(), "formula_version": FORMULA_VERSION}
        if not result["ok"]:
            return Evaluation({**row, "error": result["error"]})
        row.update(score=result["score"], detection_rate=result["detection_rate"], memorization=result.get("memorization"),
                   backend=result.get("backend"), score_version=result.get("score_version"), scoring_device=result.get("device"))
        if result.get("device_note"):
            row["device_note"] = result["device_note"]
        for name, r in (result.get("ratios") or {}).items():
            row[f"{name}_diff_pct"], row[f"{name}_z"] = r.get("diff_pct"), r.get("z")
        if result.get("characters"):
            row["characters"] = ";".join(f"{c}={v['score']:.6f}" for c, v in result["characters"].items())
            row["character_details"] = result["characters"]
        return Evaluation(row, result["scalars"], result.get("grid"))

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
