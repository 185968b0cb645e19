"""Where hrnet weights come from: explicit path > env var > weights dir > Hub cache > download;
what they must be: pinned Hub revision + SHA-256, a real weights file (sniffed), one-line errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import struct
import types

import pytest

from kohya_ext.backends import resolve_backend_name
from kohya_ext.backends import weights as W
from kohya_ext.errors import KohyaExtError, WeightsNotFoundError

ALL_ENV = [*W.ENV_VARS.values(), W.DIR_ENV, "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No weights anywhere: no env vars, an empty Hub cache, the Hub offline."""
    for var in ALL_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _file(path, content: bytes = b"weights") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def test_repos_match_the_package():
    detector = pytest.importorskip("anime_face_detector.detector")
    assert W.HF_REPOS == detector.HF_MODEL_REPOS
    assert set(W.MODEL_NAMES) == set(detector.MODEL_NAMES)


def test_resolution_order(clean_env, monkeypatch):
    tmp = clean_env
    explicit = _file(tmp / "a" / "mine.safetensors")
    from_env = _file(tmp / "b" / "env.safetensors")
    folder = tmp / "dir"
    _file(folder / "hrnetv2.safetensors")
    monkeypatch.setenv(W.DIR_ENV, str(folder))
    assert W.find_weights("hrnetv2").source == f"${W.DIR_ENV}"
    assert W.find_weights("hrnetv2").path == folder / "hrnetv2.safetensors"
    monkeypatch.setenv("KOHYA_EXT_HRNET_WEIGHTS", from_env)
    assert W.find_weights("hrnetv2").path.name == "env.safetensors"
    wf = W.find_weights("hrnetv2", explicit)
    assert (wf.path.name, wf.source) == ("mine.safetensors", "argument")
    # the env var of one model does not leak into another
    assert W.find_weights("yolov3") is None


def test_weights_dir_accepts_legacy_pth_names(clean_env, monkeypatch):
    folder = clean_env / "dir"
    _file(folder / "mmdet_anime-face_yolov3.pth")
    monkeypatch.setenv(W.DIR_ENV, str(folder))
    assert W.find_weights("yolov3").path.name == "mmdet_anime-face_yolov3.pth"
    _file(folder / "yolov3.safetensors")  # safetensors wins over .pth
    assert W.find_weights("yolov3").path.name == "yolov3.safetensors"


def test_missing_explicit_file_is_an_error_not_a_fallback(clean_env, monkeypatch):
    folder = clean_env / "dir"
    _file(folder / "hrnetv2.safetensors")
    monkeypatch.setenv(W.DIR_ENV, str(folder))
    with pytest.raises(WeightsNotFoundError, match="--landmark-weights"):
        W.find_weights("hrnetv2", clean_env / "nope.safetensors")
    monkeypatch.setenv("KOHYA_EXT_HRNET_WEIGHTS", str(clean_env / "typo.safetensors"))
    with pytest.raises(WeightsNotFoundError, match=r"\$KOHYA_EXT_HRNET_WEIGHTS"):
        W.find_weights("hrnetv2")


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _pin_sha(monkeypatch, model: str, content: bytes) -> W.Pin:
    """Make ``content`` the pinned bytes of ``model`` (the real revision stays)."""
    pin = dataclasses.replace(W.PINS[model], sha256=_sha(content))
    monkeypatch.setitem(W.PINS, model, pin)
    return pin


def _cache_entry(root, model: str, rev: str, content: bytes) -> None:
    # the layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<rev>/file}
    repo_dir = root / "hf_home" / "hub" / ("models--" + W.HF_REPOS[model].replace("/", "--"))
    _file(repo_dir / "refs" / "main", rev.encode())
    _file(repo_dir / "snapshots" / rev / "model.safetensors", content)


def test_hub_cache_is_used_without_network(clean_env, monkeypatch):
    pin = _pin_sha(monkeypatch, "hrnetv2", b"pinned bytes")
    _cache_entry(clean_env, "hrnetv2", pin.revision, b"pinned bytes")
    wf = W.find_weights("hrnetv2", download=True)
    assert wf.source == "hub cache" and wf.path.name == "model.safetensors"
    assert pin.revision in str(wf.path)
    assert W.check_pin(wf) == "pinned"


