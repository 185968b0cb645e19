"""Where the hrnet backend's weights come from, and what they are (name + SHA-256).

Resolution order for each model ("hrnetv2", "yolov3", "faster-rcnn"):

1. an explicit path (``--landmark-weights`` / ``--detector-weights``);
2. its environment variable (``KOHYA_EXT_HRNET_WEIGHTS``, ``KOHYA_EXT_YOLOV3_WEIGHTS``,
   ``KOHYA_EXT_FASTER_RCNN_WEIGHTS``);
3. ``$KOHYA_EXT_WEIGHTS_DIR/<model>.safetensors`` (or the legacy ``.pth`` names);
4. the Hugging Face Hub cache (``model.safetensors`` of anime-face-detector's repos);
5. a download from the Hub, unless ``HF_HUB_OFFLINE=1`` or the download fails.

An explicit path or environment variable that names a missing file is an error, never
silently skipped. ``.safetensors`` and legacy mm*-era ``.pth`` files are both accepted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import KohyaExtError, WeightsNotFoundError

__all__ = [
    "DIR_ENV",
    "ENV_VARS",
    "HF_REPOS",
    "MODEL_NAMES",
    "WeightFile",
    "WeightsMismatchError",
    "file_sha256",
    "find_weights",
    "hrnet_weights_status",
    "load_state_dict_strict",
    "models_for",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

MODEL_NAMES = ("hrnetv2", "yolov3", "faster-rcnn")
#: The Hub repositories of anime-face-detector 0.1.0 (``detector.HF_MODEL_REPOS``; a test pins them).
HF_REPOS = {
    "faster-rcnn": "hysts/anime-face-detector-faster-rcnn",
    "yolov3": "hysts/anime-face-detector-yolov3",
    "hrnetv2": "hysts/anime-face-detector-hrnetv2",
}
HF_FILENAME = "model.safetensors"
ENV_VARS = {
    "hrnetv2": "KOHYA_EXT_HRNET_WEIGHTS",
    "yolov3": "KOHYA_EXT_YOLOV3_WEIGHTS",
    "faster-rcnn": "KOHYA_EXT_FASTER_RCNN_WEIGHTS",
}
DIR_ENV = "KOHYA_EXT_WEIGHTS_DIR"
#: CLI flags that set the explicit path (named in error messages).
FLAGS = {"hrnetv2": "--landmark-weights", "yolov3": "--detector-weights", "faster-rcnn": "--detector-weights"}
#: File names looked for in $KOHYA_EXT_WEIGHTS_DIR, in order (the .pth names are the GitHub release's).
DIR_FILE_NAMES = {
    "hrnetv2": ("hrnetv2.safetensors", "mmpose_anime-face_hrnetv2.pth", "hrnetv2.pth"),
    "yolov3": ("yolov3.safetensors", "mmdet_anime-face_yolov3.pth", "yolov3.pth"),
    "faster-rcnn": ("faster-rcnn.safetensors", "mmdet_anime-face_faster-rcnn.pth", "faster-rcnn.pth"),
}
SHA_PREFIX = 16

_TRUE = {"1", "true", "yes", "on"}


class WeightsMismatchError(KohyaExtError):
    """A weights file does not fit the model (renamed, missing or misshapen keys)."""


@dataclass(frozen=True)
class WeightFile:
    """One resolved weights file and where it was found."""

    model: str
    path: Path
    source: str  # "argument", "$KOHYA_EXT_...", "$KOHYA_EXT_WEIGHTS_DIR", "hub cache", "hub download"

    @property
    def sha256(self) -> str:
        """Full SHA-256 of the file (cached by path, mtime and size)."""
        return file_sha256(self.path)

    def identity(self) -> dict:
        """File name and SHA-256 prefix: what identity() records."""
        return {"file": self.path.name, "sha256": self.sha256[:SHA_PREFIX]}


# --- hashing -----------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, cached by (resolved path, mtime_ns, size)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    with _SHA_LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest


# --- finding files -----------------------------------------------------------------------
def _check_model(model: str) -> None:
    if model not in MODEL_NAMES:
        raise KohyaExtError(f"unknown hrnet model {model!r}: choose one of {', '.join(MODEL_NAMES)}")


def models_for(face_detector: str | None) -> tuple[str, ...]:
    """The models the hrnet backend needs with this face detector (None: landmarks only)."""
    if face_detector is None:
        return ("hrnetv2",)
    if face_detector not in ("yolov3", "faster-rcnn"):
        raise KohyaExtError(f"unknown face detector {face_detector!r}: choose yolov3 or faster-rcnn")
    return ("hrnetv2", face_detector)


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the environment now as well.
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def _hub_cache_dir() -> str | None:
    # huggingface_hub fixes its cache folder at import; honour HF_HUB_CACHE / HF_HOME set later.
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _from_hub(model: str, download: bool) -> WeightFile | None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    repo = HF_REPOS[model]
    try:
        path = hf_hub_download(repo, HF_FILENAME, cache_dir=_hub_cache_dir(), local_files_only=True)
        return WeightFile(model, Path(path), "hub cache")
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        pass
    if not download or _hub_offline():
        return None
    try:
        logger.warning("downloading %s weights from the Hugging Face Hub (%s)", model, repo)
        path = hf_hub_download(repo, HF_FILENAME, cache_dir=_hub_cache_dir())
        return WeightFile(model, Path(path), "hub download")
    except Exception as e:  # noqa: BLE001 - no network, blocked host, ...
        logger.info("download of %s from %s failed: %s", HF_FILENAME, repo, e)
        return None


def _existing(path: str | Path, model: str, where: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"{model} weights file not found: {p} (given by {where}); fix the path or unset it")
    return p


def find_weights(model: str, explicit: str | Path | None = None, download: bool = False) -> WeightFile | None:
    """The weights file for ``model`` by the resolution order above, or None.

    Raises WeightsNotFoundError when an explicit path or environment variable names a
    file that does not exist. Downloads only when ``download`` is true.
    """
    _check_model(model)
    if explicit:
        return WeightFile(model, _existing(explicit, model, FLAGS[model]), "argument")
    env = ENV_VARS[model]
    if os.environ.get(env):
        return WeightFile(model, _existing(os.environ[env], model, f"${env}"), f"${env}")
    if os.environ.get(DIR_ENV):
        folder = Path(os.environ[DIR_ENV]).expanduser()
        for name in DIR_FILE_NAMES[model]:
            if (folder / name).is_file():
                return WeightFile(model, folder / name, f"${DIR_ENV}")
    return _from_hub(model, download)


def _not_found_message(missing: Iterable[str], download: bool) -> str:
    missing = list(missing)
    files = ", ".join(f"{m} ({HF_FILENAME} of {HF_REPOS[m]})" for m in missing)
    if not download:
        why = "looked in local files and the Hub cache only"
    elif _hub_offline():
        why = "the Hub is offline (HF_HUB_OFFLINE=1)"
    else:
        why = "the download from the Hub failed (no network?)"
    envs = ", ".join(f"{ENV_VARS[m]}=<file>" for m in missing)
    flags = "/".join(dict.fromkeys(FLAGS[m] for m in missing))
    names = ", ".join(DIR_FILE_NAMES[m][0] for m in missing)
    fetch = "; ".join(f"huggingface-cli download {HF_REPOS[m]} {HF_FILENAME}" for m in missing)
    return (
        f"hrnet weights not found: {files}; {why}. Provide them with {flags} <file>, {envs}, "
        f"or {DIR_ENV}=<folder with {names}>; or run `{fetch}` on a machine with internet and copy the "
        f"Hugging Face cache (~/.cache/huggingface/hub) here; or use --backend nvxs"
    )


def resolve_weights(
    models: Iterable[str], explicit: Mapping[str, str | Path | None] | None = None, download: bool = True
) -> dict[str, WeightFile]:
    """Resolve every model in ``models``; one WeightsNotFoundError names all missing ones."""
    explicit = explicit or {}
    found: dict[str, WeightFile] = {}
    missing: list[str] = []
    for model in models:
        wf = find_weights(model, explicit.get(model), download=download)
        if wf is None:
            missing.append(model)
        else:
            found[model] = wf
    if missing:
        raise WeightsNotFoundError(_not_found_message(missing, download))
    return found


def hrnet_weights_status(
    landmark_weights: str | Path | None = None,
    detector_weights: str | Path | None = None,
    face_detector: str | None = "yolov3",
) -> tuple[bool, str]:
    """Whether the hrnet backend can start without downloading anything; ``(ok, reason)``."""
    try:
        import anime_face_detector  # noqa: F401
    except ImportError:
        return False, "anime-face-detector 0.1.0 is not installed (scripts/install.sh installs it)"
    try:
        models = models_for(face_detector)
        explicit = {"hrnetv2": landmark_weights}
        if face_detector is not None:
            explicit[face_detector] = detector_weights
        found = resolve_weights(models, explicit, download=False)
    except KohyaExtError as e:
        return False, str(e)
    return True, "; ".join(f"{m}: {wf.path} ({wf.source})" for m, wf in found.items())


def load_state_dict_strict(module, wf: WeightFile) -> None:
    """Load ``wf`` into ``module`` with strict keys; a mismatch is one WeightsMismatchError line."""
    from anime_face_detector._weights import load_state_dict_from_path

    try:
        state = load_state_dict_from_path(wf.path)
    except Exception as e:  # noqa: BLE001 - corrupt file, wrong format, pickle refused...
        raise WeightsMismatchError(f"cannot read {wf.model} weights {wf.path}: {e}") from e
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        parts = [f"missing keys {few(missing)}" if missing else "", f"unexpected keys {few(unexpected)}" if unexpected else "",
                 f"wrong shapes {few(shapes)}" if shapes else ""]
        detail = "; ".join(p for p in parts if p) or str(e).splitlines()[0]
        raise WeightsMismatchError(
            f"{wf.model} weights {wf.path} do not fit anime-face-detector's {wf.model} model ({detail}); "
            f"use {HF_FILENAME} from {HF_REPOS[wf.model]} or convert a .pth with anime-face-detector-convert"
        ) from e
