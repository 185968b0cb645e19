"""Stand-in for sd-scripts' library/train_util.py: the parts the network trainer loop uses.

Written from the behaviour described in docs (kohya-surface.md), not copied: config-file
merging, checkpoint names and rotation, tracker set-up, and the sampler's gating/naming.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from accelerate import Accelerator, InitProcessGroupKwargs, PartialState
from PIL import Image

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EPOCH_FILE_NAME = "{}-{:06d}"
STEP_FILE_NAME = "{}-step{:08d}"
DEFAULT_EPOCH_NAME = "epoch"
DEFAULT_STEP_NAME = "at"
DEFAULT_LAST_OUTPUT_NAME = "last"
LAST_STATE_NAME = "{}-state"


def verify_command_line_training_args(args: argparse.Namespace) -> None:
    pass


def read_config_from_file(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """TOML tables are flattened one level; the command line is parsed again on top of them
    (so it wins), and TOML values skip argparse's type checks."""
    if not args.config_file:
        return args
    path = args.config_file if args.config_file.endswith(".toml") else args.config_file + ".toml"
    if not os.path.exists(path):
        print(f"{path} not found.")
        sys.exit(1)
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    args = parser.parse_args(namespace=argparse.Namespace(**flat))
    args.config_file = os.path.splitext(args.config_file)[0]
    return args


def default_if_none(value, default):
    return default if value is None else value


def get_epoch_ckpt_name(args, ext, epoch_no):
    return EPOCH_FILE_NAME.format(default_if_none(args.output_name, DEFAULT_EPOCH_NAME), epoch_no) + ext


def get_step_ckpt_name(args, ext, step_no):
    return STEP_FILE_NAME.format(default_if_none(args.output_name, DEFAULT_STEP_NAME), step_no) + ext


def get_last_ckpt_name(args, ext):
    return default_if_none(args.output_name, DEFAULT_LAST_OUTPUT_NAME) + ext


def get_remove_epoch_no(args, epoch_no):
    if args.save_last_n_epochs is None:
        return None
    n = epoch_no - args.save_every_n_epochs * args.save_last_n_epochs
    return None if n < 0 else n


def get_remove_step_no(args, step_no):
    if args.save_last_n_steps is None:
        return None
    n = step_no - args.save_last_n_steps - 1
    n = n - (n % args.save_every_n_steps)
    return None if n < 0 else n


EPOCH_STATE_NAME = "{}-{:06d}-state"
STEP_STATE_NAME = "{}-step{:08d}-state"


def resume_from_local_or_hf_if_specified(accelerator, args) -> None:
    if args.resume:
        accelerator.load_state(args.resume)


def save_and_remove_state_on_epoch_end(args, accelerator, epoch_no) -> None:
    name = default_if_none(args.output_name, DEFAULT_EPOCH_NAME)
    os.makedirs(args.output_dir, exist_ok=True)
    accelerator.save_state(os.path.join(args.output_dir, EPOCH_STATE_NAME.format(name, epoch_no)))
    last_n = args.save_last_n_epochs_state or args.save_last_n_epochs
    if last_n is not None:
        old = os.path.join(args.output_dir, EPOCH_STATE_NAME.format(name, epoch_no - args.save_every_n_epochs * last_n))
        if os.path.exists(old):
            shutil.rmtree(old)


def save_and_remove_state_stepwise(args, accelerator, step_no) -> None:
    name = default_if_none(args.output_name, DEFAULT_STEP_NAME)
    os.makedirs(args.output_dir, exist_ok=True)
    accelerator.save_state(os.path.join(args.output_dir, STEP_STATE_NAME.format(name, step_no)))
    last_n = args.save_last_n_steps_state or args.save_last_n_steps
    if last_n is not None:
        n = step_no - last_n - 1
        n -= n % args.save_every_n_steps
        old = os.path.join(args.output_dir, STEP_STATE_NAME.format(name, n))
        if n > 0 and os.path.exists(old):
            shutil.rmtree(old)


def save_state_on_train_end(args, accelerator) -> None:
    name = default_if_none(args.output_name, DEFAULT_LAST_OUTPUT_NAME)
    os.makedirs(args.output_dir, exist_ok=True)
    accelerator.save_state(os.path.join(args.output_dir, LAST_STATE_NAME.format(name)))


def prepare_accelerator(args) -> Accelerator:
    logging_dir = None
    if args.logging_dir is not None:
        logging_dir = args.logging_dir + "/" + (args.log_prefix or "") + time.strftime("%Y%m%d%H%M%S", time.localtime())
    log_with = args.log_with if args.log_with is not None else ("tensorboard" if logging_dir is not None else None)
    if log_with in ("wandb", "all") and logging_dir is not None:
        os.makedirs(logging_dir, exist_ok=True)
        os.environ["WANDB_DIR"] = logging_dir
    # sd-scripts sets the process-group timeout only with several CUDA devices; the stand-in
    # always does, so CI can run two gloo processes with a short collective timeout.
    handlers = [InitProcessGroupKwargs(backend="gloo", timeout=datetime.timedelta(minutes=args.ddp_timeout))] if args.ddp_timeout else []
    return Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
                       log_with=log_with, project_dir=logging_dir, kwargs_handlers=handlers)


