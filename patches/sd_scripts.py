"""All sd-scripts-specific glue, in one place (a new sd-scripts version should touch only this file).

How it hooks in, without editing sd-scripts:
- the trainer script (train_network.py, sdxl_train_network.py, ...) is imported as a module
  and its ``if __name__ == "__main__":`` block is run in that module, after
- its ``setup_parser`` is wrapped to add the ``--consistency_*`` group (so the flags work on
  the command line and as ``--config_file`` keys, and show in ``--help``), and
- ``train_network.NetworkTrainer.train`` is wrapped: every family's trainer subclasses it, so
  the hooks are installed on the trainer instance and call through the family's overrides
  (``sample_images``, ``post_process_network``) - nothing else of sd-scripts is replaced.
Checked against sd-scripts v0.10.1 (main 48d368fa) and v0.11.1 (6721028c); line numbers are
v0.10.1's train_network.py. What each hook relies on, per version: docs/compatibility.md.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kohya_ext.errors import KohyaExtError
from kohya_ext.preset_loader import describe_parser
from kohya_ext.training.options import add_arguments, from_args
from kohya_ext.training.messages import say

TRAINERS = ("train_network.py", "sdxl_train_network.py", "sd3_train_network.py", "flux_train_network.py",
            "lumina_train_network.py", "hunyuan_image_train_network.py", "anima_train_network.py")
# NetworkTrainer methods we call or rely on (the hook surface), and sample_images' parameters.
_REQUIRED_METHODS = ("train", "sample_images", "post_process_network", "step_logging", "epoch_logging",
                     "accelerator_logging", "process_batch", "on_step_start", "cache_text_encoder_outputs_if_needed")
_SAMPLE_PARAMS = 10  # self, accelerator, args, epoch, global_step, device, vae, tokenizer(s), text_encoder, unet


@dataclass(frozen=True)
class SurfaceSpec:
    """One supported sd-scripts version: where each function kohya-ext calls is defined.

    The functions are imported from these modules (never read out of ``sys.modules``), so the
    GUI path, which starts inside an already running trainer, resolves them the same way.
    """

    name: str
    marker: str  # a file under the checkout that only this version's layout has
    functions: dict[str, str]  # function -> defining module


_FUNCTIONS = ("read_config_from_file", "verify_command_line_training_args", "get_step_ckpt_name",
              "get_epoch_ckpt_name", "get_last_ckpt_name", "save_state_on_train_end", "load_prompts")
# Newest first: a checkout is matched by its layout marker, then checked function by function.
SURFACES = (
    # v0.11.0 (#2372) split library/train_util.py; train_util still re-exports, but no trainer imports it.
    SurfaceSpec("v0.11.x", "library/checkpoint_io.py", {
        "read_config_from_file": "library.args", "verify_command_line_training_args": "library.args",
        "get_step_ckpt_name": "library.checkpoint_io", "get_epoch_ckpt_name": "library.checkpoint_io",
        "get_last_ckpt_name": "library.checkpoint_io", "save_state_on_train_end": "library.checkpoint_io",
        "load_prompts": "library.sampling"}),
    SurfaceSpec("v0.10.x", "library/train_util.py", {f: "library.train_util" for f in _FUNCTIONS}),
)
SUPPORTED = ("sd-scripts " + " and ".join(s.name for s in reversed(SURFACES))
             + " (v0.10.0/v0.10.1 and the sd3 branch since 2025-02; v0.11.0/v0.11.1, the kohya_ss GUI's since v26)")


@dataclass(frozen=True)
class Surface:
    """A checked sd-scripts checkout: its version's spec, the trainer base class and the functions."""

    spec: SurfaceSpec
    root: Path
    trainer_class: Any
    functions: SimpleNamespace

    @property
    def version(self) -> str:
        return self.spec.name


# -- finding and checking sd-scripts --------------------------------------------------------

def find_script(name: str) -> Path:
    """SCRIPT as given (absolute or relative to the current folder), else in ``$KOHYA_SD_SCRIPTS``."""
    p = Path(name)
    if p.is_file():
        return p.resolve()
    root = os.environ.get("KOHYA_SD_SCRIPTS")
    if root and not p.is_absolute() and (Path(root) / p).is_file():
        return (Path(root) / p).resolve()
    where = f"KOHYA_SD_SCRIPTS={root}" if root else "KOHYA_SD_SCRIPTS (unset)"
    raise KohyaExtError(f"{name}: not found in the current folder nor in {where}: run from your sd-scripts folder "
                        f"or set KOHYA_SD_SCRIPTS=/path/to/sd-scripts (trainers: {', '.join(TRAINERS)})")