def test_hub_cache_at_another_revision_is_used_only_with_the_pinned_bytes(clean_env, monkeypatch):
    # main moved past the pin (say a README commit): the same bytes are the pinned file
    pin = _pin_sha(monkeypatch, "hrnetv2", b"pinned bytes")
    other = "0123456789abcdef0123456789abcdef01234567"
    _cache_entry(clean_env, "hrnetv2", other, b"pinned bytes")
    wf = W.find_weights("hrnetv2")
    assert wf.source == "hub cache" and other in str(wf.path)
    # other bytes there are refused (offline, nothing to download): one line with the fix
    _file(wf.path, b"new upstream bytes")
    with pytest.raises(W.WeightsChecksumError) as e:
        W.find_weights("hrnetv2", download=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert _sha(b"new upstream bytes")[:16] in msg and pin.sha256[:16] in msg
    assert f"--revision {pin.revision}" in msg and "delete" in msg
    ok, why = W.hrnet_weights_status(face_detector=None)
    assert not ok and "is not the pinned" in why


def test_download_passes_the_pinned_revision_and_refuses_other_bytes(clean_env, monkeypatch):
    import huggingface_hub

    calls = []
    page = b"<!DOCTYPE html><html>rate limited</html>"

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, kw.get("revision"), kw.get("local_files_only", False)))
        if kw.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return _file(clean_env / "dl" / kw["revision"] / filename, page)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    pin = W.PINS["hrnetv2"]
    with pytest.raises(W.WeightsChecksumError) as e:
        W.find_weights("hrnetv2", download=True)
    # the pinned commit is asked for, in the cache and from the network (main only as a cache fallback)
    assert calls == [(pin.repo, pin.revision, True), (pin.repo, None, True), (pin.repo, pin.revision, False)]
    msg = str(e.value)
    assert "\n" not in msg
    assert re.search(rf"model\.safetensors \(hub download\): sha256 {_sha(page)[:16]} is not the pinned {pin.sha256[:16]}", msg)
    assert f"huggingface-cli download {pin.repo} model.safetensors --revision {pin.revision}" in msg
    assert "delete" in msg and "--landmark-weights" in msg
    # through the backend's resolver as well
    with pytest.raises(W.WeightsChecksumError):
        W.resolve_weights(["hrnetv2"])
    # the same bytes as the pin are accepted
    _pin_sha(monkeypatch, "hrnetv2", page)
    wf = W.find_weights("hrnetv2", download=True)
    assert wf.source == "hub download" and W.check_pin(wf) == "pinned"


def test_unpinned_hub_file_is_said_once(clean_env, monkeypatch, caplog):
    import huggingface_hub

    revisions = []

    def fake_download(repo_id, filename, **kw):
        revisions.append(kw.get("revision"))
        if kw.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return _file(clean_env / "dl" / filename, b"faster-rcnn bytes")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        wf = W.find_weights("faster-rcnn", download=True)
        assert W.check_pin(wf) == "unpinned"
        assert W.check_pin(wf) == "unpinned"
    assert revisions == [None, None]  # no pin: the default branch
    notes = [r.getMessage() for r in caplog.records if "checksum not pinned" in r.getMessage()]
    assert len(notes) == 1 and _sha(b"faster-rcnn bytes")[:16] in notes[0]
    assert wf.identity()["sha256"] == _sha(b"faster-rcnn bytes")[:16]


def test_pins_are_the_cited_values():
    """The pinned values and their sources are in weights.py; a typo here must fail loudly."""
    assert {m: p.repo for m, p in W.PINS.items()} == W.HF_REPOS
    for pin in W.PINS.values():
        assert pin.revision is None or re.fullmatch(r"[0-9a-f]{40}", pin.revision)
        for digest in (pin.sha256, pin.release_sha256):
            assert digest is None or re.fullmatch(r"[0-9a-f]{64}", digest)
        assert pin.release_file in {n for names in W.DIR_FILE_NAMES.values() for n in names}
    assert W.PINS["hrnetv2"].revision == "9b3435248b26aeb82e2a8578fe9d86d5d57158af"
    assert W.PINS["hrnetv2"].sha256 == "e71271376406a743c01528a0460637fcc06e72aeeea583f85007cc72dc8b7a4a"
    assert W.PINS["yolov3"].revision == "afdd4226a79ae8bb81f334dbcffd34f8cc000c38"
    assert W.PINS["yolov3"].sha256 == "23bbc708146bcbc1c910f00fe152adbc70d7658d875a0121eaf4ee61d978b2c4"
    # no public source found: not pinned, and the code says so (test_unpinned_hub_file_is_said_once)
    assert (W.PINS["faster-rcnn"].revision, W.PINS["faster-rcnn"].sha256) == (None, None)


