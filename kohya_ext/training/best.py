"""The ``{output_name}-best`` copy: the evaluated weights, with our score in their metadata.

Keys are our own (``kohya_ext_*``): kohya's ``ss_steps`` restarts after a resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from ..io_utils import atomic_write_text

META_SCORE = "kohya_ext_consistency_score"
META_STEP = "kohya_ext_consistency_step"          # cumulative step (ours)
META_KOHYA_STEP = "kohya_ext_consistency_kohya_step"
META_EPOCH = "kohya_ext_consistency_epoch"
META_SOURCE = "kohya_ext_consistency_source"      # file the copy was made from
META_SCORE_VERSION = "kohya_ext_score_version"
META_BACKEND = "kohya_ext_backend"


def best_name(output_name: str | None, ext: str) -> str:
    return f"{output_name or 'last'}-best{ext}"


META_VAL_LOSS = "kohya_ext_validation_loss"


def best_metadata(row: dict) -> dict[str, str]:
    return {
        **({META_SCORE: f"{row['score']:.6f}"} if row.get("score") is not None else {}),
        **({META_VAL_LOSS: f"{row['val_loss']:.6f}"} if row.get("val_loss") is not None else {}),
        META_STEP: str(row["cum_step"]),
        META_KOHYA_STEP: str(row["kohya_step"]),
        META_EPOCH: str(row.get("epoch")),
        META_SCORE_VERSION: str(row.get("score_version")),
        META_BACKEND: str(row.get("backend")),
    }


def copy_with_metadata(src: str | Path, dst: str | Path, extra: dict[str, str]) -> Path:
    """Copy a checkpoint to ``dst`` atomically; safetensors get ``extra`` merged into their
    metadata, other formats get a ``<dst>.json`` side file holding it."""
    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if src.suffix == ".safetensors":
            with safe_open(str(src), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta.update(extra)
            meta[META_SOURCE] = src.name
            save_file(tensors, tmp, metadata=meta)
        else:
            shutil.copyfile(src, tmp)
            side = dst.with_name(dst.name + ".json")
            atomic_write_text(side, json.dumps({**extra, META_SOURCE: src.name}, indent=1))
        shutil.copymode(src, tmp)  # kohya's checkpoint's permissions, not mkstemp's 0600
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def umask_mode(path: str | Path) -> None:
    """The permissions a plain ``open(path, "w")`` would have given (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
