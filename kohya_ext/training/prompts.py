"""Evaluation prompts: the same prompts, seeds and sizes at every evaluation.

From ``--consistency_prompts`` (kohya's prompt-file format, .txt/.toml/.json), else derived
from the training captions. Prompts without ``--d``/``--w``/``--h`` get a fixed seed and
size (kohya's own default would be a random seed at 512x512, which makes scores noisy).
They are written as a JSON prompt file, which every sd-scripts sampler reads as is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import KohyaExtError
from ..io_utils import atomic_write_text

from ..toml_compat import tomllib

# kohya's per-prompt options: "--w 512 --h 512 --d 7 --s 28 --l 7.5 --n negative ..."
_OPTS = {
    "w": ("width", int), "h": ("height", int), "d": ("seed", int), "s": ("sample_steps", int),
    "l": ("scale", float), "g": ("guidance_scale", float), "n": ("negative_prompt", str),
    "ss": ("sample_sampler", str), "cn": ("controlnet_image", str), "ctr": ("cfg_trunc_ratio", float),
    "rcfg": ("renorm_cfg", float), "fs": ("flow_shift", str),
}
_OPT_RE = re.compile(r"^(ss|cn|ctr|rcfg|fs|w|h|d|s|l|g|n)\s+(.+)$", re.IGNORECASE | re.DOTALL)


def parse_prompt_line(line: str) -> dict[str, Any]:
    """One line of a kohya .txt prompt file as a prompt dict."""
    head, *parts = line.split(" --")
    out: dict[str, Any] = {"prompt": head.strip()}
    for part in parts:
        m = _OPT_RE.match(part.strip())
        if not m:
            continue
        key, conv = _OPTS[m.group(1).lower()]
        try:
            out[key] = conv(m.group(2).strip())
        except ValueError:
            raise KohyaExtError(f"prompt {line!r}: --{m.group(1)} {m.group(2)!r} is not a valid {conv.__name__}") from None
    return out


def load_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise KohyaExtError(f"--consistency_prompts {p}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".txt":
        items: list[Any] = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    elif p.suffix == ".toml":
        data = tomllib.loads(text).get("prompt", {})
        items = [{**{k: v for k, v in data.items() if k != "subset"}, **s} for s in data.get("subset", [])]
    elif p.suffix == ".json":
        items = json.loads(text)
    else:
        raise KohyaExtError(f"--consistency_prompts {p}: use a .txt, .toml or .json prompt file (kohya's format)")
    prompts = [parse_prompt_line(i) if isinstance(i, str) else dict(i) for i in items]
    if not prompts or not all(isinstance(d.get("prompt"), str) for d in prompts):
        raise KohyaExtError(f"--consistency_prompts {p}: holds no prompts")
    return prompts


def _caption(image: Path, extensions: list[str]) -> str | None:
    for ext in extensions:
        c = image.with_suffix(ext)
        if c.is_file():
            text = c.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if text and text[0].strip():
                return text[0].strip()
    return None


def derive_prompts(groups: list, n: int, caption_extension: str | None, source: str = "the training images") -> list[dict[str, Any]]:
    """``n`` prompts per character (image group): captions of evenly spaced training images,
    or the class token when an image has no caption. Never a folder name: a prompt that does
    not name the character renders someone else, and the score would measure nothing."""
    exts = [e if e.startswith(".") else "." + e for e in ([caption_extension] if caption_extension else []) + [".caption", ".txt"]]
    out = []
    for g in groups:
        paths = sorted(g.paths)
        if not paths:
            continue
        picks = [paths[round(i * (len(paths) - 1) / max(1, n - 1))] for i in range(min(n, len(paths)))] if n > 1 else [paths[0]]
        for p in picks:
            text = _caption(Path(p), exts) or g.class_tokens
            if text:
                out.append({"prompt": text, "character": g.name})
    if not out:
        raise KohyaExtError(f"{source}: no captions ({', '.join(exts)}) and no class tokens (kohya's N_token folders or "
                            f"class_tokens) to derive evaluation prompts from: pass --consistency_prompts FILE")
    return out


def default_prompts(args: Any, reference: str, n: int) -> list[dict[str, Any]]:
    """Evaluation prompts when none are given: from the training dataset sd-scripts trains on
    (``--dataset_config`` or ``--train_data_dir``, which the kohya_ss GUI writes into its TOML),
    whatever the reference is; from the reference only when there is no training dataset."""
    from ..datasets import resolve_image_groups

    source = getattr(args, "dataset_config", None) or getattr(args, "train_data_dir", None)
    if not source:
        if str(reference).endswith(".json"):
            raise KohyaExtError("with a ref.json reference, give --consistency_prompts FILE (there are no captions to derive prompts from)")
        source = reference
    return derive_prompts(resolve_image_groups(source), n, getattr(args, "caption_extension", None), source=str(source))


# What a user's own sample prompt fixes about how to render, besides the prompt text and seed.
_SAMPLER_KEYS = ("sample_steps", "scale", "guidance_scale", "negative_prompt", "sample_sampler", "cfg_trunc_ratio",
                 "renorm_cfg", "flow_shift")


def inherit_sampler_settings(prompts: list[dict[str, Any]], sample_prompts: str | None) -> list[dict[str, Any]]:
    """Derived prompts render the way the user's own ``--sample_prompts`` do (steps, CFG scale,
    guidance, negative prompt, sampler of its first prompt), since those settings suit the
    model; without a usable file, kohya's defaults apply (30 steps, scale 7.5)."""
    try:
        first = load_prompt_file(sample_prompts)[0] if sample_prompts and Path(sample_prompts).is_file() else {}
    except KohyaExtError:  # an empty or foreign file (the GUI always writes one, often empty)
        first = {}
    inherited = {k: first[k] for k in _SAMPLER_KEYS if first.get(k) not in (None, "")}
    return [{**inherited, **p} for p in prompts]