def test_download_only_when_allowed_and_online(clean_env, monkeypatch):
    import huggingface_hub

    calls = []
    pin = _pin_sha(monkeypatch, "yolov3", b"weights")

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, kw.get("local_files_only", False)))
        if kw.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        assert kw["revision"] == pin.revision
        return _file(clean_env / "dl" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    repo = "hysts/anime-face-detector-yolov3"
    assert W.find_weights("yolov3", download=True) is None  # HF_HUB_OFFLINE=1: cache only
    assert calls == [(repo, True), (repo, True)]  # the pinned snapshot, then main's
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert W.find_weights("yolov3", download=False) is None  # status checks never download
    wf = W.find_weights("yolov3", download=True)
    assert wf.source == "hub download"
    assert calls[-1] == (repo, False)


def test_offline_with_nothing_raises_one_clear_line(clean_env):
    with pytest.raises(WeightsNotFoundError) as e:
        W.resolve_weights(["hrnetv2", "yolov3"])
    msg = str(e.value)
    assert "\n" not in msg
    for needle in (
        "hrnetv2", "yolov3", "model.safetensors",
        "hysts/anime-face-detector-hrnetv2", "hysts/anime-face-detector-yolov3",
        "KOHYA_EXT_HRNET_WEIGHTS", "KOHYA_EXT_YOLOV3_WEIGHTS", "KOHYA_EXT_WEIGHTS_DIR",
        "HF_HUB_OFFLINE", "huggingface-cli download hysts/anime-face-detector-hrnetv2",
        f"--revision {W.PINS['hrnetv2'].revision}",
    ):
        assert needle in msg, needle
    assert "faster-rcnn" not in msg  # names only what is missing


def test_status_false_then_true(clean_env, monkeypatch):
    ok, why = W.hrnet_weights_status()
    assert not ok and "KOHYA_EXT_HRNET_WEIGHTS" in why
    assert resolve_backend_name("auto")[0] == "nvxs"
    folder = clean_env / "dir"
    _file(folder / "hrnetv2.safetensors")
    monkeypatch.setenv(W.DIR_ENV, str(folder))
    ok, why = W.hrnet_weights_status()
    assert not ok and "yolov3" in why and "hrnetv2 (" not in why  # only the detector is missing
    ok, why = W.hrnet_weights_status(detector_weights=_file(clean_env / "y.pth"))
    assert ok, why
    assert resolve_backend_name("auto", detector_weights=str(clean_env / "y.pth"))[0] == "hrnet"
    ok, why = W.hrnet_weights_status(face_detector="faster-rcnn")
    assert not ok and "faster-rcnn" in why
    assert W.hrnet_weights_status(face_detector=None)[0]


def test_sha256_is_cached_by_path_mtime_and_size(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"abc")
    assert W.file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abcd")  # new size -> new entry, not the cached digest
    assert W.file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()
    st = path.stat()
    path.write_bytes(b"abce")  # same size; restore the mtime: the cache answers (that is its contract)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert W.file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()
    wf = W.WeightFile("hrnetv2", path, "argument")
    assert wf.identity() == {"file": "w.safetensors", "sha256": hashlib.sha256(b"abcd").hexdigest()[:16]}


# --- file type and loading -----------------------------------------------------------------
@pytest.fixture(scope="module")
def hrnet_files(tmp_path_factory):
    """Random hrnetv2 weights in the exact upstream layout, as .safetensors and as an mm*-era .pth."""
    pytest.importorskip("anime_face_detector")
    torch = pytest.importorskip("torch")
    from hrnet_fixtures import build_model, write_weights

    folder = tmp_path_factory.mktemp("hrnet_weights")
    st = write_weights(folder, "hrnetv2")
    pth = folder / "mmpose_anime-face_hrnetv2.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": build_model("hrnetv2").state_dict()}, pth)
    return types.SimpleNamespace(safetensors=st, pth=pth, folder=folder)


