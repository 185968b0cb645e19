"""``--network_module kohya_ext.gui_network``: consistency tracking for stock sd-scripts scripts
(the kohya_ss GUI launches those, with only an "Additional parameters" text of our own).

sd-scripts imports the network module inside ``NetworkTrainer.train`` (train_network.py L644)
and calls ``create_network`` from there (L678), on every rank, after the accelerator exists and
before ``post_process_network`` (L704), the trackers (L1279) and the first sample hook (L1332).
So ``create_network`` here:
- finds the running trainer and its ``args`` in the calling frame (``train``'s locals),
- builds the real network with the inner module (the GUI's own choice, read back from the
  GUI's ``--config_file`` TOML, since an appended ``--network_module`` / ``--network_args``
  replaces the TOML's values in ``args``), with the GUI's network_args restored, and
- installs on the trainer instance the same hooks ``python -m kohya_ext`` installs
  (``kohya_ext.patches.sd_scripts``): the family's sampler renders, trackers get the scores,
  the best copy is kept and early stopping is decided on every rank at the same step.
What the command-line path's ``train()`` wrapper does afterwards is done here from the hooks:
after an early stop, the final save and ``on_fit_end`` run inside the epoch-end sample hook and
the process exits 0; otherwise ``on_fit_end`` follows the final save (main) or runs at exit.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from kohya_ext.errors import KohyaExtError
from kohya_ext.patches.sd_scripts import KohyaSurface, resolve_surface, trace
from kohya_ext.toml_compat import flatten_config, tomllib
from kohya_ext.training.messages import say
from kohya_ext.training.options import ConsistencyOptions, from_args

OWN_NAMES = ("kohya_ext.gui_network", "kohya_ext.patches.gui_network")
DEFAULT_INNER = "networks.lora"
INNER_KEY = "consistency_network_module"  # network_args key naming the real network module
CONFIG_KEY = "consistency_config"  # network_args key naming a TOML of consistency_* options
SPACES_HELP = ("the kohya_ss GUI splits Additional parameters on spaces, so no value can hold one: write each space as %20 "
               "(consistency_reference=D:/My%20Characters/mio) or put the options in a TOML file and pass "
               "consistency_config=FILE.toml (docs/gui.md)")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


# -- reading what the GUI gave -------------------------------------------------------------

def _unquote(item: str) -> str:
    """The GUI shlex-quotes items with characters such as ``\\`` or ``~`` and passes them without
    a shell, so the quotes arrive: strip one pair."""
    s = str(item).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = s[1:-1]
    return s


def split_pair(item: str) -> tuple[str, str]:
    """``key=value`` of one network_args item; kohya-ext's own values are %-decoded (``%20``)."""
    s = _unquote(item)
    if "=" not in s:
        raise KohyaExtError(f"--network_args item {item!r} is not key=value: write e.g. consistency_patience=3")
    key, value = s.split("=", 1)
    key = key.strip()
    return key, unquote(value) if is_ours(key) else value


def not_key_value(items: Any) -> list[str]:
    """Items sd-scripts' ``key, value = item.split("=", 1)`` would crash on (train_network.py)."""
    return [str(i) for i in (items or []) if "=" not in _unquote(i)]


