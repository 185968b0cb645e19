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
from .images import IMAGE_EXTENSIONS, list_images

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


class Walker:
    """How the folders of a reference are looked at. This one is the CLI's: any folder, uncapped.
    The ComfyUI nodes pass kohya_ext.comfy.folders.ConfinedWalker (allowed folders only, capped)."""

    def label(self, path: Path) -> str:
        """``path`` as messages show it."""
        return str(path)

    def subfolders(self, root: Path) -> list[Path]:
        """The folders directly inside ``root``, sorted."""
        return [d for d in sorted(root.iterdir()) if d.is_dir()]

    def images(self, folder: Path, recursive: bool = True) -> list[Path]:
        """Image files in ``folder`` (or ``[folder]`` for a file), sorted; KohyaExtError when there are none."""
        return list_images(folder, recursive=recursive)

    def has_images(self, folder: Path) -> bool:
        """Whether ``folder`` holds any image (an empty kohya subset folder is skipped, not an error)."""
        return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.glob("**/*"))

    def image_dir(self, written: str, config: Path) -> Path:
        """Where a dataset config's ``image_dir`` points: as sd-scripts reads it (the working folder),
        else relative to the config's folder."""
        image_dir = Path(written)
        if not image_dir.is_absolute() and not image_dir.exists():
            image_dir = (config.parent / image_dir).resolve()
        return image_dir


def groups_from_train_data_dir(root: Path, walker: Walker | None = None) -> list[ImageGroup] | None:
    """Groups of a kohya `train_data_dir` (`N_name` subfolders), or None if `root` is not one."""
    walker = walker or Walker()
    subsets = [d for d in walker.subfolders(root) if _KOHYA_SUBSET.match(d.name)]
    if not subsets:
        return None
    groups = []
    for d in subsets:
        name = _KOHYA_SUBSET.match(d.name).group(2).strip()
        if walker.has_images(d):  # an empty subset folder is not an error by itself
            groups.append(ImageGroup(name, walker.images(d), [str(d)], class_tokens=name))
    if not groups:
        raise KohyaExtError(f"{walker.label(root)}: kohya subset folders ({', '.join(d.name for d in subsets)}) hold no images")
    return _merge(groups)


#: the dataset-config keys kohya-ext reads, and the TOML type each must have (sd-scripts' own schema)
_SUBSET_TYPES: dict[str, tuple[type, str]] = {
    "image_dir": (str, "a path in quotes"), "class_tokens": (str, "text in quotes"),
    "is_reg": (bool, "true or false"), "recursive": (bool, "true or false"),
}


def subset_settings(path: Path | str, general: object, datasets: list) -> list[dict]:
    """Each subset's settings ([general] < [[datasets]] < [[datasets.subsets]]), with the types of
    the keys kohya-ext reads checked: a wrong one is one line naming the table and the key."""
    if not isinstance(general, dict):
        raise KohyaExtError(f"{path}: [general] must be a table")
    out = []
    for i, ds in enumerate(datasets, start=1):
        subsets = ds.get("subsets", []) if isinstance(ds, dict) else None
        if not isinstance(subsets, list) or not all(isinstance(sub, dict) for sub in subsets):
            raise KohyaExtError(f"{path}: [[datasets]] number {i} must be a table whose subsets are [[datasets.subsets]] tables")
        for j, sub in enumerate(subsets, start=1):
            merged = {**general, **{k: v for k, v in ds.items() if k != "subsets"}, **sub}
            for key, (kind, what) in _SUBSET_TYPES.items():
                if key in merged and not isinstance(merged[key], kind):
                    raise KohyaExtError(f"{path}: {key} = {merged[key]!r:.60} (dataset {i}, subset {j}) must be {what}")
            out.append(merged)
    return out


def groups_from_dataset_config(path: Path, walker: Walker | None = None) -> list[ImageGroup]:
    """Groups of a kohya dataset config TOML, leaving out `is_reg` subsets."""
    walker = walker or Walker()
    label = walker.label(path)
    try:
        cfg = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KohyaExtError(f"{label}: cannot read dataset config ({e})") from e
    datasets = cfg.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise KohyaExtError(f"{label}: not a kohya dataset config (no [[datasets]] table)")
    groups, skipped_reg = [], 0
    for merged in subset_settings(label, cfg.get("general", {}), datasets):
        if merged.get("is_reg", False):
            skipped_reg += 1
            continue
        if not merged.get("image_dir"):
            continue
        image_dir = walker.image_dir(merged["image_dir"], path)
        tokens = merged["class_tokens"].strip() if merged.get("class_tokens") else None
        groups.append(ImageGroup(tokens or image_dir.name, walker.images(image_dir, recursive=merged.get("recursive", False)),
                                 [str(image_dir)], class_tokens=tokens))
    if not groups:
        reg = f" ({skipped_reg} regularisation subsets left out)" if skipped_reg else ""
        raise KohyaExtError(f"{label}: no training image subsets with an image_dir{reg}")
    return _merge(groups)


def resolve_image_groups(source: str | Path, walker: Walker | None = None) -> list[ImageGroup]:
    """Image groups for a folder, a kohya `train_data_dir` or a dataset config TOML.

    A plain folder (searched recursively) is one group named after the folder. ``walker``:
    how folders are looked at (default: the CLI's, see :class:`Walker`).
    """
    walker = walker or Walker()
    src = Path(source)
    if not src.exists():
        raise KohyaExtError(f"{walker.label(src)}: no such file or folder")
    if src.is_file() and src.suffix.lower() == ".toml":
        return groups_from_dataset_config(src, walker)
    if src.is_dir():
        groups = groups_from_train_data_dir(src, walker)
        if groups is not None:
            return groups
    return [ImageGroup(src.name if src.is_dir() else src.stem, walker.images(src), [str(src)])]
