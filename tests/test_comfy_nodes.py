"""ComfyUI nodes, called directly on tensors (no server): kohya_ext.comfy.core and kohya_ext.comfy.nodes.

The node classes need ComfyUI's ``comfy_api``: taken from the vendored ComfyUI
source (../shared/vendor/ComfyUI-*.tar.gz, extracted into a temporary folder and
appended to sys.path). ComfyUI's video types import PyAV, which this venv lacks
and no node here uses: a stand-in ``av`` module is lent while comfy_api imports.
Without the tarball the node-class tests skip; the core tests need only the
shared portraits (36 TADNE tiles; skipped without them).
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
from kohya_ext.comfy import core, folders
from kohya_ext.errors import KohyaExtError
from kohya_ext.image_score import IMAGE_SCORE_VERSION, image_score
from kohya_ext.comparison import compare

VENDOR = SHARED / "vendor"
CHARACTER = 1  # a TADNE tile nvxs finds a face in (0, 8 and 34 have none)
OTHERS = (2, 3)


# -- fixtures -------------------------------------------------------------------------------------

class _StandInAv(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``av`` and its submodules as empty stand-ins, for importing comfy_api without PyAV."""

    def find_spec(self, name, path, target=None):
        if name == "av" or name.startswith("av."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = mock.MagicMock(name=spec.name)
        m.__path__, m.__spec__, m.__name__ = [], spec, spec.name
        return m

    def exec_module(self, module):
        pass


def comfyui_tarball() -> Path | None:
    found = sorted(VENDOR.glob("ComfyUI-*.tar.gz")) if VENDOR.is_dir() else []
    return found[-1] if found else None


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """kohya_ext.comfy.nodes, imported against the vendored ComfyUI's comfy_api."""
    if importlib.util.find_spec("comfy_api") is None:
        tarball = comfyui_tarball()
        if tarball is None:
            pytest.skip(f"no vendored ComfyUI at {VENDOR}/ComfyUI-*.tar.gz (set KOHYA_EXT_SHARED): the node classes need comfy_api")
        dest = tmp_path_factory.mktemp("comfyui")
        with tarfile.open(tarball) as tf:
            tf.extractall(dest, filter="data")
        sys.path.append(str(dest / "ComfyUI"))  # appended: ComfyUI's top-level names must not shadow anyone's
    stand_in = None
    if importlib.util.find_spec("av") is None:
        stand_in = _StandInAv()
        sys.meta_path.insert(0, stand_in)
    try:
        from kohya_ext.comfy import nodes as mod
    finally:
        if stand_in is not None:
            sys.meta_path.remove(stand_in)
    return mod


def _pil(a):
    return Image.fromarray(a)


def variant(tile: np.ndarray, kind: str) -> np.ndarray:
    """Benign edits (as bench/validity.py's): the same character drawn the same way."""
    h, w = tile.shape[:2]
    if kind == "orig":
        return tile
    if kind == "mirror":
        return tile[:, ::-1].copy()
    if kind == "crop":
        return np.asarray(_pil(tile).crop((int(0.06 * w), int(0.06 * h), w, h)).resize((w, h), Image.Resampling.LANCZOS))
    if kind == "pad":
        p = int(0.08 * w)
        canvas = Image.new("RGB", (w + 2 * p, h + 2 * p), tuple(int(v) for v in tile[0, 0]))
        canvas.paste(_pil(tile), (p, p))
        return np.asarray(canvas.resize((w, h), Image.Resampling.LANCZOS))
    if kind == "rescale":
        return np.asarray(_pil(tile).resize((int(w * 0.75), int(h * 0.75)), Image.Resampling.LANCZOS).resize((w, h), Image.Resampling.LANCZOS))
    if kind == "jpeg":
        buf = io.BytesIO()
        _pil(tile).save(buf, "JPEG", quality=70)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    raise ValueError(kind)


@pytest.fixture(scope="module")
def spec():
    return core.backend_spec("nvxs")


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory, tadne_tiles) -> Path:
    d = tmp_path_factory.mktemp("ref") / "10_sks girl"
    d.mkdir()
    for k in ("orig", "mirror", "crop", "pad"):
        _pil(variant(tadne_tiles[CHARACTER], k)).save(d / f"{k}.png")
    return d.parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(ref_dir, spec, cache_dir):
    return core.reference_from_path(ref_dir, spec, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def mixed(tadne_tiles) -> tuple[list[np.ndarray], list[str]]:
    """The character's unseen edits, two other characters, a picture without a face."""
    imgs = [variant(tadne_tiles[CHARACTER], "rescale"), variant(tadne_tiles[CHARACTER], "jpeg")]
    imgs += [tadne_tiles[i] for i in OTHERS]
    imgs.append(np.full((512, 512, 3), 200, np.uint8))
    return imgs, ["same", "same", "other", "other", "no_face"]


@pytest.fixture(scope="module")
def mixed_tensor(mixed) -> torch.Tensor:
    return core.arrays_to_tensor(mixed[0])


# -- tensors ----------------------------------------------------------------------------------------

def test_tensor_round_trip_is_bit_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
    t = torch.from_numpy(a.astype(np.float32) / 255.0)  # what ComfyUI's LoadImage does
    back = core.tensor_to_arrays(t)
    assert len(back) == 3 and all(np.array_equal(b, a[i]) for i, b in enumerate(back))
    assert np.array_equal(core.tensor_to_arrays(torch.from_numpy(a))[1], a[1])  # uint8 tensors too
    assert np.array_equal(core.tensor_to_arrays(t[0])[0], a[0])  # one [H, W, C] image


def test_tensor_channels_and_values():
    grey = torch.full((2, 40, 40, 1), 0.5)
    assert core.tensor_to_arrays(grey)[0].shape == (40, 40, 3)
    rgba = torch.zeros((1, 40, 40, 4))
    rgba[..., 0] = 1.0
    rgba[:, :20, :, 3] = 1.0  # top half opaque red, bottom half transparent
    out = core.tensor_to_arrays(rgba)[0]
    assert out[0, 0].tolist() == [255, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]  # composited on white
    la = torch.zeros((1, 40, 40, 2))
    assert core.tensor_to_arrays(la)[0][0, 0].tolist() == [255, 255, 255]
    wild = torch.tensor([[[[float("nan"), 2.0, -1.0]]]]).expand(1, 40, 40, 3).contiguous()
    assert core.tensor_to_arrays(wild)[0][0, 0].tolist() == [0, 255, 0]
    assert core.tensor_to_arrays(torch.zeros((0, 64, 64, 3))) == []
    for bad in (torch.zeros((1, 8, 8, 5)), torch.zeros((8, 8)), np.zeros((1, 8, 8, 3))):
        with pytest.raises(KohyaExtError, match="IMAGE tensor"):
            core.tensor_to_arrays(bad)


def test_select_and_empty_tensor():
    t = torch.rand((4, 10, 12, 3))
    assert core.select(t, [1, 3]).shape == (2, 10, 12, 3)
    assert core.select(t, []).shape == (0, 10, 12, 3)
    assert core.arrays_to_tensor([], 10, 12).shape == (0, 10, 12, 3)


# -- references -------------------------------------------------------------------------------------

def test_reference_from_path_is_the_clis(reference, ref_dir, spec, cache_dir):
    from kohya_ext.scorer import load_references

    cli = load_references(ref_dir, spec, cache_dir=cache_dir, progress=False)[0]
    assert [m.to_dict() for m in reference.stats.measurements] == [m.to_dict() for m in cli.measurements]
    assert reference.stats.name == cli.name == "sks girl"
    assert reference.stats.counts["usable"] == 4


def test_reference_is_kept_until_its_files_change(reference, ref_dir, spec, cache_dir, tadne_tiles):
    steps = []
    again = core.reference_from_path(ref_dir, spec, cache_dir=cache_dir, progress=lambda d, t: steps.append((d, t)))
    assert again is reference and steps == [(1, 1)]
    before = core.source_fingerprint(ref_dir)
    extra = ref_dir / "10_sks girl" / "zz_extra.png"
    _pil(variant(tadne_tiles[CHARACTER], "jpeg")).save(extra)
    try:
        assert core.source_fingerprint(ref_dir) != before
        steps.clear()
        rebuilt = core.reference_from_path(ref_dir, spec, cache_dir=cache_dir, progress=lambda d, t: steps.append((d, t)))
        assert rebuilt is not reference and rebuilt.stats.counts["images"] == 5
        assert steps[0] == (0, 5) and steps[-1] == (5, 5)
    finally:
        extra.unlink()
    assert core.source_fingerprint(ref_dir) == before


def test_reference_from_ref_json(reference, tmp_path, spec, cache_dir):
    p = tmp_path / "ref.json"
    reference.stats.save(p)
    r = core.reference_from_path(p, core.backend_spec("auto"), cache_dir=cache_dir)
    assert r.stats.backend_name == "nvxs" and len(r.stats.measurements) == 4


def test_reference_errors_are_the_clis_lines(tmp_path, spec):
    with pytest.raises(KohyaExtError, match=r"nope: no such file or folder$"):
        core.reference_from_path(tmp_path / "nope", spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KohyaExtError, match="no images found"):
        core.reference_from_path(tmp_path / "empty", spec)
    blank = tmp_path / "blank"
    blank.mkdir()
    _pil(np.full((128, 128, 3), 255, np.uint8)).save(blank / "white.png")
    with pytest.raises(KohyaExtError, match="images has a usable face") as e:
        core.reference_from_path(blank, spec, use_cache=False)
    assert "\n" not in str(e.value)
    with pytest.raises(KohyaExtError, match="unknown backend"):
        core.backend_spec("dlib")
    with pytest.raises(KohyaExtError, match="no reference path"):
        core.resolve_source("  ", [tmp_path])
    with pytest.raises(KohyaExtError, match="reference image batch is empty"):
        core.reference_from_images(torch.zeros((0, 64, 64, 3)), spec)


def test_resolve_source_is_relative_to_the_allowed_roots(tmp_path, monkeypatch):
    root = Path(os.path.realpath(tmp_path)) / "root"
    (root / "chars" / "alice").mkdir(parents=True)
    assert core.resolve_source("chars/alice", [root]) == root / "chars" / "alice"
    assert core.resolve_source(' "chars/alice" ', [root]) == root / "chars" / "alice"
    # no longer: '~' expanded, paths tried as given (the working folder), absolute paths anywhere
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    for text in ("~/x", "x", str(tmp_path / "x")):
        with pytest.raises(KohyaExtError) as e:
            core.resolve_source(text, [root])
        assert str(e.value) == str(folders.refused(text))


def test_reference_from_images(spec, tadne_tiles, reference):
    kinds = sorted(("orig", "mirror", "crop", "pad"))  # the folder's files, in the order the folder lists them
    t = core.arrays_to_tensor([variant(tadne_tiles[CHARACTER], k) for k in kinds])
    r = core.reference_from_images(t, spec, name="alice")
    assert r.stats.name == "alice" and r.stats.counts["usable"] == 4
    # same pixels as the files: same ratios as the folder reference
    assert [m.ratios for m in r.stats.measurements] == [m.ratios for m in reference.stats.measurements]


# -- consistency and gate -----------------------------------------------------------------------------

def test_set_score_equals_the_clis(reference, mixed, mixed_tensor, tmp_path, cache_dir):
    from kohya_ext.scorer import Scorer

    for i, a in enumerate(mixed[0]):
        _pil(a).save(tmp_path / f"s{i}.png")
    cli = Scorer(reference.stats, reference.spec, cache_dir=cache_dir, progress=False).score_paths([tmp_path])
    res = core.consistency(reference, mixed_tensor, "en")
    assert res.score == cli.score
    assert res.report.score_version == cli.score_version
    assert res.text.splitlines()[1:] == cli.format_text().splitlines()[1:] or res.text == cli.format_text()
    assert len(res.overlays) == 1 and res.overlays[0].shape == mixed_tensor.shape and res.overlays[0].dtype == torch.float32
    assert 0.0 <= float(res.overlays[0].min()) and float(res.overlays[0].max()) <= 1.0


def test_per_image_scores_contract(reference, mixed, mixed_tensor):
    res = core.consistency(reference, mixed_tensor)
    ms = core.measure_tensor(mixed_tensor, reference.spec, reference.rules)
    kinds = mixed[1]
    for s, m, kind in zip(res.scores, ms, kinds):
        assert 0.0 <= s.score <= 1.0 and s.score == s.score
        assert s.score == compare(reference.stats, [m]).score  # the set score of a set of one
        assert s.version.endswith(f"+image{IMAGE_SCORE_VERSION}") and s.version.startswith("nvxs-v")
    faceless = res.scores[kinds.index("no_face")]
    assert faceless.score == 0.0 and faceless.status == "no_face" and faceless.reason == "no face detected"
    same = [s.score for s, k in zip(res.scores, kinds) if k == "same"]
    other = [s.score for s, k in zip(res.scores, kinds) if k == "other"]
    assert min(same) > max(other), (same, other)
    rows = json.loads(res.per_image_json())
    assert [r["index"] for r in rows] == list(range(len(kinds))) and rows[-1]["reason"] == "no face detected"


def test_gate_splits_as_the_per_image_scores_say(reference, mixed, mixed_tensor):
    res = core.consistency(reference, mixed_tensor)
    kinds = mixed[1]
    same = [s.score for s, k in zip(res.scores, kinds) if k == "same"]
    other = [s.score for s, k in zip(res.scores, kinds) if k == "other"]
    threshold = (min(same) + max(other)) / 2
    g = core.gate(reference, mixed_tensor, threshold)
    assert g.passed == [i for i, k in enumerate(kinds) if k == "same"]
    assert g.failed == [i for i, k in enumerate(kinds) if k != "same"]
    assert all((s.score >= threshold) == (s.index in g.passed) for s in g.scores)
    v = g.verdicts()
    assert v[kinds.index("no_face")]["reason"] == "no face detected"
    assert "below threshold" in v[kinds.index("other")]["reason"]
    everyone = core.gate(reference, mixed_tensor, 0.0)
    assert everyone.failed == [kinds.index("no_face")]  # a faceless image fails whatever the threshold
    with pytest.raises(KohyaExtError, match="threshold"):
        core.gate(reference, mixed_tensor, 1.5)


def test_batch_is_measured_once_for_both_nodes(reference, mixed_tensor, tadne_tiles):
    t = core.arrays_to_tensor([tadne_tiles[CHARACTER], tadne_tiles[5]])
    calls = []
    backend = reference.spec.create()
    real = backend.detect
    with mock.patch.object(type(backend), "detect", autospec=True,
                           side_effect=lambda self, imgs: calls.append(len(imgs)) or real(imgs)):
        core.consistency(reference, t)
        core.gate(reference, t, 0.5)
        core.gate(reference, t.clone(), 0.5)  # the same pixels in another tensor: not again
        with torch.inference_mode():  # as ComfyUI runs nodes: inference tensors, no version counter
            t3 = t.clone()
            core.gate(reference, t3, 0.5)
            t3[1] *= 0.5  # edited in place: measured again
            core.gate(reference, t3, 0.5)
    assert calls == [2, 2]


def test_a_list_of_batches_is_one_set(reference, mixed, mixed_tensor, tadne_tiles):
    """What list-producing nodes (Load Image Dataset from Folder) send: batches of any sizes, scored as one set."""
    small = core.arrays_to_tensor([np.asarray(_pil(a).resize((384, 384))) for a in mixed[0][2:]])
    items = [mixed_tensor[:2], small]
    whole = core.consistency(reference, items)
    assert len(whole.scores) == len(mixed[0]) and [o.shape[0] for o in whole.overlays] == [2, 3]
    assert [s.index for s in whole.scores] == list(range(len(mixed[0])))
    g = core.gate(reference, items, 0.0)
    assert g.failed == [4]
    sides = core.split_batches(items, g.failed)
    assert len(sides) == 1 and sides[0].shape == (1, 384, 384, 3)
    assert [t.shape[0] for t in core.split_batches(items, [0, 3])] == [1, 1]
    with pytest.raises(KohyaExtError, match="IMAGE tensor"):
        core.consistency(reference, [mixed_tensor, "not an image"])


def test_batch_sizes_and_odd_inputs(reference, tadne_tiles):
    # B = 0: a score of 0 and a report, empty outputs, no error
    empty = core.consistency(reference, torch.zeros((0, 64, 64, 3)))
    assert empty.score == 0.0 and "0 images" in empty.text and empty.overlays[0].shape == (0, 64, 64, 3)
    g = core.gate(reference, torch.zeros((0, 64, 64, 3)), 0.5)
    assert g.passed == [] and g.failed == []
    # B = 1, odd size, RGBA-like input (alpha 1 where the picture is)
    a = np.asarray(_pil(tadne_tiles[CHARACTER]).resize((333, 517)))
    rgba = torch.cat([core.arrays_to_tensor([a]), torch.ones((1, 517, 333, 1))], dim=-1)
    one = core.consistency(reference, rgba)
    assert one.overlays[0].shape == (1, 517, 333, 3) and len(one.scores) == 1
    assert one.scores[0].status == "ok"
    # tiny images count as unreadable, as tiny files do in the CLI
    tiny = core.consistency(reference, torch.rand((2, 16, 24, 3)))
    assert [s.status for s in tiny.scores] == ["unreadable", "unreadable"]
    assert "too small" in tiny.scores[0].reason and tiny.score == 0.0


# -- node classes (ComfyUI V3 API) --------------------------------------------------------------------

def test_schemas_and_entrypoint(nodes):
    ext = asyncio.run(nodes.comfy_entrypoint())
    listed = asyncio.run(ext.get_node_list())
    ids = [n.GET_SCHEMA().node_id for n in listed]
    assert ids == ["KohyaExtCharacterReference", "KohyaExtCharacterReferenceFromImages",
                   "KohyaExtCharacterConsistency", "KohyaExtConsistencyGate"]
    for n in listed:
        info = n.GET_NODE_INFO_V1()
        assert info["category"] == "kohya-ext" and info["display_name"].endswith("(kohya-ext)")
    gate = nodes.ConsistencyGate.GET_NODE_INFO_V1()
    assert gate["output"] == ["IMAGE", "IMAGE", "STRING", "STRING", "STRING", "INT", "INT"]
    assert nodes.CharacterConsistency.GET_NODE_INFO_V1()["output"] == ["FLOAT", "STRING", "STRING", "IMAGE"]
    assert nodes.CharacterReference.GET_NODE_INFO_V1()["output"][0] == "CHARACTER_REFERENCE"
    # the package-level entry point the root shim re-exports
    from kohya_ext.comfy import comfy_entrypoint

    assert isinstance(asyncio.run(comfy_entrypoint()), type(ext))


def test_reference_node_validates_and_fingerprints(nodes, ref_dir, tmp_path, monkeypatch):
    N = nodes.CharacterReference
    monkeypatch.setenv(folders.ALLOWED_DIRS_ENV, str(ref_dir))  # the reference folder is allow-listed; tmp_path is not
    assert N.validate_inputs(str(ref_dir)) is True  # absolute, inside an allowed root
    # outside the allowed folders: one message, whether the path exists or not
    assert N.validate_inputs(str(tmp_path / "missing")) == str(folders.refused(str(tmp_path / "missing")))
    assert N.validate_inputs(str(tmp_path)) == str(folders.refused(str(tmp_path)))
    assert "unknown device" in N.validate_inputs(str(ref_dir), device="gpu0")
    assert N.validate_inputs(None) is True
    f1 = N.fingerprint_inputs(str(ref_dir), "nvxs", "auto")
    assert f1 == N.fingerprint_inputs(str(ref_dir), "nvxs", "auto") and f1 != N.fingerprint_inputs(str(ref_dir), "auto", "auto")
    with pytest.raises(KohyaExtError, match="is not a file or folder under the allowed folders"):
        N.execute(str(tmp_path / "missing"), "nvxs", "auto")


def test_nodes_execute_on_tensors(nodes, ref_dir, mixed, mixed_tensor, reference, monkeypatch):
    monkeypatch.setenv(folders.ALLOWED_DIRS_ENV, str(ref_dir.parent))
    out = nodes.CharacterReference.execute(f"{ref_dir.name}", "nvxs", "auto")  # relative to the allow-listed folder
    ref, summary = out.args
    assert isinstance(ref, core.CharacterReference) and "4 usable faces" in summary
    assert ref.source == ref_dir.name and str(ref_dir.parent) not in summary  # no server path in the summary
    assert out.ui.as_dict() == {"text": (summary,)}
    # is_input_list nodes: ComfyUI sends every input as a list
    score, report, per_image, overlays = nodes.CharacterConsistency.execute([mixed_tensor], [ref], ["ko"]).args
    assert isinstance(score, float) and score == core.consistency(reference, mixed_tensor).score
    assert "일관성 점수" in report and len(json.loads(per_image)) == len(mixed[0])
    assert len(overlays) == 1 and overlays[0].shape == mixed_tensor.shape
    kinds = mixed[1]
    g = nodes.ConsistencyGate.execute([mixed_tensor], [ref], [0.0])
    passed, failed, pi, fi, verdicts, npass, nfail = g.args
    assert len(passed) == len(failed) == 1
    assert passed[0].shape[0] == npass == len(kinds) - 1 and failed[0].shape[0] == nfail == 1
    assert fi == str(kinds.index("no_face")) and pi == ",".join(str(i) for i, k in enumerate(kinds) if k != "no_face")
    assert torch.equal(failed[0][0], mixed_tensor[kinds.index("no_face")])
    assert json.loads(verdicts)[-1]["passed"] is False
    assert g.ui["kohya_ext"][0]["failed"] == [kinds.index("no_face")]


def test_gate_node_empty_side(nodes, reference, mixed_tensor):
    from comfy_execution.graph_utils import ExecutionBlocker

    g = nodes.ConsistencyGate.execute([mixed_tensor], [reference], [1.0])  # nothing passes
    passed, failed = g.args[:2]
    assert isinstance(passed, ExecutionBlocker) and passed.message is None  # downstream skipped silently
    assert failed[0].shape[0] == mixed_tensor.shape[0]
    passed, failed = nodes.ConsistencyGate.execute([mixed_tensor], [reference], [1.0], empty_side=["empty batch"]).args[:2]
    assert len(passed) == 1 and passed[0].shape == (0, *mixed_tensor.shape[1:])
    empty = torch.zeros((0, 64, 64, 3))
    g = nodes.ConsistencyGate.execute([empty], [reference], [0.5])
    assert all(isinstance(x, ExecutionBlocker) for x in g.args[:2]) and g.args[5:] == (0, 0)


def test_reference_from_images_node(nodes, tadne_tiles):
    t = core.arrays_to_tensor([variant(tadne_tiles[CHARACTER], k) for k in ("orig", "mirror")])
    ref, summary = nodes.CharacterReferenceFromImages.execute([t[:1], t[1:]], ["alice"], ["nvxs"], ["auto"]).args
    assert ref.stats.name == "alice" and "2 usable faces" in summary  # a list of batches: one reference
    assert nodes.CharacterReferenceFromImages.validate_inputs(["cuda:1"]) is True
    assert "unknown device" in nodes.CharacterReferenceFromImages.validate_inputs(["gpu"])


def test_per_image_score_of_an_unusable_face(reference):
    from kohya_ext.measure import ImageMeasurement

    s = image_score(reference.stats, ImageMeasurement(name="x", status="face_too_small", face_score=0.9))
    assert s.score == 0.0 and s.reason == "face too small" and s.near_copy is None
    u = image_score(reference.stats, ImageMeasurement(name="y", status="unreadable", error="y: file not found"))
    assert u.reason == "image unreadable: y: file not found"


def test_progress_bar_and_cancel(nodes, reference, mixed_tensor, monkeypatch):
    """Inside a ComfyUI run the nodes drive the V3 progress API and stop at the Cancel button."""
    import types

    import comfy_api.latest as latest
    import comfy_execution.utils as eu

    calls = []

    class FakeApi:
        def __init__(self):
            self.execution = types.SimpleNamespace(set_progress=lambda value, max_value: calls.append((value, max_value)))

    assert nodes._progress() is core._noop  # outside a run: nothing to report to
    monkeypatch.setattr(eu, "get_executing_context", lambda: types.SimpleNamespace(node_id="7"))
    monkeypatch.setattr(latest, "ComfyAPISync", FakeApi)
    core._MEASURED.clear()
    core.consistency(reference, mixed_tensor, progress=nodes._progress())
    assert calls[0] == (0.0, 5.0) and calls[-1] == (5.0, 5.0)

    class Cancelled(Exception):
        pass

    def interrupted():
        raise Cancelled

    monkeypatch.setitem(sys.modules, "comfy.model_management", types.SimpleNamespace(throw_exception_if_processing_interrupted=interrupted))
    core._MEASURED.clear()
    with pytest.raises(Cancelled):
        core.consistency(reference, mixed_tensor, progress=nodes._progress())