def command_line_network_args(args: Any, argv: list[str] | None = None) -> list[str]:
    """Every ``--network_args`` item of the command line, in order. argparse keeps only the last
    occurrence, so a user's own ``--network_args conv_dim=4`` in the GUI's Additional parameters
    would be lost behind ours: read them all back from ``sys.argv`` (when it is the command line
    ``args`` came from: its last occurrence must equal ``args.network_args``)."""
    parsed = list(getattr(args, "network_args", None) or [])
    argv = sys.argv[1:] if argv is None else argv
    groups: list[list[str]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--network_args":
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            groups.append(argv[i + 1:j])
            i = j
            continue
        if a.startswith("--network_args="):
            groups.append([a.split("=", 1)[1]])
        i += 1
    if len(groups) < 2 or groups[-1] != parsed:
        return parsed
    return [item for g in groups for item in g]


def read_options_file(value: str) -> dict[str, Any]:
    """``consistency_config=FILE.toml``: kohya-ext options as ``consistency_*`` keys (the same
    keys a ``--config_file`` takes), for values the GUI cannot pass, such as paths with spaces."""
    path = Path(value).expanduser()
    try:
        data = flatten_config(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as e:
        raise KohyaExtError(f"--network_args {CONFIG_KEY}={value}: cannot read it ({e.strerror or e}): give the path of a "
                            f"TOML file holding consistency_* keys") from None
    except ValueError as e:
        raise KohyaExtError(f"--network_args {CONFIG_KEY}={value}: not valid TOML ({e})") from None
    bad = sorted(k for k in data if not is_ours(k) or k == CONFIG_KEY)
    if bad:
        raise KohyaExtError(f"{path}: only consistency_* keys belong in a {CONFIG_KEY} file (found {', '.join(bad)}); "
                            f"network settings stay in the GUI")
    return data


def pairs(items: Any) -> dict[str, str]:
    return dict(split_pair(i) for i in (items or []))


def is_ours(key: str) -> bool:
    return key == "consistency" or key.startswith("consistency_")


def read_config(args: Any) -> dict[str, Any]:
    """The ``--config_file`` TOML flattened one level, as ``read_config_from_file`` reads it
    ({} without one). sd-scripts strips ``.toml`` from ``args.config_file`` after reading."""
    name = getattr(args, "config_file", None)
    if not name:
        return {}
    path = Path(name if str(name).endswith(".toml") else f"{name}.toml")
    if not path.is_file():
        return {}
    return flatten_config(tomllib.loads(path.read_text(encoding="utf-8")))


@dataclass
class Plan:
    """What to build: the inner module, its keyword arguments, our options (as a Namespace)."""

    inner: str
    kwargs: dict[str, Any]
    options: argparse.Namespace
    restored: list[str] = field(default_factory=list)  # network_args taken back from the TOML
    merged: list[str] = field(default_factory=list)  # items of earlier --network_args argparse dropped


def _option_keys() -> set[str]:
    return {"consistency" if f.name == "enabled" else f"consistency_{f.name}" for f in fields(ConsistencyOptions)}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise KohyaExtError(f"--network_args {key}={value}: expected true or false")


def plan(args: Any, call_kwargs: dict[str, Any] | None = None, dropout: bool = True) -> Plan:
    """Resolve the inner module, its kwargs and our options.

    Options: ``consistency_*`` keys of the config TOML (already in ``args``), overridden by a
    ``consistency_config=FILE.toml``, overridden by ``consistency_*`` items of ``--network_args``;
    naming this module turns tracking on unless ``consistency=false``. Inner kwargs: the TOML's
    network_args when the command line replaced them, updated by the non-``consistency`` items of
    every ``--network_args`` on the command line, then sd-scripts' LyCORIS ``dropout`` workaround
    (L676) - the kwargs a stock run of the GUI's command would pass, with nothing dropped.
    """
    cfg = read_config(args)
    # Outside train() only the call's kwargs are known (they already hold sd-scripts' dropout).
    items = command_line_network_args(args) if args is not None else []
    cli = pairs(items) if args is not None else dict(call_kwargs or {})
    toml_items = cfg.get("network_args") or []
    if isinstance(toml_items, str):
        toml_items = toml_items.split()
    kwargs: dict[str, Any] = {}
    restored: list[str] = []
    if args is not None and list(toml_items) != list(getattr(args, "network_args", None) or []):
        kwargs.update(pairs(toml_items))  # the GUI's own list, which the appended --network_args replaced
        restored = [str(i) for i in toml_items]
    kwargs.update({k: v for k, v in cli.items() if not is_ours(k)})
    merged = [i for i in items[:len(items) - len(getattr(args, "network_args", None) or [])] if not is_ours(split_pair(i)[0])]
    if dropout and "dropout" not in kwargs and args is not None:
        kwargs["dropout"] = getattr(args, "network_dropout", None)

    inner = cli.get(INNER_KEY) or getattr(args, INNER_KEY, None) or cfg.get("network_module")
    if not inner or inner in OWN_NAMES:
        inner = DEFAULT_INNER
    known = _option_keys()
    ns = argparse.Namespace()
    for key in known:
        if args is not None and hasattr(args, key):
            setattr(ns, key, getattr(args, key))
    options = {**(read_options_file(cli[CONFIG_KEY]) if CONFIG_KEY in cli else {}),
               **{k: v for k, v in cli.items() if k != CONFIG_KEY}}
    unknown = [k for k in options if is_ours(k) and k not in known and k != INNER_KEY]
    if unknown:
        raise KohyaExtError(f"--network_args {', '.join(unknown)}: not a kohya-ext option; known: "
                            f"{', '.join(sorted(known | {INNER_KEY, CONFIG_KEY}))}")
    for k, v in options.items():
        if k in known:
            setattr(ns, k, v)
    ns.consistency = _bool("consistency", ns.consistency) if hasattr(ns, "consistency") else True
    return Plan(inner=inner, kwargs=kwargs, options=ns, restored=restored, merged=merged)


def check_before_create_network() -> None:
    """Run when sd-scripts imports the module, just before it splits ``--network_args`` on "="
    itself: an item without "=" (a value the GUI split at a space) would crash it with a bare
    ``ValueError: not enough values to unpack``; say what happened and how to write it."""
    found = find_trainer(max_depth=40)
    if found is None:
        return
    bad = not_key_value(command_line_network_args(found[1]))
    if bad:
        _fail(KohyaExtError(f"--network_args item {bad[0]!r} is not key=value (the previous item's value was cut at a "
                            f"space?): {SPACES_HELP}"))


def find_trainer(max_depth: int = 12) -> tuple[Any, Any, Any] | None:
    """(trainer, args, accelerator) from the ``NetworkTrainer.train`` frame calling us, else None."""
    f = sys._getframe(1)
    for _ in range(max_depth):
        if f is None:
            return None
        loc = f.f_locals
        me = loc.get("self")
        if f.f_code.co_name == "train" and me is not None and "args" in loc and all(
                callable(getattr(me, m, None)) for m in ("sample_images", "post_process_network", "step_logging", "epoch_logging")):
            return me, loc["args"], loc.get("accelerator")
        f = f.f_back
    return None


# -- the session: hooks on the running trainer ---------------------------------------------

class GuiSession:
    """The command-line path's hooks on a trainer that is already inside ``train()``."""

    def __init__(self, trainer: Any, args: Any, accelerator: Any, plan_: Plan):
        self.trainer, self.args, self.accelerator, self.plan = trainer, args, accelerator, plan_
        self.opts = from_args(plan_.options)
        self.run: Any = None
        self.done = False

    def start(self) -> None:
        from kohya_ext.training.run import TrainingRun  # pulls torch in (3 s cold): only when tracking is on

        self.surface = KohyaSurface(resolve_surface(type(self.trainer)))
        self.run = TrainingRun(self.opts, self.surface)
        self.run.start(self.args)
        self.run.install(self.trainer)
        self._wrap_trainer()
        atexit.register(self.finish, False)

    def _wrap_trainer(self) -> None:
        t = self.trainer
        hooked_sample, hooked_post = t.sample_images, t.post_process_network

        def sample_images(accelerator, args, epoch, global_step, *rest):
            from kohya_ext.training.run import EarlyStopped

            try:
                return hooked_sample(accelerator, args, epoch, global_step, *rest)
            except EarlyStopped as stop:
                self.stop(stop)

        def post_process_network(args, accelerator, network, text_encoders, unet):
            hooked_post(args, accelerator, network, text_encoders, unet)
            self._wrap_save(network)

        t.sample_images = sample_images
        t.post_process_network = post_process_network

    def _wrap_save(self, network: Any) -> None:
        """Outermost save_weights: the file's metadata names the real module and its arguments,
        and the final save (``{output_name}.{ext}``, main process) ends the session."""
        inner_save = network.save_weights  # the run's layer
        ext = "." + getattr(self.args, "save_model_as", "safetensors")
        last = self.surface.last_ckpt_name(self.args, ext)

        def save_weights(file, dtype, metadata):
            if metadata:
                metadata = fix_metadata(metadata, self.plan)
            out = inner_save(file, dtype, metadata)
            if os.path.basename(str(file)) == last:
                self.finish(self.run.stop_message is not None)
            return out

        network.save_weights = save_weights

    def stop(self, stop: Any) -> None:
        """After an early stop, on every rank at the same epoch end: the tail of ``train()``
        (trackers closed, optional end state, final save), then exit 0 - sd-scripts' loop has
        no other way out, and every family's ``__main__`` ends at ``trainer.train(args)``."""
        self.run.finish_after_stop(stop)
        self.finish(True)
        raise SystemExit(0)

    def finish(self, stopped: bool) -> None:
        if self.done or self.run is None:
            return
        self.done = True

        try:
            self.run.end(stopped)
        finally:
            trace("train_end", self.run.current_step, self.run.epoch, ())


def fix_metadata(metadata: dict, plan_: Plan) -> dict:
    """What a stock run of the GUI's command writes: the inner module, the inner kwargs."""
    meta = dict(metadata)
    if "ss_network_module" in meta:
        meta["ss_network_module"] = plan_.inner
    if "ss_network_args" in meta or plan_.restored or plan_.merged:
        meta["ss_network_args"] = json.dumps(plan_.kwargs)
    return meta


# -- the network-module surface --------------------------------------------------------------

def _inner(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise KohyaExtError(f"kohya_ext.gui_network: cannot import the network module {name} ({e}); "
                            f"name it with --network_args {INNER_KEY}=MODULE") from None


def _fail(e: KohyaExtError) -> None:
    print(f"kohya-ext: error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _setup(call_kwargs: dict[str, Any], dropout: bool) -> tuple[Plan, Any]:
    """The plan and the trainer found (None when not called from NetworkTrainer.train)."""
    found = find_trainer(max_depth=12)
    p = plan(found[1] if found else None, call_kwargs, dropout)
    return p, found


def _start(found: Any, p: Plan) -> None:
    trainer, args, accelerator = found
    if "sample_images" in vars(trainer):  # python -m kohya_ext already hooked this trainer
        say("consistency hooks already installed by python -m kohya_ext; the network module only delegates")
        return
    if p.restored:
        say(f"network_args from {args.config_file}.toml kept for {p.inner}: {' '.join(p.restored)}")
    if p.merged:
        say(f"network_args of an earlier --network_args kept for {p.inner}: {' '.join(p.merged)}")
    GuiSession(trainer, args, accelerator, p).start()


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    """sd-scripts' ``create_network``: the inner module's network, with the hooks installed."""
    try:
        p, found = _setup(kwargs, dropout=True)
        module = _inner(p.inner)
        if found is None:
            say("kohya_ext.gui_network not called from NetworkTrainer.train: delegating without evaluation")
        network = module.create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet,
                                        neuron_dropout=neuron_dropout, **p.kwargs)
        if network is not None and found is not None and p.options.consistency:
            _start(found, p)
        return network
    except KohyaExtError as e:
        _fail(e)


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False, **kwargs):
    """sd-scripts' ``create_network_from_weights``: ``--base_weights`` merging (for_inference)
    only delegates; ``--dim_from_weights`` training also installs the hooks."""
    try:
        p, found = _setup(kwargs, dropout=False)
        module = _inner(p.inner)
        result = module.create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=weights_sd,
                                                    for_inference=for_inference, **p.kwargs)
        if not for_inference and found is not None and p.options.consistency and result and result[0] is not None:
            _start(found, p)
        return result
    except KohyaExtError as e:
        _fail(e)