def load_script(path: Path) -> Any:
    """Import a trainer script as the module of its own name (``import train_network`` in the
    other families then finds the same module), with its folder first on ``sys.path``."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import(name: str) -> tuple[Any | None, str]:
    """(module, "") or (None, why): an sd-scripts module that fails to import names its error."""
    try:
        return importlib.import_module(name), ""
    except ImportError as e:
        return None, f" ({type(e).__name__}: {e})"


def detect_version(root: Path) -> SurfaceSpec | None:
    """The supported version whose module layout the checkout at ``root`` has (None: neither)."""
    return next((s for s in SURFACES if (Path(root) / s.marker).is_file()), None)


def resolve_surface(trainer_class: Any) -> Surface:
    """The sd-scripts version ``trainer_class`` (``NetworkTrainer`` or a family's subclass)
    belongs to, with its functions imported; a KohyaExtError naming what is missing otherwise."""
    base = next((c for c in inspect.getmro(trainer_class) if c.__name__ == "NetworkTrainer"), None)
    if base is None:
        raise KohyaExtError(f"{trainer_class.__name__}: not an sd-scripts network trainer (no NetworkTrainer base); "
                            f"kohya-ext supports {', '.join(TRAINERS)}")
    here = Path(inspect.getfile(base)).resolve().parent
    if (here / "library").is_dir() and str(here) not in sys.path:
        sys.path.insert(0, str(here))
    library, why = _import("library")  # the package the trainer itself imports its helpers from
    if library is None:
        raise KohyaExtError(f"sd-scripts' library package does not import{why}: run from your sd-scripts folder "
                            f"or with its folder on PYTHONPATH")
    root = Path(library.__file__).resolve().parent.parent
    spec = detect_version(root)
    if spec is None:
        raise KohyaExtError(f"sd-scripts at {root} has neither {' nor '.join(s.marker for s in SURFACES)}; "
                            f"kohya-ext supports {SUPPORTED}")
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(base, m, None))]
    functions = {}
    for fn, module_name in spec.functions.items():
        module, why = _import(module_name)
        f = getattr(module, fn, None)
        if callable(f):
            functions[fn] = f
        else:
            missing.append(f"{module_name}.{fn}{why}")
    if callable(getattr(base, "sample_images", None)):
        n = len(inspect.signature(base.sample_images).parameters)
        if n != _SAMPLE_PARAMS:
            missing.append(f"sample_images with {_SAMPLE_PARAMS - 1} arguments (found {n - 1})")
    if missing:
        raise KohyaExtError(f"sd-scripts at {root} looks like {spec.name} but its hook surface differs (missing: "
                            f"{', '.join(missing)}); kohya-ext supports {SUPPORTED}: see docs/compatibility.md")
    return Surface(spec, root, base, SimpleNamespace(**functions))


def check_surface(module: Any) -> Surface:
    """The surface of a loaded trainer script, or a KohyaExtError naming what is missing."""
    base = getattr(sys.modules.get("train_network"), "NetworkTrainer", None) or getattr(module, "NetworkTrainer", None)
    if base is None:
        raise KohyaExtError(f"{module.__file__}: not an sd-scripts network trainer (no train_network.NetworkTrainer); "
                            f"kohya-ext supports {', '.join(TRAINERS)}")
    surface = resolve_surface(base)
    if not hasattr(module, "setup_parser"):
        raise KohyaExtError(f"{Path(module.__file__).name}: has no setup_parser; kohya-ext supports {SUPPORTED}")
    return surface


def live_options(root: Path, script: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """(label, options) of ``script``'s own parser in the checkout at ``root``, with kohya-ext's
    flags, as ``python -m kohya_ext`` parses them (for ``kohya-ext check-config``)."""
    path = Path(root) / script
    if not path.is_file():
        raise KohyaExtError(f"{root} has no {script}")
    try:
        module = load_script(path)
        parser = module.setup_parser()
    except Exception as e:  # another venv's sd-scripts, missing packages: fall back to the tables
        raise KohyaExtError(f"cannot import {path} here: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    add_arguments(parser)
    spec = detect_version(Path(root))
    return f"the installed sd-scripts {spec.name if spec else '(unknown version)'} at {root}", describe_parser(parser)


def _main_block(module: Any) -> Any:
    """The compiled body of the script's ``if __name__ == "__main__":`` block."""
    src = Path(module.__file__).read_text(encoding="utf-8")
    for node in ast.parse(src).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            return compile(ast.Module(body=node.body, type_ignores=[]), module.__file__, "exec")
    raise KohyaExtError(f"{module.__file__}: has no `if __name__ == \"__main__\":` block to run")


# -- what the callback needs to know about kohya's loop ----------------------------------------

class KohyaSurface:
    """Save cadence and checkpoint names as sd-scripts computes them (train_network.py L1496-1509,
    L1686-1696; ``get_*_ckpt_name``), read live from ``args``."""

    def __init__(self, surface: Surface):
        self.version = surface.version
        self.fns = surface.functions

    @staticmethod
    def step_save_due(args: Any, global_step: int) -> bool:
        n = getattr(args, "save_every_n_steps", None)
        return bool(n) and global_step % n == 0

    @staticmethod
    def is_final(args: Any, global_step: int) -> bool:
        # Every epoch but the last ends below max_train_steps (epochs = ceil(max_steps / steps per epoch)).
        return global_step >= args.max_train_steps

    def epoch_save_due(self, args: Any, epoch: int) -> bool:
        n = getattr(args, "save_every_n_epochs", None)
        return bool(n) and epoch % n == 0

    def step_ckpt_name(self, args: Any, ext: str, step: int) -> str:
        return self.fns.get_step_ckpt_name(args, ext, step)

    def epoch_ckpt_name(self, args: Any, ext: str, epoch: int) -> str:
        return self.fns.get_epoch_ckpt_name(args, ext, epoch)

    def last_ckpt_name(self, args: Any, ext: str) -> str:
        return self.fns.get_last_ckpt_name(args, ext)

    def install_hooks(self, trainer: Any, run: Any) -> None:
        install_instance_hooks(trainer, run, self)

    def finish_after_stop(self, args: Any, run: Any, stop: Any) -> None:
        finish_after_stop(args, self.fns, run, stop)


def render_with(sample_images: Any, accelerator: Any, args: Any, global_step: int, models: tuple) -> Any:
    """A render(prompt_file, out_dir) calling the family's own sampler with a shadow copy of args.

    The samplers return early unless ``sample_*`` select the step, always write into
    ``{output_dir}/sample/``, and log every image to wandb when a wandb tracker exists: the
    shadow args select this step and point output_dir at our folder, and the trackers are
    hidden for the call so the user's wandb ``sample_{i}`` images stay theirs.
    """

    def render(prompt_file: Path, out_dir: Path) -> None:
        shadow = copy.copy(args)
        shadow.sample_prompts = str(prompt_file)
        shadow.output_dir = str(out_dir)
        shadow.output_name = None
        shadow.sample_every_n_epochs = None
        shadow.sample_every_n_steps = 1
        shadow.sample_at_first = True
        hidden = accelerator.trackers
        accelerator.trackers = []
        try:
            sample_images(accelerator, shadow, None, global_step, *models)
        finally:
            accelerator.trackers = hidden

    return render


def cache_prompt_file(own: Path, user: str | None, load_prompts: Any, dest: Path) -> Path:
    """A prompt file holding the user's ``--sample_prompts`` and ours (prompt and negative
    prompt of each: all the text-encoder caching reads), for the families that encode the
    sample prompts once at setup and can render only those afterwards (FLUX, SD3, Lumina,
    HunyuanImage, Anima: ``self.sample_prompts_te_outputs`` built from ``args.sample_prompts``
    in ``cache_text_encoder_outputs_if_needed``, looked up by prompt text when sampling)."""
    items = []
    for f in ([user] if user and os.path.isfile(user) else []) + [str(own)]:
        for d in load_prompts(f):
            items.append({"prompt": d.get("prompt", ""), "negative_prompt": d.get("negative_prompt", "")})
    dest.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return dest


# -- hook trace (compares the stand-in loop with the real one) -----------------------------------

def _kind(v: Any) -> str:
    if v is None or isinstance(v, (bool, int, float, str)):
        return type(v).__name__
    name = type(v).__name__
    if name in ("Namespace", "Accelerator", "device", "dtype"):
        return name
    try:
        import torch

        if isinstance(v, torch.nn.Module):
            return "Module"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "dict"
    return "object"


def trace(hook: str, step: Any = None, epoch: Any = None, args: tuple = ()) -> None:
    """Append one hook call to ``$KOHYA_EXT_TRACE`` (JSON lines) when set."""
    path = os.environ.get("KOHYA_EXT_TRACE")
    if not path:
        return
    rec = {"hook": hook, "rank": int(os.environ.get("RANK", "0")), "step": step, "epoch": epoch, "args": [_kind(a) for a in args]}
    with open(f"{path}.rank{rec['rank']}" if rec["rank"] else path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


# -- installing the hooks -------------------------------------------------------------------

def install_instance_hooks(trainer: Any, run: Any, surface: KohyaSurface) -> None:
    """sd-scripts' calls, on this trainer instance, reported to ``run`` (a kohya_ext.training.run.TrainingRun)."""
    orig_sample = trainer.sample_images  # bound: the family's own override
    orig_cache = trainer.cache_text_encoder_outputs_if_needed
    orig_post = trainer.post_process_network
    orig_step_logging = trainer.step_logging
    orig_epoch_logging = trainer.epoch_logging
    orig_val_step_end = getattr(trainer, "on_validation_step_end", None)  # v0.10+: every rank, every validation step

    def sample_images(accelerator, args, epoch, global_step, device, vae, tokenizers, text_encoder, unet):
        trace("sample_images", global_step, epoch, (accelerator, args, epoch, global_step, device, vae, tokenizers, text_encoder, unet))
        run.check_stop(epoch, global_step)
        orig_sample(accelerator, args, epoch, global_step, device, vae, tokenizers, text_encoder, unet)
        render = render_with(orig_sample, accelerator, args, global_step, (device, vae, tokenizers, text_encoder, unet))
        run.sample_point(accelerator, args, epoch, global_step, render)

    def post_process_network(args, accelerator, network, text_encoders, unet):
        trace("post_process_network", None, None, (args, accelerator, network, text_encoders, unet))
        orig_post(args, accelerator, network, text_encoders, unet)
        _wrap_network(network, run)
        run.network_ready(accelerator, network)

    def step_logging(accelerator, logs, global_step, epoch):
        trace("step_logging", global_step, epoch, (accelerator, logs, global_step, epoch))
        if isinstance(epoch, int):
            run.kohya_epoch(epoch)
        run.logged(logs, global_step)  # loss/validation/step_average arrives here (main process, with a tracker)
        return orig_step_logging(accelerator, logs, global_step, epoch)

    def epoch_logging(accelerator, logs, global_step, epoch):
        trace("epoch_logging", global_step, epoch, (accelerator, logs, global_step, epoch))
        run.logged(logs, global_step)
        return orig_epoch_logging(accelerator, logs, global_step, epoch)

    def on_validation_step_end(args, accelerator, network, text_encoders, unet, batch, weight_dtype):
        trace("on_validation_step_end", run.current_step, None, (args, accelerator, network, text_encoders, unet, batch, weight_dtype))
        run.validation_step_ended()
        return orig_val_step_end(args, accelerator, network, text_encoders, unet, batch, weight_dtype)

    def cache_text_encoder_outputs_if_needed(args, accelerator, unet, vae, text_encoders, dataset, weight_dtype):
        # Families that cache sample-prompt encodings read args.sample_prompts here: show them
        # ours too, then put the user's value back (their own sampling is unchanged).
        trace("cache_text_encoder_outputs_if_needed", None, None, (args, accelerator, unet, vae, text_encoders, dataset, weight_dtype))
        user = args.sample_prompts
        if run.prompt_file is not None:  # else nothing of ours to render
            try:
                args.sample_prompts = str(cache_prompt_file(run.prompt_file, user, surface.fns.load_prompts, run.folder / "prompts-to-cache.json"))
            except Exception as e:  # never block training over our prompts
                say(f"could not add the evaluation prompts to the prompt cache: {e}")
        try:
            return orig_cache(args, accelerator, unet, vae, text_encoders, dataset, weight_dtype)
        finally:
            args.sample_prompts = user

    trainer.sample_images = sample_images
    trainer.cache_text_encoder_outputs_if_needed = cache_text_encoder_outputs_if_needed
    trainer.post_process_network = post_process_network
    trainer.step_logging = step_logging
    trainer.epoch_logging = epoch_logging
    if orig_val_step_end is not None:
        trainer.on_validation_step_end = on_validation_step_end


def _wrap_network(network: Any, run: Any) -> None:
    """Know every checkpoint kohya writes (``save_weights`` at each save), every epoch start, and the end of
    each validation (the network back in training mode)."""
    orig_save = network.save_weights
    orig_epoch = getattr(network, "on_epoch_start", None)
    orig_train = getattr(network, "train", None)

    def save_weights(file, dtype, metadata):
        trace("save_weights", run.current_step, None, (file, dtype, metadata))
        out = orig_save(file, dtype, metadata)
        run.checkpoint_saved(file, metadata, dtype)
        return out

    def on_epoch_start(*a, **kw):
        trace("on_epoch_start", run.current_step, None, a)
        run.epoch_started()
        return orig_epoch(*a, **kw) if orig_epoch else None

    def train(mode=True):
        out = orig_train(mode)
        run.network_mode(bool(mode))  # sd-scripts' validation ends with unwrap_model(network).train()
        return out

    network.save_weights = save_weights
    network.on_epoch_start = on_epoch_start
    if callable(orig_train):
        network.train = train


def finish_after_stop(args: Any, fns: Any, run: Any, stop: Any) -> None:
    """The tail of ``train()`` (L1719-1729) after an early stop left it at the epoch end:
    trackers closed, optional end state, and the final ``{output_name}.{ext}`` written from
    the weights of the stop step (no optimizer step ran after the decision)."""
    accelerator = run.accelerator
    accelerator.end_training()
    if accelerator.is_main_process and (getattr(args, "save_state", False) or getattr(args, "save_state_on_train_end", False)):
        fns.save_state_on_train_end(args, accelerator)
    if accelerator.is_main_process and run.network is not None:
        ext = "." + args.save_model_as
        path = os.path.join(args.output_dir, fns.get_last_ckpt_name(args, ext))
        last = run.last_save or {}
        meta = dict(last.get("metadata") or {})
        if meta:
            meta.update(ss_steps=str(stop.global_step), ss_epoch=str(run.epoch), ss_training_finished_at=str(time.time()))
            meta["kohya_ext_early_stop"] = stop.message
        os.makedirs(args.output_dir, exist_ok=True)
        say(f"saving final checkpoint after the early stop: {path}")
        run.network.save_weights(path, last.get("dtype"), meta if meta else None)


def install(module: Any) -> None:
    """Wrap the script's ``setup_parser`` and ``NetworkTrainer.train`` (idempotent)."""
    checked = check_surface(module)
    base = checked.trainer_class

    orig_setup = module.setup_parser
    if not getattr(orig_setup, "_kohya_ext", False):
        def setup_parser(*a, **kw):
            parser = orig_setup(*a, **kw)
            add_arguments(parser)
            return parser

        setup_parser._kohya_ext = True
        module.setup_parser = setup_parser

    orig_train = base.train
    if getattr(orig_train, "_kohya_ext", False):
        return

    def train(self, args):
        opts = from_args(args)
        if not opts.enabled:
            return orig_train(self, args)
        from kohya_ext.training.run import EarlyStopped, TrainingRun  # pulls torch in (3 s cold): only with --consistency

        run = TrainingRun(opts, KohyaSurface(checked))
        run.start(args)
        run.install(self)
        stopped = False
        try:
            orig_train(self, args)
        except EarlyStopped as stop:
            stopped = True
            run.finish_after_stop(stop)
        finally:
            run.end(stopped)
        trace("train_end", run.current_step, run.epoch, ())

    train._kohya_ext = True
    base.train = train


def run(script: str, argv: list[str]) -> int:
    """``python -m kohya_ext SCRIPT.py ARGS``: run the trainer's own main block with our hooks."""
    path = find_script(script)
    sys.argv = [str(path), *argv]
    module = load_script(path)
    install(module)
    exec(_main_block(module), module.__dict__)
    return 0
