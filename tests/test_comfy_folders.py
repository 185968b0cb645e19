"""The ComfyUI reference node's folder rules (kohya_ext.comfy.folders; docs/comfyui.md, "Folder rules").

Every test builds its own roots and "outside" folder under tmp_path. Walks only list files, so
the image files here are empty. The ComfyUI-facing tests (folder_paths, extra_model_paths.yaml,
the node class) use the vendored ComfyUI through test_comfy_nodes' ``nodes`` fixture and skip
without it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

import pytest

from kohya_ext.comfy import core, folders
from kohya_ext.datasets import resolve_image_groups
from kohya_ext.errors import KohyaExtError
from test_comfy_nodes import nodes  # noqa: F401  (fixture)


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


@pytest.fixture
def tree(tmp_path):
    """input/, models/kohya_ext_references/, studio/ (allow-listed) and outside/ (not allowed)."""
    real = Path(os.path.realpath(tmp_path))
    t = {k: real / k for k in ("input", "refs", "studio", "outside")}
    for d in t.values():
        d.mkdir()
    t["roots"] = [t["input"], t["refs"], t["studio"]]
    return t


def _message(fn) -> str:
    with pytest.raises(KohyaExtError) as e:
        fn()
    return str(e.value)


def _groups(groups) -> list[tuple]:
    return [(g.name, g.paths, g.sources, g.class_tokens) for g in groups]


# -- resolving the typed path ---------------------------------------------------------------------

def test_relative_and_absolute_forms_inside_the_roots(tree):
    roots = tree["roots"]
    _touch(tree["studio"] / "my_char" / "train" / "10_alice" / "a.png")
    _touch(tree["refs"] / "references" / "ref.json")
    _touch(tree["input"] / "sub" / "x.png")
    assert folders.resolve("my_char/train", roots) == tree["studio"] / "my_char" / "train"
    assert folders.resolve("references/ref.json", roots) == tree["refs"] / "references" / "ref.json"
    assert folders.resolve("sub/../sub/x.png", roots) == tree["input"] / "sub" / "x.png"  # '..' that stays inside
    assert folders.resolve(str(tree["studio"] / "my_char" / "train"), roots) == tree["studio"] / "my_char" / "train"
    assert core.resolve_source(' "my_char/train" ', roots) == tree["studio"] / "my_char" / "train"  # quotes trimmed
    # a symlink inside one root to a folder inside another: allowed, read through its real path
    (tree["input"] / "alias").symlink_to(tree["studio"] / "my_char")
    assert folders.resolve("alias/train", roots) == tree["studio"] / "my_char" / "train"
    # roots are searched in order: input first
    _touch(tree["studio"] / "sub" / "x.png")
    assert folders.resolve("sub/x.png", roots) == tree["input"] / "sub" / "x.png"
    with pytest.raises(KohyaExtError, match="no reference path given"):
        core.resolve_source("  ", roots)


ESCAPES = {
    "absolute": lambda t: str(t["outside"] / "secret"),
    "tilde": lambda t: "~/secret",
    "dotdot": lambda t: "../outside/secret",
    "dotdot inside a folder": lambda t: "sub/../../outside/secret",
    "symlink to the target": lambda t: "escape",
    "through a symlinked folder": lambda t: "door/secret",
}


@pytest.mark.parametrize("form", list(ESCAPES))
def test_escapes_are_refused_with_one_message_whether_the_target_exists_or_not(tree, form, monkeypatch):
    roots = tree["roots"]
    monkeypatch.setenv("HOME", str(tree["outside"]))  # '~' would lead outside if it were expanded
    (tree["input"] / "sub").mkdir()
    (tree["input"] / "escape").symlink_to(tree["outside"] / "secret")
    (tree["input"] / "door").symlink_to(tree["outside"])
    text = ESCAPES[form](tree)
    target = tree["outside"] / "secret"
    _touch(target / "a.png")
    exists = _message(lambda: folders.resolve(text, roots))
    shutil.rmtree(target)
    missing = _message(lambda: folders.resolve(text, roots))
    assert exists == missing == str(folders.refused(text))
    # the same answer as a path that simply is not there inside a root
    assert _message(lambda: folders.resolve("sub/nothing", roots)) == str(folders.refused("sub/nothing"))


def test_the_message_names_the_fix_on_one_line():
    msg = str(folders.refused("x/y"))
    assert "\n" not in msg and msg.startswith("reference path 'x/y' is not a file or folder under the allowed folders")
    for fix in ("input/", "models/kohya_ext_references/", "extra_model_paths.yaml", "$KOHYA_EXT_COMFY_ALLOWED_DIRS",
                "Folder rules"):
        assert fix in msg
    assert "\n" not in str(folders.refused("a\nb"))  # a typed newline cannot forge a second log line


def test_no_roots_refuses_everything(tree):
    _touch(tree["input"] / "a.png")
    assert _message(lambda: folders.resolve(str(tree["input"] / "a.png"), [])) == str(folders.refused(str(tree["input"] / "a.png")))


# -- walking a folder -----------------------------------------------------------------------------

def test_a_symlinked_image_leading_outside_is_refused_before_any_image_is_read(tree):
    roots = tree["roots"]
    char = tree["input"] / "char"
    _touch(char / "a.png")
    (char / "link.png").symlink_to(tree["outside"] / "secret.png")
    missing = _message(lambda: folders.image_groups(char, roots))
    _touch(tree["outside"] / "secret.png")
    assert _message(lambda: folders.image_groups(char, roots)) == missing == str(folders.refused("char/link.png"))
    # a symlinked image inside the roots is listed, as the CLI lists it
    (char / "link.png").unlink()
    (char / "link.png").symlink_to(_touch(tree["studio"] / "b.png"))
    assert _groups(folders.image_groups(char, roots)) == _groups(resolve_image_groups(char))
    assert [p.name for p in folders.image_groups(char, roots)[0].paths] == ["a.png", "link.png"]


def test_caps_trip_with_one_line(tree, monkeypatch):
    roots = tree["roots"]
    monkeypatch.setattr(folders, "MAX_IMAGES", 3)
    many = tree["input"] / "many"
    for i in range(4):
        _touch(many / f"{i}.png")
    msg = _message(lambda: folders.image_groups(many, roots))
    assert msg.startswith("reference path 'many' holds more than 3 images") and "\n" not in msg
    (many / "3.png").unlink()
    assert len(folders.image_groups(many, roots)[0].paths) == 3
    # the image cap counts over all subsets of a train_data_dir
    tdd = tree["input"] / "tdd"
    for sub in ("10_alice", "5_bob"):
        for i in range(2):
            _touch(tdd / sub / f"{i}.png")
    assert "more than 3 images" in _message(lambda: folders.image_groups(tdd, roots))

    monkeypatch.setattr(folders, "MAX_DEPTH", 2)
    _touch(tree["input"] / "deep" / "a" / "b" / "x.png")  # level 2: fine
    assert len(folders.image_groups(tree["input"] / "deep", roots)[0].paths) == 1
    (tree["input"] / "deep" / "a" / "b" / "c").mkdir()  # level 3, even without images
    msg = _message(lambda: folders.image_groups(tree["input"] / "deep", roots))
    assert msg == ("reference path 'deep' has folders more than 2 levels deep ('deep/a/b/c'): "
                   "name the folder of the training images themselves")

    monkeypatch.setattr(folders, "MAX_ENTRIES", 10)
    noise = tree["input"] / "noise"
    _touch(noise / "a.png")
    for i in range(12):
        _touch(noise / f"{i}.txt")
    msg = _message(lambda: folders.image_groups(noise, roots))
    assert msg.startswith("reference path 'noise' holds more than 10 files and folders") and "\n" not in msg


def test_the_walk_stops_at_the_cap_instead_of_listing_everything(tree, monkeypatch):
    roots = tree["roots"]
    big = tree["input"] / "big"
    for i in range(40):
        _touch(big / f"d{i:02d}" / "x.png")
    monkeypatch.setattr(folders, "MAX_IMAGES", 3)
    scanned = []
    real_scandir = os.scandir
    monkeypatch.setattr(folders.os, "scandir", lambda p: scanned.append(p) or real_scandir(p))
    with pytest.raises(KohyaExtError, match="more than 3 images"):
        folders.image_groups(big, roots)
    assert 1 < len(scanned) <= 6, len(scanned)  # big/ twice (kohya layout check, walk) and the folders up to the 4th image, not 41


def test_the_caps_fit_real_training_sets():
    assert folders.MAX_IMAGES >= 2000 and folders.MAX_DEPTH >= 2 and folders.MAX_ENTRIES >= 3 * folders.MAX_IMAGES


def test_same_groups_as_the_cli(tree):
    """folders.image_groups is datasets.resolve_image_groups under the rules: same groups, names, paths, order."""
    roots = tree["roots"]
    plain = tree["studio"] / "plain"
    for rel in ("b.png", "a.JPG", "notes.txt", "sub/c.webp", "sub/deeper/d.png", ".hidden.png"):
        _touch(plain / rel)
    (plain / "linked").symlink_to(tree["studio"] / "plain" / "sub")  # symlinked folders are not descended (as pathlib's **)
    tdd = tree["studio"] / "train"
    for rel in ("10_alice/a.png", "10_alice/x/b.png", "5_alice/c.png", "3_bob/d.png", "2_empty/readme.txt", "logs/e.png"):
        _touch(tdd / rel)
    imgs = tree["studio"] / "imgs"
    for rel in ("a.png", "nested/b.png"):
        _touch(imgs / "one" / rel)
        _touch(imgs / "two" / rel)
        _touch(imgs / "reg" / rel)
    toml = tree["studio"] / "cfg" / "dataset.toml"
    toml.parent.mkdir()
    toml.write_text(f"""
