"""Where hrnet weights come from: explicit path > env var > weights dir > Hub cache > download."""

from __future__ import annotations

import hashlib
import os

import pytest

from kohya_ext.backends import resolve_backend_name
from kohya_ext.backends import weights as W
from kohya_ext.errors import WeightsNotFoundError

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


def test_hub_cache_is_used_without_network(clean_env, monkeypatch):
    # the layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<rev>/file}
    repo_dir = clean_env / "hf_home" / "hub" / "models--hysts--anime-face-detector-hrnetv2"
    rev = "0123456789abcdef0123456789abcdef01234567"
    _file(repo_dir / "refs" / "main", rev.encode())
    _file(repo_dir / "snapshots" / rev / "model.safetensors")
    wf = W.find_weights("hrnetv2", download=True)
    assert wf.source == "hub cache" and wf.path.name == "model.safetensors"


def test_download_only_when_allowed_and_online(clean_env, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, kw.get("local_files_only", False)))
        if kw.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return _file(clean_env / "dl" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert W.find_weights("yolov3", download=True) is None  # HF_HUB_OFFLINE=1: cache only
    assert calls == [("hysts/anime-face-detector-yolov3", True)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert W.find_weights("yolov3", download=False) is None  # status checks never download
    wf = W.find_weights("yolov3", download=True)
    assert wf.source == "hub download"
    assert calls[-1] == ("hysts/anime-face-detector-yolov3", False)


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
