"""Where reference images live: a plain folder, a kohya `train_data_dir`, or a kohya `--dataset_config`.

kohya layouts:
- `train_data_dir` holds `N_name` subfolders (N = repeats, name = class tokens,
  e.g. `10_sks girl`); each is one subset.
- a dataset config TOML has `[[datasets]]` with `[[datasets.subsets]]`, each with
  `image_dir`, optional `class_tokens` and `is_reg`. Regularisation subsets
  (`is_reg = true`, or anything from `reg_data_dir`) are never part of the
  reference: they show other people/characters on purpose.
Several class tokens mean several characters: callers can build one reference per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KohyaExtError
from .images import list_images

from .toml_compat import tomllib

_KOHYA_SUBSET = re.compile(r"^(\d+)_(.+)$")


@dataclass
class ImageGroup:
    """Images of one subset / character. ``name`` is its class token (or folder name);
    ``class_tokens`` is set only where kohya has one (a folder name is not a prompt)."""

    name: str
    paths: list[Path] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    class_tokens: str | None = None


def _merge(groups: list[ImageGroup]) -> list[ImageGroup]:
    by_name: dict[str, ImageGroup] = {}
    for g in groups:
        tgt = by_name.setdefault(g.name, ImageGroup(g.name, class_tokens=g.class_tokens))
        tgt.paths.extend(p for p in g.paths if p not in tgt.paths)
        tgt.sources.extend(g.sources)
    return list(by_name.values())


def groups_from_train_data_dir(root: Path) -> list[ImageGroup] | None:
    """Groups of a kohya `train_data_dir` (`N_name` subfolders), or None if `root` is not one."""
    subsets = [d for d in sorted(root.iterdir()) if d.is_dir() and _KOHYA_SUBSET.match(d.name)]
    if not subsets:
        return None
    groups = []
    for d in subsets:
        name = _KOHYA_SUBSET.match(d.name).group(2).strip()
        try:
            paths = list_images(d)
        except KohyaExtError:
            continue  # an empty subset folder is not an error by itself
        groups.append(ImageGroup(name, paths, [str(d)], class_tokens=name))
    if not groups:
        raise KohyaExtError(f"{root}: kohya subset folders ({', '.join(d.name for d in subsets)}) hold no images")
    return _merge(groups)


def groups_from_dataset_config(path: Path) -> list[ImageGroup]:
    """Groups of a kohya dataset config TOML, leaving out `is_reg` subsets."""
    try:
        cfg = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KohyaExtError(f"{path}: cannot read dataset config ({e})") from e
    datasets = cfg.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise KohyaExtError(f"{path}: not a kohya dataset config (no [[datasets]] table)")
    general = cfg.get("general", {})
    groups, skipped_reg = [], 0
    for ds in datasets:
        for sub in ds.get("subsets", []):
            merged = {**general, **{k: v for k, v in ds.items() if k != "subsets"}, **sub}
            if merged.get("is_reg", False):
                skipped_reg += 1
                continue
            image_dir = merged.get("image_dir")
            if not image_dir:
                continue
            image_dir = Path(image_dir)
            if not image_dir.is_absolute():
                image_dir = (path.parent / image_dir).resolve() if not image_dir.exists() else image_dir
            tokens = str(merged["class_tokens"]).strip() if merged.get("class_tokens") else None
            groups.append(ImageGroup(tokens or image_dir.name, list_images(image_dir, recursive=bool(merged.get("recursive", False))),
                                     [str(image_dir)], class_tokens=tokens))
    if not groups:
        reg = f" ({skipped_reg} regularisation subsets left out)" if skipped_reg else ""
        raise KohyaExtError(f"{path}: no training image subsets with an image_dir{reg}")
    return _merge(groups)


def resolve_image_groups(source: str | Path) -> list[ImageGroup]:
    """Image groups for a folder, a kohya `train_data_dir` or a dataset config TOML.

    A plain folder (searched recursively) is one group named after the folder.
    """
    src = Path(source)
    if not src.exists():
        raise KohyaExtError(f"{src}: no such file or folder")
    if src.is_file() and src.suffix.lower() == ".toml":
        return groups_from_dataset_config(src)
    if src.is_dir():
        groups = groups_from_train_data_dir(src)
        if groups is not None:
            return groups
    return [ImageGroup(src.name if src.is_dir() else src.stem, list_images(src), [str(src)])]
