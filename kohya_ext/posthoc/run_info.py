"""What an sd-scripts output folder tells about its run: training data, checkpoints, TensorBoard logs.

sd-scripts itself saves no config into ``output_dir`` (``--output_config`` writes the
``--config_file`` path and exits), and the LoRA metadata keeps only folder basenames
(``ss_dataset_dirs``, ``ss_datasets[].subsets[].image_dir``), never full paths. The kohya_ss
GUI does save its run next to the LoRA: ``config_lora-YYYYmmdd-HHMMSS.toml`` (an
sd-scripts ``--config_file``) and ``{output_name}_YYYYmmdd-HHMMSS.json`` (its own settings).
Those, or any ``--config_file`` TOML / dataset config the user keeps there, are where the
training data can be found.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import KohyaExtError
from ..io_utils import DamagedFileError, read_json

from ..toml_compat import flatten_config as _flatten, tomllib
from ..training.leaderboard import FOLDER, RUN_RECORD

logger = logging.getLogger(__name__)

_TS_DIR = re.compile(r"(\d{14})$")


@dataclass
class TrainingData:
    """Where a run's training images are, and which saved file said so."""

    path: Path
    found_in: Path
    key: str  # "train_data_dir", "dataset_config" or "datasets" (the file is a dataset config)


def _existing(value: str, config: Path) -> Path | None:
    """A path from a config: as written (relative to where training ran), else next to the config."""
    for cand in (Path(value).expanduser(), config.parent / value):
        if cand.exists():
            return cand
    return None


def _candidates(output_dir: Path) -> list[Path]:
    files = [p for p in output_dir.glob("*.toml")] + [p for p in output_dir.glob("*.json")]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)  # newest run first


def find_training_data(output_dir: str | Path) -> TrainingData | None:
    """The training data named by a config saved in ``output_dir``, or None when none names it.

    Raises KohyaExtError when a config names training data that is not on this machine.
    """
    output_dir = Path(output_dir)
    missing: list[str] = []
    for f in _candidates(output_dir):
        try:
            raw = f.read_text(encoding="utf-8")
            cfg = tomllib.loads(raw) if f.suffix == ".toml" else json.loads(raw)
        except (OSError, ValueError):
            continue
        if not isinstance(cfg, dict):
            continue
        if f.suffix == ".toml" and isinstance(cfg.get("datasets"), list):
            return TrainingData(f, f, "datasets")
        flat = _flatten(cfg)
        for key in ("dataset_config", "train_data_dir"):  # a dataset config wins, as in sd-scripts
            value = flat.get(key)
            if isinstance(value, str) and value.strip():
                found = _existing(value.strip(), f)
                if found is not None:
                    return TrainingData(found, f, key)
                missing.append(f"{f.name} names {key} = {value!r}")
    if missing:
        raise KohyaExtError(f"{output_dir}: the training data is not on this machine ({'; '.join(missing)}): "
                            "give --reference FOLDER, DATASET.toml or ref.json")
    return None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a .safetensors file (its JSON header only; weights are not read)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                return {}
            header = json.loads(f.read(n))
        return dict(header.get("__metadata__") or {})
    except (OSError, ValueError):
        return {}


def dataset_basenames(output_dir: str | Path) -> list[str]:
    """The training folder basenames kept in the LoRA metadata (all the LoRA remembers of its data)."""
    names: list[str] = []
    for p in sorted(Path(output_dir).glob("*.safetensors")):
        try:
            dirs = json.loads(safetensors_metadata(p).get("ss_dataset_dirs") or "{}")
        except ValueError:
            continue
        names.extend(d for d in dirs if d not in names)
    return names


def missing_reference_message(output_dir: str | Path) -> str:
    names = dataset_basenames(output_dir)
    known = (f"; its LoRA metadata names only the folder basenames {', '.join(repr(n) for n in names)}, not where they are"
             if names else "")
    return (f"{output_dir}: cannot find the run's training data (no saved --config_file or dataset config TOML there{known}): "
            "give --reference FOLDER, DATASET.toml or ref.json")


def checkpoint_name(output_name: str | None, kind: str, number: int, ext: str = ".safetensors") -> str:
    """sd-scripts' file name for the checkpoint saved at a step or epoch end."""
    if kind == "step":
        return f"{output_name or 'at'}-step{number:08d}{ext}"
    return f"{output_name or 'epoch'}-{number:06d}{ext}"