@pytest.fixture
def landmark_model():
    _landmark = pytest.importorskip("anime_face_detector._landmark")
    return _landmark.LandmarkModel()


def _load_error(model, path, source="argument", kind=W.WeightsFileError) -> str:
    with pytest.raises(kind) as e:
        W.load_state_dict_strict(model, W.WeightFile("hrnetv2", path, source))
    assert isinstance(e.value, KohyaExtError)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


NOT_WEIGHTS = ("not a weights file (neither safetensors nor a PyTorch checkpoint): "
               "point --landmark-weights at hysts' hrnetv2 model.safetensors (hysts/anime-face-detector-hrnetv2)")


def test_text_file_is_not_a_weights_file(tmp_path, landmark_model):
    # the reported case: torch.load on this answered "Unsupported operand 83"
    for name in ("notes.pth", "notes.safetensors", "notes.txt"):
        path = tmp_path / name
        path.write_text("Some notes about my LoRA\nnot weights at all\n")
        assert _load_error(landmark_model, path) == f"{path}: {NOT_WEIGHTS}"


def test_empty_file_and_html_page(tmp_path, landmark_model):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert "not a weights file (empty)" in _load_error(landmark_model, empty)
    html = tmp_path / "model.safetensors"
    html.write_text("<!DOCTYPE html><html><body>Access to model denied</body></html>")
    assert _load_error(landmark_model, html) == f"{html}: {NOT_WEIGHTS}"


