"""Helpers for the training tests: datasets, running a trainer through kohya-ext, reading back
hook traces, TensorBoard event files and offline wandb run files."""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

STANDIN = Path(__file__).resolve().parent
REPO = STANDIN.parents[1]


def _family_shim(what: str, module: str, trainer: str) -> str:
    """A family script (sdxl_train_network.py etc.): imports the base trainer module, runs ``trainer``."""
    return (f'"""Shim (tests/standin/harness.py): {what}."""\n'
            "import sys\n\nsys.path.insert(0, {standin!r})\n"
            "import train_network  # noqa: E402,F401  (the family scripts import the base trainer module)\n"
            "from library import train_util  # noqa: E402\n"
            f"from {module} import {trainer}  # noqa: E402\n"
            "from standin_loop import setup_parser  # noqa: E402,F401\n\n"
            'if __name__ == "__main__":\n'
            "    parser = setup_parser()\n"
            "    args = parser.parse_args()\n"
            "    args = train_util.read_config_from_file(args, parser)\n"
            f"    {trainer}().train(args)\n")


#: stand-in family script -> (what it stands for, module, trainer class)
FAMILIES = {
    "cached_train_network.py": ("a family that caches sample-prompt encodings at setup", "standin_cached", "CachedPromptsTrainer"),
    "anima_train_network.py": ("a caching family that loads its DiT only after caching, as Anima and HunyuanImage do",
                               "standin_cached", "LazyDiTTrainer"),
    "sdxl_train_network.py": ("a family with two text encoders, as SDXL has", "standin_two_encoders", "TwoEncoderTrainer"),
}

# The stand-in's code lives in standin_loop.py / standin_util.py / standin_lora.py (names no
# sd-scripts file has); at test time it is laid out under sd-scripts' own names by these shims,
# so kohya-ext imports it exactly as it imports a real checkout.
_SHIMS = {
    **{script: _family_shim(*family) for script, family in FAMILIES.items()},
    "train_network.py": (
        '"""Shim (tests/standin/harness.py): the stand-in loop under sd-scripts\' script name."""\n'
        "import sys\n\nsys.path.insert(0, {standin!r})\n"
        "from library import train_util  # noqa: E402\n"
        "from standin_loop import *  # noqa: E402,F401,F403\n"
        "from standin_loop import NetworkTrainer, setup_parser  # noqa: E402,F401\n\n"
        'if __name__ == "__main__":\n'
        "    parser = setup_parser()\n\n"
        "    args = parser.parse_args()\n"
        "    train_util.verify_command_line_training_args(args)\n"
        "    args = train_util.read_config_from_file(args, parser)\n\n"
        "    trainer = NetworkTrainer()\n"
        "    trainer.train(args)\n"),
    "library/__init__.py": "",
    "library/train_util.py": "import sys\n\nsys.path.insert(0, {standin!r})\nfrom standin_util import *  # noqa: E402,F401,F403\n",
    "networks/__init__.py": "",
    "networks/lora.py": "import sys\n\nsys.path.insert(0, {standin!r})\nfrom standin_lora import *  # noqa: E402,F401,F403\n",
}


_REEXPORT = "import sys\n\nsys.path.insert(0, {standin!r})\nfrom standin_util import {names}  # noqa: E402,F401\n"
# v0.11's layout (#2372): library/train_util.py split into args / checkpoint_io / sampling / ...
# (train_util still re-exports), and the trainers import the new modules, not train_util.
_SHIMS_V011 = {
    "train_network.py": _SHIMS["train_network.py"]
    .replace("from library import train_util  # noqa: E402\n", "import library.args as args_util  # noqa: E402\n")
    .replace("train_util.verify_command_line_training_args", "args_util.verify_command_line_training_args")
    .replace("train_util.read_config_from_file", "args_util.read_config_from_file"),
    **{script: _SHIMS[script]
       .replace("from library import train_util  # noqa: E402\n", "import library.args as args_util  # noqa: E402\n")
       .replace("train_util.read_config_from_file", "args_util.read_config_from_file") for script in FAMILIES},
    "library/args.py": _REEXPORT.replace("{names}", "read_config_from_file, verify_command_line_training_args"),
    "library/checkpoint_io.py": _REEXPORT.replace(
        "{names}", "get_epoch_ckpt_name, get_last_ckpt_name, get_step_ckpt_name, save_state_on_train_end"),
    "library/sampling.py": _REEXPORT.replace("{names}", "load_prompts, sample_images"),
}
LAYOUTS = ("v0.10", "v0.11")


def standin_checkout(dest: Path, extra: dict[str, str] | None = None, layout: str = "v0.10") -> Path:
    """A fake sd-scripts folder at ``dest`` in the module layout of sd-scripts ``layout``:
    the shims above (plus ``extra`` {name: source})."""
    shims = {**_SHIMS, **(_SHIMS_V011 if layout == "v0.11" else {})}
    for name, text in {**shims, **(extra or {})}.items():
        f = Path(dest) / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text.replace("{standin!r}", repr(str(STANDIN))))
    return Path(dest)


