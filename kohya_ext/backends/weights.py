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

Pins (``PINS``, see docs/install.md "Weight pins"): Hub downloads ask for a fixed commit,
and a file from the Hub must have the pinned SHA-256, checked after the download and again
at load; a mismatch is one WeightsChecksumError line. Files the user names (flag, env var,
weights folder) may differ from the released weights (fine-tuned, converted): they are
used as given and logged once as unpinned; identity() records their SHA-256 either way.
Before loading, the file type is sniffed from its first bytes (safetensors header or a
PyTorch zip/pickle checkpoint): anything else is one WeightsFileError line, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import KohyaExtError, WeightsNotFoundError

__all__ = ["DIR_ENV", "ENV_VARS", "HF_REPOS", "MODEL_NAMES", "PINS", "Pin", "WeightFile", "WeightsChecksumError",
           "WeightsFileError", "WeightsMismatchError", "check_pin", "file_sha256", "find_weights",
           "hrnet_weights_status", "load_state_dict_strict", "models_for", "resolve_weights", "sniff_weights_format"]

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


@dataclass(frozen=True)
class Pin:
    """The released weights of one model; ``None`` means not known here (that part is unpinned)."""

    repo: str
    revision: str | None  # Hub commit passed to hf_hub_download(revision=...)
    sha256: str | None  # SHA-256 of HF_FILENAME at that commit (its LFS "oid sha256:")
    release_file: str  # the GitHub release v0.0.1 .pth this model.safetensors was converted from
    release_sha256: str | None  # SHA-256 of that .pth


# Sources (no value here was measured on this machine, which has no internet; none is guessed):
# - hrnetv2 and yolov3 revision + model.safetensors SHA-256: THIRD_PARTY_LICENSES.md of
#   github.com/neuraln-cyber/gen-automation @ 0c572e733d7ca40e36b84243bb7c46a334999420, which
#   lists these revisions and hashes; its src/gen_automation/i2v_worker/face_stabilizer.py
#   verifies the same hashes (and byte sizes: 38_917_560 hrnetv2, 246_354_512 yolov3) before
#   loading. The same revision/hash pairs appear in other public repositories that pin
#   anime-face-detector (found by code search, all in agreement).
# - release .pth SHA-256 (all three): nix/anime-face-models/default.nix of
#   github.com/iynaix/anime-face-detector @ 2a179dd5728d04137b572d832e13397bc2489bc4, Nix
#   fixed-output hashes of https://github.com/hysts/anime-face-detector/releases/download/v0.0.1/
#   (SRI base64 there, hex here; Nix refuses a download whose hash differs).
# - faster-rcnn: no public source for its Hub revision or its model.safetensors SHA-256 was
#   found, so both stay None: the download follows the repo's default branch and the file is
#   logged once as unpinned. Fill both in from the Hub's file page ("SHA256:" of
#   model.safetensors, and the commit) when known.
PINS = {
    "hrnetv2": Pin(
        repo="hysts/anime-face-detector-hrnetv2",
        revision="9b3435248b26aeb82e2a8578fe9d86d5d57158af",
        sha256="e71271376406a743c01528a0460637fcc06e72aeeea583f85007cc72dc8b7a4a",
        release_file="mmpose_anime-face_hrnetv2.pth",
        release_sha256="65b9951b29fb708a89c0467678094dd19b0136cddaf1366eb9d1e6e310dee842",
    ),
    "yolov3": Pin(
        repo="hysts/anime-face-detector-yolov3",
        revision="afdd4226a79ae8bb81f334dbcffd34f8cc000c38",
        sha256="23bbc708146bcbc1c910f00fe152adbc70d7658d875a0121eaf4ee61d978b2c4",
        release_file="mmdet_anime-face_yolov3.pth",
        release_sha256="38208bb6b8a4633193feba532e96ed9a7942129af8fe948b27bfcf8e9a30a12e",
    ),
    "faster-rcnn": Pin(
        repo="hysts/anime-face-detector-faster-rcnn",
        revision=None,
        sha256=None,
        release_file="mmdet_anime-face_faster-rcnn.pth",
        release_sha256="8cd3514eef1a69d9e448b87982bc7d37c8c8f5a1fc2cbb84579d382e5e4acbf1",
    ),
}
HUB_SOURCES = ("hub cache", "hub download")


