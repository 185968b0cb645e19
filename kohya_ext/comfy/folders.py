"""Which folders the "Character reference" node may read (docs/comfyui.md, "Folder rules").

On a shared ComfyUI server the node's path is typed by whoever writes the workflow, so it must not
reach the host's other files: it reads only under the allowed roots (ComfyUI's input folder, the
folders ComfyUI knows as ``kohya_ext_references``, registered here, and ``$KOHYA_EXT_COMFY_ALLOWED_DIRS``).
Everything refused and everything not found gives one message (:func:`refused`), so the answer never
tells whether a path outside the roots exists. Folder walks are capped (:data:`MAX_IMAGES`,
:data:`MAX_DEPTH`, :data:`MAX_ENTRIES`) and stop at the first excess.

:func:`image_groups` is kohya_ext.datasets.resolve_image_groups walked by :class:`ConfinedWalker`
(same groups, names, paths and order as the CLI's, which walks unconfined).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..datasets import ImageGroup, Walker, resolve_image_groups
from ..errors import KohyaExtError
from ..images import IMAGE_EXTENSIONS, no_images_error

#: the folder_paths name of the references folders (models/kohya_ext_references; extra_model_paths.yaml key)
FOLDER_NAME = "kohya_ext_references"
#: folders the server owner allows besides ComfyUI's, os.pathsep-separated absolute paths
ALLOWED_DIRS_ENV = "KOHYA_EXT_COMFY_ALLOWED_DIRS"
#: image files one reference may read: kohya training sets hold 10-2000 images; 2.5x the largest
#: leaves room; more is a whole image library (tens of minutes of nvxs), not one character
MAX_IMAGES = 5000
#: folder levels below the named folder: kohya needs 1 (train_data_dir/N_name/*.png), recursive
#: subsets a few more; deeper trees are archives or whole disks
MAX_DEPTH = 5
#: directory entries looked at (any kind): a set carries captions and latent caches beside each
#: image (~3 entries an image); this stops a walk of a huge tree that holds few images
MAX_ENTRIES = 50_000


def _folder_paths():
    """ComfyUI's folder_paths module, or None outside ComfyUI (then only $KOHYA_EXT_COMFY_ALLOWED_DIRS counts)."""
    try:
        import folder_paths
    except Exception:  # not inside ComfyUI: fewer roots, never more
        return None
    return folder_paths


def register_folder() -> None:
    """Add models/kohya_ext_references under FOLDER_NAME (after any extra_model_paths.yaml folders; idempotent)."""
    fp = _folder_paths()
    if fp is not None:
        fp.add_model_folder_path(FOLDER_NAME, os.path.join(fp.models_dir, FOLDER_NAME))


def allowed_roots() -> list[Path]:
    """The allowed roots as real paths, in search order: input, the references folders, $KOHYA_EXT_COMFY_ALLOWED_DIRS."""
    dirs: list[str] = []
    fp = _folder_paths()
    if fp is not None:
        register_folder()
        dirs += [fp.get_input_directory(), *fp.get_folder_paths(FOLDER_NAME)]
    dirs += os.environ.get(ALLOWED_DIRS_ENV, "").split(os.pathsep)
    roots: list[Path] = []
    for d in dirs:
        if d.strip():
            r = Path(os.path.realpath(os.path.expanduser(d.strip())))
            if r not in roots:
                roots.append(r)
    return roots


def refused(text: str) -> KohyaExtError:
    """The one answer for a path outside the roots or not found under them (it never says which)."""
    return KohyaExtError(
        f"reference path {text!r} is not a file or folder under the allowed folders (ComfyUI's input/, "
        f"models/{FOLDER_NAME}/, ${ALLOWED_DIRS_ENV}): type a path relative to one of them (e.g. my_char/train); "
        f"put the training images or ref.json there, or have the server owner allow their folder "
        f"({FOLDER_NAME} in extra_model_paths.yaml or ${ALLOWED_DIRS_ENV}; docs/comfyui.md, Folder rules)")


def _inside(p: Path, roots: Sequence[Path]) -> bool:
    return any(p.is_relative_to(r) for r in roots)


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(p))


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # e.g. a name too long: it exists nowhere
        return False


def resolve(text: str, roots: Sequence[Path]) -> Path:
    """The real path of ``text`` typed relative to an allowed root (or absolute inside one); else :func:`refused`.

    No ``~`` expansion; ``..`` and symlinks count where they lead (the real path must lie
    inside a root and exist). Roots are tried in order.
    """
    if "\0" in text:
        raise refused(text)
    # an anchor (/x, C:\x, even drive-relative C:x) is never joined onto a root
    candidates = [text] if Path(text).anchor else [os.path.join(r, text) for r in roots]
    for c in candidates:
        real = _real(c)
        if _inside(real, roots) and _exists(real):  # containment first: outside is refused whether it exists or not
            return real
    raise refused(text)


def shown(p: Path, roots: Sequence[Path]) -> str:
    """``p`` as a user would type it: relative to its root (messages and summaries show no server paths)."""
    for r in roots:
        if p.is_relative_to(r):
            return p.relative_to(r).as_posix() if p != r else r.name
    return p.name