def make_dataset(root: Path, n: int, tiles: list | None = None, size: int = 64, caption: str = "sks girl, portrait") -> Path:
    """A kohya train_data_dir (``1_sks``) of ``n`` images (TADNE tiles when given) with captions."""
    from PIL import Image

    d = root / "train" / "1_sks"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(tiles[i]).resize((size, size)) if tiles else Image.fromarray(np.full((size, size, 3), 20 * i % 256, np.uint8))
        img.save(d / f"{i:02d}.png")
        (d / f"{i:02d}.txt").write_text(caption)
    return root / "train"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_args(root: Path, steps: int = 4, save_every: int = 2) -> list[str]:
    return ["--train_data_dir", str(root / "train"), "--caption_extension", ".txt", "--output_dir", str(root / "out"),
            "--output_name", "tiny", "--network_module", "networks.lora", "--network_dim", "4", "--max_train_steps", str(steps),
            "--save_every_n_steps", str(save_every), "--resolution", "64", "--save_precision", "float", "--seed", "0"]


def run_trainer(root: Path, args: list[str], env: dict | None = None, nproc: int = 1, script: str = "train_network.py",
                sd_scripts: Path | None = None, python: str = sys.executable, timeout: float = 180,
                layout: str = "v0.10") -> subprocess.CompletedProcess:
    """``python -m kohya_ext SCRIPT ARGS`` (or torchrun with ``nproc`` gloo processes), hook trace on.
    Without ``sd_scripts``, the stand-in checkout in ``layout`` (shims written under ``root``)."""
    if sd_scripts is None:
        sd_scripts = standin_checkout(Path(root) / "sd-scripts-standin", layout=layout)
    e = {**os.environ, "KOHYA_SD_SCRIPTS": str(sd_scripts), "KOHYA_EXT_TRACE": str(root / "trace.jsonl"),
         "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
    if nproc == 1:
        cmd = [python, "-m", "kohya_ext", script, *args]
    else:
        cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
               "-m", "kohya_ext", script, *args]
    return subprocess.run(cmd, cwd=root, env=e, capture_output=True, text=True, timeout=timeout)


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def read_tensorboard(logging_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every event file under ``logging_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for f in glob.glob(str(Path(logging_dir) / "**" / "events.out.tfevents.*"), recursive=True):
        acc = EventAccumulator(f, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            out.setdefault("image:" + tag, []).extend((e.step, float(e.width)) for e in acc.Images(tag))
        for tag in acc.Tags().get("tensors", []):  # e.g. the custom-scalars layout
            out.setdefault("tensor:" + tag, []).extend((e.step, 0.0) for e in acc.Tensors(tag))
    return out


def wandb_records(run_file: Path) -> list:
    """The ``wandb_internal_pb2.Record`` messages of an offline ``run-*.wandb`` file (wandb's
    record log: 7-byte file header, 32 KiB blocks, records with a 7-byte crc/length/type header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    block, pos, recs, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, typ = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and typ == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if typ == 1:
            recs.append(chunk)
        elif typ == 2:
            buf = chunk
        elif typ == 3:
            buf += chunk
        elif typ == 4:
            recs.append(buf + chunk)
    out = []
    for d in recs:
        r = pb.Record()
        r.ParseFromString(d)
        out.append(r)
    return out


def read_wandb(run_file: Path) -> tuple[list[dict], dict, dict]:
    """(history rows, summary, config) of an offline ``run-*.wandb`` file."""
    history, summary, config = [], {}, {}
    key = lambda i: i.key or "/".join(i.nested_key)  # noqa: E731
    for r in wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "config":
            config.update({key(i): json.loads(i.value_json) for i in r.config.update})
    return history, summary, config


def read_wandb_metrics(run_file: Path) -> dict[str, dict]:
    """The ``define_metric`` declarations of an offline run file ("metric" records):
    {name or glob: {"step_metric": ..., "step_sync": ..., "hidden": ...}}, a name's records merged
    the way wandb merges them (later values set win, unset ones keep earlier values; ``overwrite``
    starts afresh). The client writes a step metric by name (``step_metric``); an index
    (``step_metric_index``, what wandb's server side uses) is kept as "#<index>"."""
    out: dict[str, dict] = {}
    for r in wandb_records(run_file):
        if r.WhichOneof("record_type") != "metric":
            continue
        m = r.metric
        name = m.glob_name or m.name
        step = m.step_metric or (f"#{m.step_metric_index}" if m.step_metric_index else "")
        entry = {} if m._control.overwrite else out.setdefault(name, {})  # wandb merges unless overwrite
        out[name] = entry
        if step:
            entry["step_metric"] = step
        entry["step_sync"] = m.options.step_sync or entry.get("step_sync", False)
        entry["hidden"] = m.options.hidden or entry.get("hidden", False)
    return out


def working_tree_overlay(dest: Path, sd_python: str) -> Path:
    """A PYTHONPATH folder under ``dest`` whose ``kohya_ext`` is this working tree (callbacks/,
    patches/ and presets/ mapped in), for running real sd-scripts without installing into its venv.

    The nvxs backend needs the animeface wheel; a pristine sd-scripts venv lacks it, so ours is lent
    (same Python minor version required) rather than installed there.
    """
    overlay = Path(dest) / "overlay"
    pkg = overlay / "kohya_ext"
    if pkg.exists():
        return overlay
    pkg.mkdir(parents=True)
    for entry in (REPO / "kohya_ext").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for sub in ("callbacks", "patches", "presets"):
        (pkg / sub).symlink_to(REPO / sub)
    if subprocess.run([sd_python, "-c", "import animeface"], capture_output=True).returncode != 0:
        import animeface

        site = Path(animeface.__file__).resolve().parent.parent
        for name in ("animeface", "animeface.libs"):
            if (site / name).exists():
                (overlay / name).symlink_to(site / name)
    return overlay