class WeightsMismatchError(KohyaExtError):
    """A weights file does not fit the model (renamed, missing or misshapen keys)."""


class WeightsFileError(KohyaExtError):
    """A file that is not a readable weights file (text, empty, truncated, HTML page, ...)."""


class WeightsChecksumError(KohyaExtError):
    """A file from the Hub whose SHA-256 is not the pinned one."""


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


def _hub_download(repo: str, revision: str | None, local_only: bool) -> Path | None:
    from huggingface_hub import hf_hub_download

    kw = {"cache_dir": _hub_cache_dir(), "revision": revision}
    if local_only:
        kw["local_files_only"] = True
    try:
        return Path(hf_hub_download(repo, HF_FILENAME, **kw))
    except Exception as e:  # noqa: BLE001 - not cached / no network / blocked host ...
        if not local_only:
            logger.info("download of %s from %s failed: %s", HF_FILENAME, repo, e)
        return None


def _from_hub(model: str, download: bool) -> WeightFile | None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return None
    pin = PINS[model]
    repo = HF_REPOS[model]
    path = _hub_download(repo, pin.revision, local_only=True)
    if path is not None:
        return WeightFile(model, path, "hub cache")  # checked against the pin at load
    stale: WeightFile | None = None
    if pin.revision is not None:
        # The default branch may have moved past the pin (a README commit): the same bytes
        # under another snapshot are the pinned file, other bytes are not used.
        path = _hub_download(repo, None, local_only=True)
        if path is not None:
            wf = WeightFile(model, path, "hub cache")
            if pin.sha256 is None or wf.sha256 == pin.sha256:
                return wf
            stale = wf
    if download and not _hub_offline():
        rev = f" at {pin.revision[:12]}" if pin.revision else ""
        logger.warning("downloading %s weights from the Hugging Face Hub (%s%s)", model, repo, rev)
        path = _hub_download(repo, pin.revision, local_only=False)
        if path is not None:
            wf = WeightFile(model, path, "hub download")
            check_pin(wf)  # after the download: a damaged or substituted file stops here
            return wf
    if stale is not None:
        check_pin(stale)  # raises: the cache holds a file that is not the pinned one
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
    if model not in MODEL_NAMES:
        raise KohyaExtError(f"unknown hrnet model {model!r}: choose one of {', '.join(MODEL_NAMES)}")
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


def _fetch_command(model: str) -> str:
    rev = PINS[model].revision
    return f"huggingface-cli download {HF_REPOS[model]} {HF_FILENAME}" + (f" --revision {rev}" if rev else "")


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
    fetch = "; ".join(_fetch_command(m) for m in missing)
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


def hrnet_weights(face_detector: str | None, landmark_weights: str | Path | None = None,
                  detector_weights: str | Path | None = None, download: bool = True) -> dict[str, WeightFile]:
    """The weight files the hrnet backend needs with ``face_detector`` (None: landmarks only)."""
    explicit = {"hrnetv2": landmark_weights}
    if face_detector is not None:
        explicit[face_detector] = detector_weights
    return resolve_weights(models_for(face_detector), explicit, download)


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
        found = hrnet_weights(face_detector, landmark_weights, detector_weights, download=False)
    except KohyaExtError as e:
        return False, str(e)
    return True, "; ".join(f"{m}: {wf.path} ({wf.source})" for m, wf in found.items())


# --- pins -------------------------------------------------------------------------------
_NOTICED: set[tuple[str, str]] = set()
_NOTICE_LOCK = threading.Lock()