class _Budget:
    """One reference's walk against the caps (over all its folders): raises at the first excess."""

    def __init__(self, label: str):
        self.label, self.images, self.entries = label, 0, 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise KohyaExtError(f"reference path {self.label!r} holds more than {MAX_ENTRIES} files and folders (the most "
                                f"one reference looks through): name the folder of the training images themselves")

    def image(self) -> None:
        self.images += 1
        if self.images > MAX_IMAGES:
            raise KohyaExtError(f"reference path {self.label!r} holds more than {MAX_IMAGES} images (the most one reference "
                                f"reads): name one character's training folder, or build a ref.json with "
                                f"`kohya-ext reference` and use that")


class _Unreadable(KohyaExtError):
    pass


def _scan(folder: Path, roots: Sequence[Path], budget: _Budget) -> list[os.DirEntry]:
    """One folder's entries, counted; a symlink leading outside the roots is refused whatever it points at."""
    out = []
    try:
        it = os.scandir(folder)
    except OSError as e:
        raise _Unreadable(f"{shown(folder, roots)}: cannot read the folder ({e.strerror})") from None
    with it:
        for e in it:
            budget.entry()
            if e.is_symlink() and not _inside(_real(e.path), roots):  # before any is_dir/is_file: no existence probe
                raise refused(shown(Path(e.path), roots))
            out.append(e)
    return out


def _walk(top: Path, roots: Sequence[Path], budget: _Budget, recursive: bool = True, depth: int = 0,
          listed: list[os.DirEntry] | None = None) -> list[Path]:
    """Image files under ``top`` as images.list_images lists them (sorted; symlinked subfolders not descended, as
    pathlib's ``**``), capped. ``depth`` is ``top``'s level below the named folder; ``listed`` its entries if scanned."""
    found: list[Path] = []
    stack: list[tuple[Path, int, list[os.DirEntry] | None]] = [(top, depth, listed)]
    while stack:
        folder, level, entries = stack.pop()
        if entries is None:
            try:
                entries = _scan(folder, roots, budget)
            except _Unreadable:
                if folder == top:
                    raise
                continue  # as pathlib's glob: an unreadable subfolder is skipped
        for e in entries:
            path = folder / e.name
            if e.is_dir():
                if recursive and not e.is_symlink():
                    if level >= MAX_DEPTH:
                        raise KohyaExtError(f"reference path {budget.label!r} has folders more than {MAX_DEPTH} levels "
                                            f"deep ({shown(path, roots)!r}): name the folder of the training images themselves")
                    stack.append((path, level + 1, None))
            elif Path(e.name).suffix.lower() in IMAGE_EXTENSIONS and e.is_file():
                budget.image()
                found.append(path)
    return sorted(found)


class ConfinedWalker(Walker):
    """kohya_ext.datasets.Walker for the nodes: only inside ``roots``, capped, messages without server paths.

    A dataset config's relative ``image_dir`` counts from the .toml's folder only (the CLI's walker
    tries the working folder first, which on a server is ComfyUI's and would let a workflow probe it).
    """

    def __init__(self, top: Path, roots: Sequence[Path]):
        self.top, self.roots = top, roots
        self.budget = _Budget(shown(top, roots))
        self._walked: dict[tuple[Path, bool], list[Path]] = {}

    def label(self, path: Path) -> str:
        return shown(path, self.roots)

    def subfolders(self, root: Path) -> list[Path]:
        return sorted(root / e.name for e in _scan(root, self.roots, self.budget) if e.is_dir() and not e.is_symlink())

    def _walk_once(self, folder: Path, recursive: bool) -> list[Path]:
        key = (folder, recursive)
        if key not in self._walked:
            depth = len(folder.relative_to(self.top).parts) if folder.is_relative_to(self.top) else 0
            self._walked[key] = _walk(folder, self.roots, self.budget, recursive, depth)
        return self._walked[key]

    def images(self, folder: Path, recursive: bool = True) -> list[Path]:
        if not (_inside(_real(folder), self.roots) and _exists(folder)):
            raise refused(self.label(folder))
        if folder.is_file():
            self.budget.image()
            return [folder]
        paths = self._walk_once(folder, recursive)
        if not paths:
            raise no_images_error(self.label(folder), recursive)
        return paths

    def has_images(self, folder: Path) -> bool:
        return bool(self._walk_once(folder, True))

    def image_dir(self, written: str, config: Path) -> Path:
        image_dir = Path(written)
        if not image_dir.is_absolute():
            image_dir = _real(config.parent / image_dir)
        if not (_inside(_real(image_dir), self.roots) and _exists(image_dir)):  # refused before it is looked at
            raise refused(written)
        return image_dir


def image_groups(src: Path, roots: Sequence[Path]) -> list[ImageGroup]:
    """kohya_ext.datasets.resolve_image_groups for a path from :func:`resolve`: a folder, kohya train_data_dir
    or dataset config, confined to ``roots`` and capped; nothing outside the roots is listed or read."""
    src = _real(src)
    if not (_inside(src, roots) and _exists(src)):
        raise refused(shown(src, roots))
    return resolve_image_groups(src, ConfinedWalker(src, roots))