def checkpoint_info(output_dir: str | Path, output_name: str | None, kind: str, number: int) -> tuple[str | None, int | None]:
    """(checkpoint file name, its ``ss_steps``) for a sampling point, when the file is still there."""
    for ext in (".safetensors", ".ckpt", ".pt"):
        name = checkpoint_name(output_name, kind, number, ext)
        p = Path(output_dir) / name
        if p.exists():
            steps = safetensors_metadata(p).get("ss_steps") if ext == ".safetensors" else None
            return name, int(steps) if steps and str(steps).isdigit() else None
    return None, None


def load_run_record(output_dir: str | Path) -> dict:
    """The run record training wrote (``consistency/run.json``), or {} when there is none. The
    record only helps find things: a damaged one is said in one line and left out."""
    p = Path(output_dir) / FOLDER / RUN_RECORD
    try:
        rec = read_json(p, "run record", "the run is read without it", nonfinite_as_null=True)
    except OSError:
        return {}
    except DamagedFileError as e:
        logger.warning("%s", e)
        return {}
    if not isinstance(rec, dict):
        logger.warning("%s: run record is not a JSON object: the run is read without it", p)
        return {}
    bad = [k for k in ("tensorboard_dir", "logging_dir", "output_dir") if k in rec and not isinstance(rec[k], (str, type(None)))]
    if bad:
        logger.warning("%s: run record's %s not text: left out", p, ", ".join(bad))
    return {k: v for k, v in rec.items() if k not in bad}


def _event_dirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("events.out.tfevents.*")}) if root.is_dir() else []


def _session_time(d: Path, root: Path) -> datetime | None:
    """The timestamp sd-scripts puts in the log folder name (``{log_prefix}YYYYmmddHHMMSS``)."""
    for part in [d, *d.parents]:
        m = _TS_DIR.search(part.name)
        if m:
            try:
                return datetime.strptime(m.group(1), "%Y%m%d%H%M%S")
            except ValueError:
                return None
        if part == root:
            break
    return None


def find_tensorboard_dir(output_dir: str | Path, logging_dir: str | Path | None = None,
                         started: datetime | None = None) -> Path | None:
    """The TensorBoard folder of the run in ``output_dir``.

    Order: ``logging_dir`` when given; the folder the training integration recorded in
    ``consistency/run.json``; the ``logging_dir`` of a saved config; event files under the
    output folder. sd-scripts logs into ``logging_dir/{log_prefix}{timestamp}/``: among
    several sessions, the latest one that started before ``started`` (the first sample) wins.
    """
    output_dir = Path(output_dir)
    roots: list[Path] = []
    if logging_dir:
        roots.append(Path(logging_dir))
    rec = load_run_record(output_dir).get("tensorboard_dir")
    if rec and Path(rec).is_dir():
        return Path(rec)
    for f in _candidates(output_dir):
        try:
            raw = f.read_text(encoding="utf-8")
            cfg = _flatten(tomllib.loads(raw) if f.suffix == ".toml" else json.loads(raw))
        except (OSError, ValueError, AttributeError):
            continue
        value = cfg.get("logging_dir") if isinstance(cfg, dict) else None
        if isinstance(value, str) and value.strip():
            found = _existing(value.strip(), f)
            if found is not None:
                roots.append(found)
    roots.append(output_dir)
    for root in roots:
        dirs = _event_dirs(root)
        if not dirs:
            continue
        timed = [(t, d) for d in dirs if (t := _session_time(d, root)) is not None]
        if started is not None and timed:
            before = [(t, d) for t, d in timed if t <= started]
            if before:
                return max(before)[1]
        if timed:
            return max(timed)[1]
        return max(dirs, key=lambda d: d.stat().st_mtime)
    return None


def read_scalars(tb_dir: str | Path, prefix: str = "loss/") -> dict[str, list[tuple[int, float]]]:
    """Scalars whose tag starts with ``prefix`` from TensorBoard event files, as (step, value) lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for d in _event_dirs(Path(tb_dir)) or [Path(tb_dir)]:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0, "images": 1, "tensors": 1, "histograms": 1})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(prefix):
                out.setdefault(tag, []).extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}
