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
                sd_scripts: Path = STANDIN, python: str = sys.executable, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m kohya_ext SCRIPT ARGS`` (or torchrun with ``nproc`` gloo processes), hook trace on."""
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
    return out


def read_wandb(run_file: Path) -> tuple[list[dict], dict, dict]:
    """(history rows, summary, config) of an offline ``run-*.wandb`` file (wandb's record log:
    7-byte file header, 32 KiB blocks, records with a 7-byte crc/length/type header)."""
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
    history, summary, config = [], {}, {}
    key = lambda i: i.key or "/".join(i.nested_key)  # noqa: E731
    for d in recs:
        r = pb.Record()
        r.ParseFromString(d)
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "config":
            config.update({key(i): json.loads(i.value_json) for i in r.config.update})
    return history, summary, config