def fix_prompts(prompts: list[dict[str, Any]], seed: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Give every prompt a seed and a size (kept when given); number them."""
    out = []
    for i, p in enumerate(prompts):
        q = dict(p)
        q.setdefault("seed", seed + i)
        q.setdefault("width", size[0])
        q.setdefault("height", size[1])
        out.append(q)
    return out


def write_prompt_file(prompts: list[dict[str, Any]], path: str | Path) -> Path:
    """A JSON prompt file (kohya reads .json prompt files as a list of dicts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = {v[0] for v in _OPTS.values()} | {"prompt"}
    atomic_write_text(path, json.dumps([{k: v for k, v in p.items() if k in keep} for p in prompts], indent=1, ensure_ascii=False))
    return path


def parse_resolution(value: Any) -> tuple[int, int]:
    """kohya's ``--resolution`` ("512" or "512,768", or a tuple) as (width, height)."""
    if value is None:
        return (512, 512)
    if isinstance(value, (tuple, list)):
        w, h = (value[0], value[-1])
    else:
        parts = [int(x) for x in str(value).split(",")]
        w, h = parts[0], parts[-1]
    return int(w), int(h)


def assign_characters(prompts: list[dict[str, Any]], characters: list[str]) -> list[str]:
    """The character (class token) each prompt is scored against: its ``character`` key (JSON
    prompt files, derived prompts), else the class token its text contains (the longest one
    when several do). A prompt naming none is an error: it could be scored against no one."""
    out = []
    for i, p in enumerate(prompts):
        c = p.get("character")
        if c is None:
            hits = [t for t in characters if t.lower() in str(p.get("prompt", "")).lower()]
            c = max(hits, key=len) if hits else None
        if c not in characters:
            raise KohyaExtError(f"evaluation prompt {i + 1} ({str(p.get('prompt', ''))[:60]!r}) names none of the dataset's characters "
                                f"({', '.join(characters)}): put the class token in the prompt, or \"character\": \"TOKEN\" in a .json prompt file")
        out.append(c)
    return out