def _notice_once(wf: WeightFile, message: str) -> None:
    key = (str(wf.path.resolve()), wf.sha256)
    with _NOTICE_LOCK:
        if key in _NOTICED:
            return
        _NOTICED.add(key)
    logger.warning("%s", message)


def _released(model: str) -> str:
    """The released file(s) of ``model`` whose hash is pinned, for messages."""
    pin = PINS[model]
    parts = []
    if pin.sha256:
        parts.append(f"{HF_FILENAME} of {pin.repo}@{pin.revision[:12] if pin.revision else 'main'} "
                     f"sha256 {pin.sha256[:SHA_PREFIX]}")
    if pin.release_sha256:
        parts.append(f"GitHub release v0.0.1 {pin.release_file} sha256 {pin.release_sha256[:SHA_PREFIX]}")
    return " or ".join(parts) or "none pinned"


def _right_file(model: str) -> str:
    return f"hysts' {model} {HF_FILENAME} ({HF_REPOS[model]})"


def _fix(wf: WeightFile) -> str:
    """What to do about a bad file, by where it came from."""
    if wf.source in HUB_SOURCES:
        where = f"delete {wf.path}"
        if wf.path.is_symlink():
            where += f" and the file it links to ({wf.path.resolve()})"
        return f"{where} and re-download it (`{_fetch_command(wf.model)}`), or point {FLAGS[wf.model]} at the right file"
    if wf.source == f"${DIR_ENV}":
        return f"replace it with {_right_file(wf.model)} (named {DIR_FILE_NAMES[wf.model][0]}), or point {FLAGS[wf.model]} at it"
    if wf.source.startswith("$"):
        return f"point {wf.source} at {_right_file(wf.model)}"
    return f"point {FLAGS[wf.model]} at {_right_file(wf.model)}"


def check_pin(wf: WeightFile) -> str:
    """Compare ``wf``'s SHA-256 with the pins; returns "pinned", "release" or "unpinned".

    A file from the Hub (cache or download) with a pinned hash must match it, else one
    WeightsChecksumError line. A file the user named is used as given: matching a pin it is
    "pinned"/"release", otherwise it is logged once as unpinned (fine-tuned, converted or
    other weights are allowed; identity() records their SHA-256 so runs stay apart).
    """
    pin = PINS[wf.model]
    found = wf.sha256
    if wf.source in HUB_SOURCES:
        if pin.sha256 is None:
            _notice_once(wf, f"{wf.model} weights {wf.path}: checksum not pinned (no known SHA-256 for "
                             f"{HF_FILENAME} of {pin.repo}); used with sha256 {found[:SHA_PREFIX]}, recorded in identity()")
            return "unpinned"
        if found != pin.sha256:
            raise WeightsChecksumError(
                f"{wf.model} weights {wf.path} ({wf.source}): sha256 {found[:SHA_PREFIX]} is not the pinned "
                f"{pin.sha256[:SHA_PREFIX]} of {HF_FILENAME} in {pin.repo}@{(pin.revision or 'main')[:12]}; "
                f"the file is damaged or not the pinned one: {_fix(wf)}"
            )
        return "pinned"
    if found == pin.sha256:
        return "pinned"
    if found == pin.release_sha256:
        return "release"
    given_by = FLAGS[wf.model] if wf.source == "argument" else wf.source
    _notice_once(wf, f"{wf.model} weights {wf.path} (given by {given_by}) are unpinned: sha256 {found[:SHA_PREFIX]} "
                     f"is not the released weights ({_released(wf.model)}); used as given, and scores compare only "
                     f"with runs on the same sha256 (identity() records it)")
    return "unpinned"


# --- file type ---------------------------------------------------------------------------
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit


def sniff_weights_format(wf: WeightFile) -> str:
    """"safetensors", "torch-zip" or "torch-pickle" from the first bytes of ``wf.path``.

    Anything else (text, empty, an HTML error page, a truncated or damaged safetensors) is
    one WeightsFileError line that names the file and the fix.
    """
    path = wf.path
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            if size >= 9 and head[8:9] == b"{":
                (n,) = struct.unpack("<Q", head[:8])
                if n <= _SAFETENSORS_MAX_HEADER:
                    if 8 + n > size:
                        raise WeightsFileError(
                            f"{path}: truncated safetensors file (its header alone needs {8 + n} bytes, the file has "
                            f"{size}): {_fix(wf)}")
                    f.seek(8)
                    raw = f.read(n)
                    _check_safetensors_header(wf, raw, size - 8 - n)
                    return "safetensors"
    except OSError as e:
        raise WeightsFileError(f"{path}: cannot read it ({e.strerror or e}): {_fix(wf)}") from None
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-pickle"
    what = "empty" if size == 0 else "neither safetensors nor a PyTorch checkpoint"
    raise WeightsFileError(f"{path}: not a weights file ({what}): {_fix(wf)}")


def _check_safetensors_header(wf: WeightFile, raw: bytes, data_size: int) -> None:
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
        end = 0
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            lo, hi = entry["data_offsets"]
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
                raise ValueError(f"bad data_offsets of {key}")
            end = max(end, hi)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise WeightsFileError(f"{wf.path}: damaged safetensors header ({reason}): {_fix(wf)}") from None
    if end > data_size:
        raise WeightsFileError(
            f"{wf.path}: truncated safetensors file (its header declares {end} bytes of tensors, the file has "
            f"{data_size}): {_fix(wf)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__)


def _read_state_dict(wf: WeightFile, fmt: str) -> Mapping:
    """The state dict of a sniffed file; a read failure is one WeightsFileError line."""
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(wf.path))
        import torch

        checkpoint = torch.load(str(wf.path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - damaged file, refused pickle, out of memory...
        kind = "safetensors file" if fmt == "safetensors" else "PyTorch checkpoint"
        raise WeightsFileError(f"{wf.path}: cannot read this {kind} ({_first_line(e)}): {_fix(wf)}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsFileError(f"{wf.path}: a PyTorch checkpoint without a state dict ({type(checkpoint).__name__}): "
                               f"{_fix(wf)}")
    return state


def load_state_dict_strict(module, wf: WeightFile) -> None:
    """Sniff, check the pin, and load ``wf`` into ``module`` with strict keys.

    Every failure is one KohyaExtError line: WeightsFileError (not a weights file,
    truncated, unreadable), WeightsChecksumError (a Hub file that is not the pinned one),
    WeightsMismatchError (keys or shapes do not fit the model).
    """
    if not wf.path.is_file():
        raise WeightsFileError(f"{wf.model} weights file not found: {wf.path} (from {wf.source}): {_fix(wf)}")
    fmt = sniff_weights_format(wf)
    check_pin(wf)
    state = _read_state_dict(wf, fmt)
    try:
        module.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - RuntimeError on keys/shapes; TypeError etc. on odd values
        try:
            own = module.state_dict()
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            shapes = sorted(k for k in set(own) & set(state)
                            if tuple(own[k].shape) != tuple(getattr(state[k], "shape", ())))
        except Exception:  # noqa: BLE001 - values without a shape: report the load error itself
            missing = unexpected = shapes = []

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        parts = [f"missing keys {few(missing)}" if missing else "", f"unexpected keys {few(unexpected)}" if unexpected else "",
                 f"wrong shapes {few(shapes)}" if shapes else ""]
        detail = "; ".join(p for p in parts if p) or _first_line(e)
        raise WeightsMismatchError(
            f"{wf.model} weights {wf.path} do not fit anime-face-detector's {wf.model} model ({detail}); "
            f"use {HF_FILENAME} from {HF_REPOS[wf.model]} or convert a .pth with anime-face-detector-convert"
        ) from e