[general]
recursive = true
[[datasets]]
  [[datasets.subsets]]
  image_dir = '{imgs / "one"}'
  class_tokens = 'alice'
  [[datasets.subsets]]
  image_dir = '../imgs/two'
  recursive = false
  [[datasets.subsets]]
  image_dir = '{imgs / "reg"}'
  is_reg = true
""")
    for src in (plain, tdd, toml, imgs / "one" / "a.png"):
        assert _groups(folders.image_groups(src, roots)) == _groups(resolve_image_groups(src)), src
    assert [g.name for g in folders.image_groups(tdd, roots)] == ["alice", "bob"]
    assert [len(g.paths) for g in folders.image_groups(toml, roots)] == [2, 1]


# -- dataset configs --------------------------------------------------------------------------------

def test_dataset_config_image_dir_outside_the_roots_is_refused(tree, monkeypatch):
    roots = tree["roots"]
    toml = tree["studio"] / "char" / "dataset.toml"
    toml.parent.mkdir()
    outside = tree["outside"] / "private"
    for written in (str(outside), "../../outside/private"):
        toml.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{written}'\n")
        _touch(outside / "a.png")
        scanned = []
        real_scandir = os.scandir
        monkeypatch.setattr(folders.os, "scandir", lambda p: scanned.append(p) or real_scandir(p))
        exists = _message(lambda: folders.image_groups(toml, roots))
        monkeypatch.undo()
        shutil.rmtree(outside)
        missing = _message(lambda: folders.image_groups(toml, roots))
        assert exists == missing == str(folders.refused(written))
        assert not [p for p in scanned if Path(p).is_relative_to(tree["outside"])]  # never even listed
    # through the core, as the node calls it: refused before any image is measured
    toml.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{outside}'\n")
    _touch(outside / "a.png")
    with mock.patch.object(core, "measure_files") as measured:
        with pytest.raises(KohyaExtError, match="under the allowed folders"):
            core.reference_from_path(toml, core.backend_spec("nvxs"), use_cache=False, roots=roots)
    measured.assert_not_called()
    assert core.source_fingerprint(toml, roots) == f"error: {folders.refused(str(outside))}"


def test_a_relative_image_dir_is_never_looked_up_in_the_servers_working_folder(tree, monkeypatch):
    """datasets.py tries the working folder first; on a server that would let a workflow probe it."""
    roots = tree["roots"]
    _touch(tree["outside"] / "imgs" / "a.png")
    monkeypatch.chdir(tree["outside"])
    toml = tree["studio"] / "dataset.toml"
    toml.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    assert _message(lambda: folders.image_groups(toml, roots)) == str(folders.refused("imgs"))
    _touch(tree["studio"] / "imgs" / "b.png")
    assert [p.name for p in folders.image_groups(toml, roots)[0].paths] == ["b.png"]


# -- the roots, from ComfyUI and the environment --------------------------------------------------

def test_roots_outside_comfyui_are_the_environments(tree, monkeypatch):
    monkeypatch.setattr(folders, "_folder_paths", lambda: None)
    monkeypatch.setenv(folders.ALLOWED_DIRS_ENV, os.pathsep.join([str(tree["studio"]), "", str(tree["studio"]), str(tree["refs"])]))
    assert folders.allowed_roots() == [tree["studio"], tree["refs"]]
    monkeypatch.delenv(folders.ALLOWED_DIRS_ENV)
    assert folders.allowed_roots() == []


def test_roots_from_comfyui_folder_paths_and_extra_model_paths_yaml(nodes, tree, tmp_path, monkeypatch):  # noqa: F811
    """The vendored ComfyUI's own folder_paths and extra_model_paths.yaml loader give the references folders."""
    import folder_paths
    from utils.extra_config import load_extra_path_config

    fresh = {k: (list(v[0]), v[1]) for k, v in folder_paths.folder_names_and_paths.items() if k != folders.FOLDER_NAME}
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", fresh)
    monkeypatch.setattr(folder_paths, "models_dir", str(tree["refs"].parent / "models"))
    monkeypatch.setattr(folder_paths, "input_directory", str(tree["input"]))
    yaml = tmp_path / "extra_model_paths.yaml"
    yaml.write_text(f"studio:\n  base_path: {tree['refs'].parent}\n  {folders.FOLDER_NAME}: |\n    shared_refs\n    more_refs\n")
    load_extra_path_config(str(yaml))  # ComfyUI reads the yaml before it imports custom nodes
    folders.register_folder()
    folders.register_folder()  # idempotent
    monkeypatch.setenv(folders.ALLOWED_DIRS_ENV, str(tree["studio"]))
    base = tree["refs"].parent
    assert folders.allowed_roots() == [tree["input"], base / "shared_refs", base / "more_refs",
                                       base / "models" / folders.FOLDER_NAME, tree["studio"]]
    # the node reads relative to them, and nothing else
    _touch(base / "more_refs" / "alice" / "a.png")
    node = nodes.CharacterReference
    assert node.validate_inputs("alice") is True
    assert node.validate_inputs(str(tree["outside"])) == str(folders.refused(str(tree["outside"])))
    assert node.fingerprint_inputs(str(tree["outside"]), "nvxs", "auto") == f"error: {folders.refused(str(tree['outside']))}"
    with pytest.raises(KohyaExtError, match="under the allowed folders"):
        node.execute("../outside", "nvxs", "auto")