def test_truncated_safetensors_is_one_line(tmp_path, landmark_model, hrnet_files):
    data = hrnet_files.safetensors.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut_data = tmp_path / "cut_data.safetensors"
    cut_data.write_bytes(data[: 8 + n + (len(data) - 8 - n) // 2])
    msg = _load_error(landmark_model, cut_data)
    assert "truncated safetensors file" in msg and f"the file has {(len(data) - 8 - n) // 2}" in msg
    assert "point --landmark-weights at hysts' hrnetv2 model.safetensors" in msg
    cut_header = tmp_path / "cut_header.safetensors"
    cut_header.write_bytes(data[: 8 + n // 2])
    assert "truncated safetensors file (its header alone needs" in _load_error(landmark_model, cut_header)
    bad_json = tmp_path / "bad_json.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 12) + b"{not json!!}")
    assert "damaged safetensors header" in _load_error(landmark_model, bad_json)


def test_damaged_pytorch_checkpoint_is_one_line(tmp_path, landmark_model, hrnet_files):
    import torch

    data = hrnet_files.pth.read_bytes()
    assert data[:4] == b"PK\x03\x04"  # torch.save's zip format
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    assert "cannot read this PyTorch checkpoint" in _load_error(landmark_model, cut)
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    assert "without a state dict" in _load_error(landmark_model, listed)


def test_fix_names_where_the_file_came_from(tmp_path, landmark_model):
    path = tmp_path / "x.safetensors"
    path.write_text("text")
    assert _load_error(landmark_model, path, "$KOHYA_EXT_HRNET_WEIGHTS").endswith(
        "point $KOHYA_EXT_HRNET_WEIGHTS at hysts' hrnetv2 model.safetensors (hysts/anime-face-detector-hrnetv2)")
    assert "replace it with hysts' hrnetv2 model.safetensors" in _load_error(landmark_model, path, "$KOHYA_EXT_WEIGHTS_DIR")
    msg = _load_error(landmark_model, path, "hub cache")
    assert f"delete {path}" in msg and f"--revision {W.PINS['hrnetv2'].revision}" in msg
    with pytest.raises(W.WeightsFileError, match="weights file not found"):
        W.load_state_dict_strict(landmark_model, W.WeightFile("hrnetv2", tmp_path / "gone.safetensors", "argument"))


def test_random_weights_in_upstream_layout_load_by_content_not_suffix(tmp_path, landmark_model, hrnet_files):
    import torch

    before = {k: v.clone() for k, v in landmark_model.state_dict().items()}
    W.load_state_dict_strict(landmark_model, W.WeightFile("hrnetv2", hrnet_files.safetensors, "argument"))
    loaded = landmark_model.state_dict()
    assert any(not torch.equal(loaded[k], before[k]) for k in before)  # really loaded
    renamed = tmp_path / "really_safetensors.pth"  # safetensors bytes under a .pth name
    renamed.write_bytes(hrnet_files.safetensors.read_bytes())
    for path in (hrnet_files.pth, renamed):
        other = type(landmark_model)()
        W.load_state_dict_strict(other, W.WeightFile("hrnetv2", path, "argument"))
        assert all(torch.equal(other.state_dict()[k], loaded[k]) for k in loaded)


def test_user_files_are_used_as_given_and_said_unpinned_once(monkeypatch, landmark_model, hrnet_files, caplog):
    wf = W.WeightFile("hrnetv2", hrnet_files.safetensors, "argument")
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        W.load_state_dict_strict(landmark_model, wf)
        W.load_state_dict_strict(landmark_model, wf)
    notes = [r.getMessage() for r in caplog.records if "unpinned" in r.getMessage()]
    assert len(notes) <= 1  # an earlier test in this module may already have said it
    monkeypatch.setattr(W, "_NOTICED", set())
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        caplog.clear()
        assert W.check_pin(wf) == "unpinned"
        assert W.check_pin(wf) == "unpinned"
    notes = [r.getMessage() for r in caplog.records if "unpinned" in r.getMessage()]
    assert len(notes) == 1
    assert wf.sha256[:16] in notes[0] and W.PINS["hrnetv2"].sha256[:16] in notes[0]
    assert W.PINS["hrnetv2"].release_sha256[:16] in notes[0] and "--landmark-weights" in notes[0]
    # the same bytes as a pin: no notice
    _pin_sha(monkeypatch, "hrnetv2", hrnet_files.safetensors.read_bytes())
    assert W.check_pin(wf) == "pinned"
    monkeypatch.setitem(W.PINS, "hrnetv2", dataclasses.replace(W.PINS["hrnetv2"], sha256=None,
                                                               release_sha256=wf.sha256))
    assert W.check_pin(wf) == "release"


def test_hub_file_is_checked_against_the_pin_at_load(landmark_model, hrnet_files, monkeypatch):
    # a valid weights file that is not the pinned one, found in the Hub cache: refused at load
    wf = W.WeightFile("hrnetv2", hrnet_files.safetensors, "hub cache")
    msg = _load_error(landmark_model, hrnet_files.safetensors, "hub cache", kind=W.WeightsChecksumError)
    assert f"sha256 {wf.sha256[:16]} is not the pinned {W.PINS['hrnetv2'].sha256[:16]}" in msg
    assert "delete" in msg and "--landmark-weights" in msg
    _pin_sha(monkeypatch, "hrnetv2", hrnet_files.safetensors.read_bytes())
    W.load_state_dict_strict(landmark_model, wf)


def test_load_hashes_a_file_once(monkeypatch, landmark_model, hrnet_files):
    real = hashlib.sha256
    made = []

    def counting(*a):
        made.append(1)
        return real(*a)

    monkeypatch.setattr(W, "hashlib", types.SimpleNamespace(sha256=counting))
    path = hrnet_files.folder / "copy.safetensors"
    path.write_bytes(hrnet_files.safetensors.read_bytes())
    wf = W.WeightFile("hrnetv2", path, "argument")
    wf.identity()
    W.load_state_dict_strict(landmark_model, wf)
    W.check_pin(wf)
    assert len(made) == 1


def test_sniff_reports_the_format(tmp_path, hrnet_files):
    import pickle

    assert W.sniff_weights_format(W.WeightFile("hrnetv2", hrnet_files.safetensors, "argument")) == "safetensors"
    assert W.sniff_weights_format(W.WeightFile("hrnetv2", hrnet_files.pth, "argument")) == "torch-zip"
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    assert W.sniff_weights_format(W.WeightFile("hrnetv2", legacy, "argument")) == "torch-pickle"
    meta_only = tmp_path / "meta.safetensors"
    header = json.dumps({"__metadata__": {"a": "b"}}).encode()
    meta_only.write_bytes(struct.pack("<Q", len(header)) + header)
    assert W.sniff_weights_format(W.WeightFile("hrnetv2", meta_only, "argument")) == "safetensors"