def init_trackers(accelerator, args, default_tracker_name) -> None:
    if accelerator.is_main_process:
        init_kwargs = {"wandb": {"name": args.wandb_run_name}} if args.wandb_run_name else {}
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) or v is None}
        accelerator.init_trackers(args.log_tracker_name or default_tracker_name, config=config, init_kwargs=init_kwargs)
        if "wandb" in [t.name for t in accelerator.trackers]:
            run = accelerator.get_tracker("wandb", unwrap=True)
            run.define_metric("epoch", hidden=True)
            run.define_metric("val_step", hidden=True)
            run.define_metric("global_step", hidden=True)


# -- sampling ----------------------------------------------------------------------------------

def line_to_prompt_dict(line: str) -> dict:
    head, *parts = line.split(" --")
    d = {"prompt": head}
    keys = {"w": ("width", int), "h": ("height", int), "d": ("seed", int), "s": ("sample_steps", int), "n": ("negative_prompt", str)}
    for p in parts:
        k, _, v = p.partition(" ")
        if k.lower() in keys:
            name, conv = keys[k.lower()]
            d[name] = conv(v.strip())
    return d


def load_prompts(prompt_file: str) -> list:
    if prompt_file.endswith(".txt"):
        with open(prompt_file, encoding="utf-8") as f:
            prompts = [ln.strip() for ln in f if ln.strip() and ln[0] != "#"]
    elif prompt_file.endswith(".toml"):
        with open(prompt_file, "rb") as f:
            data = tomllib.load(f)
        prompts = [dict(**data["prompt"], **s) for s in data["prompt"]["subset"]]
    else:
        with open(prompt_file, encoding="utf-8") as f:
            prompts = json.load(f)
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            p = prompts[i] = line_to_prompt_dict(p)
        p["enum"] = i
        p.pop("subset", None)
    return prompts


def _faces(args) -> list:
    folder = getattr(args, "standin_faces", None)
    if not folder:
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".png"))


def _render(args, prompt_dict, steps, unet) -> Image.Image:
    """The stand-in "diffusion": a face from --standin_faces (which one depends on the seed and
    the step), else a flat picture whose colour follows the weights."""
    w, h = prompt_dict.get("width", 512), prompt_dict.get("height", 512)
    seed = prompt_dict.get("seed")
    if seed is None:
        seed = int(torch.randint(0, 2**31, (1,)).item())  # kohya: random seed when none is given
    faces = _faces(args)
    if faces:
        return Image.open(faces[(seed + steps // max(1, args.sample_every_n_steps or 1)) % len(faces)]).convert("RGB").resize((w, h))
    level = int(abs(sum(float(p.detach().float().sum()) for p in unet.parameters())) * 1000 + seed) % 256
    return Image.fromarray(np.full((h, w, 3), level, np.uint8))


def sample_images(accelerator, args, epoch, steps, device, vae, tokenizer, text_encoder, unet, prompt_replacement=None,
                  sample_prompts_te_outputs=None):
    """kohya's gating: step 0 only with --sample_at_first; sample_every_n_epochs wins over
    sample_every_n_steps; an epoch-end call samples only by epochs."""
    if steps == 0:
        if not args.sample_at_first:
            return
    else:
        if args.sample_every_n_steps is None and args.sample_every_n_epochs is None:
            return
        if args.sample_every_n_epochs is not None:
            if epoch is None or epoch % args.sample_every_n_epochs != 0:
                return
        elif steps % args.sample_every_n_steps != 0 or epoch is not None:
            return
    if not os.path.isfile(args.sample_prompts):
        print(f"No prompt file: {args.sample_prompts}")
        return
    state = PartialState()
    prompts = load_prompts(args.sample_prompts)
    save_dir = args.output_dir + "/sample"
    os.makedirs(save_dir, exist_ok=True)
    rng = torch.get_rng_state()
    if state.num_processes <= 1:
        mine = prompts
    else:
        with state.split_between_processes([prompts[i :: state.num_processes] for i in range(state.num_processes)]) as lists:
            mine = lists[0]
    for p in mine:
        if sample_prompts_te_outputs is not None:
            # FLUX/SD3/Lumina/Anima with cached text-encoder outputs and no text encoder at hand:
            # an uncached prompt has no conditioning (flux_train_utils: unpacking [] fails)
            for text in (p.get("prompt", ""), p.get("negative_prompt", "")):
                if text not in sample_prompts_te_outputs:
                    raise ValueError(f"not enough values to unpack (prompt {text!r} was not cached at setup)")
        image = _render(args, p, steps, accelerator.unwrap_model(unet))
        ts = time.strftime("%Y%m%d%H%M%S", time.localtime())
        num = f"e{epoch:06d}" if epoch is not None else f"{steps:06d}"
        seed = p.get("seed")
        name = f"{'' if args.output_name is None else args.output_name + '_'}{num}_{p['enum']:02d}_{ts}{'' if seed is None else '_' + str(seed)}.png"
        image.save(os.path.join(save_dir, name))
        if "wandb" in [t.name for t in accelerator.trackers]:
            import wandb

            accelerator.get_tracker("wandb").log({f"sample_{p['enum']}": wandb.Image(image, caption=p.get("prompt"))}, commit=False)
    torch.set_rng_state(rng)
