"""nvxs backend: the anime face detector compiled into the animeface wheel, called through ctypes.

animeface 2.0.3's own binding reads Pillow's internal C struct with a layout
from Pillow 4.2 and silently finds nothing with Pillow >= 10, so this module
calls the wheel's bundled ``animeface.libs/libnvxs-*.so*`` directly from numpy
arrays (the same call sequence as the binding's ``_nvxs.c``). The models are
compiled into the library: nothing to download. Linux x86-64 only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .base import Face, ImageFaces, check_sizes
from ..errors import KohyaExtError
from ..landmarks import NVXS_FLIP_PAIRS, NVXS_POINTS

__all__ = ["NvxsBackend", "NvxsFace", "nvxs_available"]

INSTALL_HINT = (
    "nvxs needs the animeface wheel (Linux x86-64 only): pip install animeface==2.0.3; "
    "on other platforms use --backend hrnet"
)

# Detector settings of animeface's binding (_nvxs.c); they change the points, so identity() records them.
STEP = 4.0
SCALE_FACTOR = 1.095
MIN_WINDOW = 42.592
#: Room for results; the binding allows 4096, portraits hold a handful.
MAX_FACES = 1024
#: Bumped whenever the box -> point conversion below changes (stored in identity()).
POINTS_VERSION = 1
#: Retries for an image in which the plain detection finds no face, in order (docs/validity.md measures them
#: on real drawings; nvxs's windows miss many faces that fill the frame): "padsmall" = the image padded by
#: RETRY_PAD of its long side on every side (edges replicated) and scaled by RETRY_SCALE; "mirror" = the mirrored
#: image; "pad" = padded at full size. Faces found are mapped back onto the image. Part of identity().
#: Measured on the real-drawing tune half (faces found, plain -> with these retries): tight crops 0.448 -> 0.629,
#: on a white canvas 0.600 -> 0.671, on a busy background 0.608 -> 0.690 (+ "pad": tight 0.646, at 2.25x the
#: cost of a retry); each retry runs on the images still without a face only.
DEFAULT_RETRY: tuple[str, ...] = ("mirror", "pad")
RETRY_PAD = 0.25
RETRY_SCALE = 0.6
RETRY_MODES = ("padsmall", "mirror", "pad")
#: nvxs's built-in initial seed of nv_rand(): reseeding with it before each face makes the
#: colours a function of the image alone, equal to a fresh animeface process's first face.
COLOR_SEED = 8273

# nv_face_detect keeps a 320 KiB array on the C stack (its frame is 0x50088 bytes).
# Python threads get the platform's default stack, which is 8 MiB on glibc only when
# `ulimit -s` says so (musl: 128 KiB; some launchers set less), so workers are
# started with an explicit stack that leaves ample room for the callees.
WORKER_STACK_BYTES = 4 * 1024 * 1024


# --- C layouts (x86-64), from nvxs-1.0.2's headers as vendored by python-animeface ---------
class _Matrix(ctypes.Structure):
    """nv_matrix_t; element (row, col, ch) is v[(cols * row + col) * step + ch]."""

    _fields_ = [
        ("list", ctypes.c_int),
        ("list_step", ctypes.c_uint),
        ("n", ctypes.c_int),
        ("m", ctypes.c_int),
        ("rows", ctypes.c_int),
        ("cols", ctypes.c_int),
        ("step", ctypes.c_int),
        ("alias", ctypes.c_int),
        ("v", ctypes.POINTER(ctypes.c_float)),
    ]


class _Rect(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("width", ctypes.c_int), ("height", ctypes.c_int)]


class _FacePosition(ctypes.Structure):
    # nvxs's left_eye is the IMAGE-RIGHT eye (the character's left).
    _fields_ = [
        ("likelihood", ctypes.c_float),
        ("face", _Rect),
        ("left_eye", _Rect),
        ("right_eye", _Rect),
        ("nose", _Rect),
        ("mouth", _Rect),
        ("chin", _Rect),
    ]


class _Color(ctypes.Structure):
    _fields_ = [("v", ctypes.c_float * 4)]  # B, G, R, (count)


class _FaceFeature(ctypes.Structure):
    """nv_face_feature_t (nv_face_analyze.h); only the *_bgr colours are read."""

    _fields_ = [
        ("eye_ratio", ctypes.c_float),
        ("face_ratio", ctypes.c_float),
        ("skin_bgr", _Color),
        ("skin_ec", _Color),
        ("hair_bgr", _Color),
        ("hair_ec", _Color),
        ("left_eye_bgr", _Color * 4),
        ("right_eye_bgr", _Color * 4),
        ("eye_bgr", _Color * 4),
        ("left_eye_ec", _Color * 4),
        ("right_eye_ec", _Color * 4),
        ("eye_ec", _Color * 4),
    ]


class _FaceFeatureBuffer(ctypes.Structure):
    # The library writes the struct through a pointer: trailing slack means a layout
    # drift in some other build of nvxs corrupts nothing of ours.
    _fields_ = [("feature", _FaceFeature), ("_slack", ctypes.c_char * 512)]


#: nv_rand() keeps one process-wide state (nv_face_analyze samples pixels and seeds k-means
#: with it): colour analysis is serialised and reseeded under this lock. Detection uses no RNG.
_RAND_LOCK = threading.Lock()
_STACK_SIZE_LOCK = threading.Lock()

assert ctypes.sizeof(_Matrix) == 40 and ctypes.sizeof(_FacePosition) == 100 and ctypes.sizeof(_FaceFeature) == 456

_MatrixP = ctypes.POINTER(_Matrix)


@dataclass
class _Nvxs:
    """The loaded library, its typed functions and the addresses of its compiled-in models."""

    lib: ctypes.CDLL
    path: Path
    version: str
    sha256: str
    mlp_dir: int
    mlp_face_00: int
    mlp_bagging: ctypes.Array
    mlp_parts: int


def _find_library() -> tuple[Path, str]:
    """Path of the wheel's bundled libnvxs and the animeface version, or KohyaExtError."""
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        raise KohyaExtError(f"{INSTALL_HINT} (this is {sys.platform} {platform.machine()})")
    spec = importlib.util.find_spec("animeface")  # no import: animeface's binding is not used
    if spec is None or not spec.origin:
        raise KohyaExtError(f"{INSTALL_HINT} (animeface is not installed)")
    libs = Path(spec.origin).resolve().parent.parent / "animeface.libs"
    found = sorted(libs.glob("libnvxs-*.so*"))
    if not found:
        raise KohyaExtError(f"{INSTALL_HINT} (no libnvxs-*.so* in {libs}; animeface built from source lacks it)")
    try:
        version = importlib.metadata.version("animeface")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return found[0], version


@functools.lru_cache(maxsize=1)
def _load() -> _Nvxs:
    """Load libnvxs once per process (failures are not cached, so installing it later works)."""
    path, version = _find_library()
    try:
        lib = ctypes.CDLL(str(path))  # CDLL (not PyDLL): calls release the GIL
        models = {
            name: ctypes.addressof(ctypes.c_char.in_dll(lib, f"nv_face_mlp_{name}"))
            for name in ("dir", "face_00", "face_01", "face_02", "parts")
        }
    except (OSError, ValueError) as e:
        raise KohyaExtError(f"{INSTALL_HINT} (cannot load {path.name}: {e})") from e
    vp, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    signatures: dict[str, tuple[list, object]] = {
        "nv_matrix3d_alloc": ([i, i, i], _MatrixP),
        "nv_matrix_zero": ([_MatrixP], None),
        "nv_matrix_free": ([ctypes.POINTER(_MatrixP)], None),
        "nv_gray": ([_MatrixP, _MatrixP], None),
        "nv_gaussian5x5": ([_MatrixP, i, _MatrixP, i], None),
        "nv_laplacian1": ([_MatrixP, _MatrixP, f], None),
        "nv_integral": ([_MatrixP, _MatrixP, i], None),
        "nv_face_detect": (
            [ctypes.POINTER(_FacePosition), i, _MatrixP, _MatrixP, ctypes.POINTER(_Rect), vp, vp, vp, i, vp, f, f, f],
            i,
        ),
        "nv_face_analyze": ([ctypes.POINTER(_FaceFeatureBuffer), ctypes.POINTER(_FacePosition), _MatrixP], None),
        "nv_srand": ([ctypes.c_ulong], None),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    # const nv_mlp_t *bagging[] = {face_01, face_02, NULL}, as in the binding
    bagging = (vp * 3)(models["face_01"], models["face_02"], None)
    return _Nvxs(
        lib=lib,
        path=path,
        version=version,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        mlp_dir=models["dir"],
        mlp_face_00=models["face_00"],
        mlp_bagging=bagging,
        mlp_parts=models["parts"],
    )


def nvxs_available() -> tuple[bool, str]:
    """Whether the nvxs library can be loaded here, and a one-line reason."""
    try:
        nv = _load()
    except KohyaExtError as e:
        return False, str(e)
    return True, f"nvxs: {nv.path.name} from animeface {nv.version}"


@dataclass
class NvxsFace(Face):
    """A nvxs face, with what nvxs gives beyond the points.

    ``point_scores`` repeat the face likelihood for every point: nvxs has no
    per-point confidence.

    Attributes:
        face_width: side d of nvxs's square face box, in pixels.
        colors: RGB int tuples under ``skin``, ``hair``, ``left_eye``, ``right_eye``
            (image-left / image-right eye, like the points) from nv_face_analyze,
            or None when not asked for or not computable (a part box off the image).
    """

    face_width: float = 0.0
    colors: dict[str, tuple[int, int, int]] | None = None


class _Matrices:
    """nv matrices allocated by the library and freed on exit, whatever happens."""

    def __init__(self, nv: _Nvxs) -> None:
        self._nv = nv
        self._held: list[_MatrixP] = []

    def alloc(self, n: int, rows: int, cols: int) -> _MatrixP:
        mat = self._nv.lib.nv_matrix3d_alloc(n, rows, cols)
        if not mat:
            raise MemoryError(f"nvxs could not allocate a {n}x{rows}x{cols} matrix")
        self._held.append(mat)
        self._nv.lib.nv_matrix_zero(mat)
        return mat

    def __enter__(self) -> _Matrices:
        return self

    def __exit__(self, *exc: object) -> None:
        for mat in self._held:
            self._nv.lib.nv_matrix_free(ctypes.byref(mat))  # takes a pointer to the pointer
        self._held.clear()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise KohyaExtError(
            f"nvxs takes RGB uint8 arrays of shape (H, W, 3), got {arr.dtype} {arr.shape}: "
            "load images with kohya_ext.images.load_image"
        )
    return arr


def _fill_bgr(mat: _MatrixP, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image into an nv matrix as B, G, R float32 0..255."""
    m = mat.contents
    h, w = rgb.shape[:2]
    if (m.rows, m.cols, m.n) != (h, w, 3) or m.step < 3:
        raise KohyaExtError(f"unexpected nv_matrix_t layout from libnvxs ({m.rows}x{m.cols}x{m.n}, step {m.step})")
    view = np.ctypeslib.as_array(m.v, shape=(h, w, m.step))
    view[:, :, :3] = rgb[:, :, ::-1]


def _analysis_stays_inside(pos: _FacePosition, w: int, h: int) -> bool:
    """Whether nv_face_analyze's pixel reads stay on the image (it does not check).

    It reads both eye boxes, random pixels between the eyes down to the nose and
    from the eyes' bottom (right eye's top plus the LEFT eye's height) to the
    mouth's top, and hair above the eyes (clamped at row 0).
    """
    for e in (pos.left_eye, pos.right_eye):
        if not (e.x >= 0 and e.y >= 0 and e.width > 0 and e.height > 0 and e.x + e.width <= w and e.y + e.height <= h):
            return False
    eye_bottom = max(pos.left_eye.y, pos.right_eye.y) + pos.left_eye.height
    return eye_bottom < h and 0 <= pos.mouth.y < h and 0 <= pos.nose.y < h


def _colors(nv: _Nvxs, pos: _FacePosition, bgr: _MatrixP, w: int, h: int) -> dict[str, tuple[int, int, int]] | None:
    """nv_face_analyze's colours (left/right swapped to image-left/right), or None where they can't be had."""
    if not _analysis_stays_inside(pos, w, h):
        return None
    buf = _FaceFeatureBuffer()
    with _RAND_LOCK:
        nv.lib.nv_srand(COLOR_SEED)
        nv.lib.nv_face_analyze(ctypes.byref(buf), ctypes.byref(pos), bgr)
    feat = buf.feature

    def rgb(c: _Color) -> tuple[int, int, int] | None:
        b, g, r = c.v[0], c.v[1], c.v[2]
        if not all(np.isfinite((r, g, b))):
            return None
        return tuple(int(min(max(x, 0.0), 255.0)) for x in (r, g, b))  # truncates, like the binding

    out = {
        "skin": rgb(feat.skin_bgr),
        "hair": rgb(feat.hair_bgr),
        "left_eye": rgb(feat.right_eye_bgr[0]),  # nvxs "right" = image-left
        "right_eye": rgb(feat.left_eye_bgr[0]),
    }
    return None if any(v is None for v in out.values()) else out


def _to_face(pos: _FacePosition, colors: dict | None) -> NvxsFace:
    f, mo = pos.face, pos.mouth
    box_l, box_r = pos.right_eye, pos.left_eye  # nvxs's right_eye is the image-left eye
    d = float(f.width)
    eye_l = (box_l.x + box_l.width / 2, box_l.y + box_l.height / 2)
    eye_r = (box_r.x + box_r.width / 2, box_r.y + box_r.height / 2)
    mouth_y = mo.y + mo.height / 2
    points = np.array(
        [
            eye_l,
            eye_r,
            (box_l.x + box_l.width, eye_l[1]),  # inner edge of the image-left eye is its right side
            (box_r.x, eye_r[1]),
            # nvxs stores nose and chin as round(point - d/32) with side round(d/16): undo exactly
            (pos.nose.x + d / 32, pos.nose.y + d / 32),
            (mo.x, mouth_y),
            (mo.x + mo.width, mouth_y),
            (mo.x + mo.width / 2, mouth_y),
            (pos.chin.x + d / 32, pos.chin.y + d / 32),
        ],
        dtype=np.float32,
    )
    score = float(min(max(pos.likelihood, 0.0), 1.0))
    return NvxsFace(
        box=np.array([f.x, f.y, f.x + f.width, f.y + f.height], dtype=np.float32),
        score=score,
        points=points,
        point_scores=np.full(len(NVXS_POINTS), score, dtype=np.float32),
        face_width=d,
        colors=colors,
    )


def _detect_one(nv: _Nvxs, image: np.ndarray, with_colors: bool) -> ImageFaces:
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    result = ImageFaces(faces=[], width=w, height=h)
    if min(h, w) < MIN_WINDOW:  # no window fits; keep the C code away from degenerate sizes
        return result
    lib = nv.lib
    faces = (_FacePosition * MAX_FACES)()
    with _Matrices(nv) as mats:
        bgr = mats.alloc(3, h, w)
        _fill_bgr(bgr, rgb)
        gray = mats.alloc(1, h, w)
        lib.nv_gray(gray, bgr)
        smooth, edge = mats.alloc(1, h, w), mats.alloc(1, h, w)
        gint, eint = mats.alloc(1, h + 1, w + 1), mats.alloc(1, h + 1, w + 1)
        lib.nv_gaussian5x5(smooth, 0, gray, 0)
        lib.nv_laplacian1(edge, smooth, 4.0)
        lib.nv_integral(gint, gray, 0)
        lib.nv_integral(eint, edge, 0)
        rect = _Rect(0, 0, w, h)
        n = lib.nv_face_detect(
            faces, MAX_FACES, gint, eint, ctypes.byref(rect),
            nv.mlp_dir, nv.mlp_face_00, ctypes.cast(nv.mlp_bagging, ctypes.c_void_p), 2, nv.mlp_parts,
            STEP, SCALE_FACTOR, MIN_WINDOW,
        )  # fmt: skip
        for pos in faces[: max(0, min(n, MAX_FACES))]:
            colors = _colors(nv, pos, bgr, w, h) if with_colors else None
            result.faces.append(_to_face(pos, colors))
    return result


def _run_threads(fn: Callable[[int], ImageFaces], count: int, threads: int) -> list[ImageFaces]:
    """fn(0..count-1) on `threads` worker threads with WORKER_STACK_BYTES stacks; first error re-raised."""
    results: list[ImageFaces | None] = [None] * count
    errors: list[BaseException] = []
    next_index = iter(range(count))
    lock = threading.Lock()

    def worker() -> None:
        while not errors:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            try:
                results[i] = fn(i)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                errors.append(e)

    # threading.stack_size is process-wide: set it only while our threads are created.
    with _STACK_SIZE_LOCK:
        old = threading.stack_size(WORKER_STACK_BYTES)
        try:
            workers = [threading.Thread(target=worker, name=f"nvxs-{k}", daemon=True) for k in range(threads)]
            for t in workers:
                t.start()
        finally:
            threading.stack_size(old)
    try:
        for t in workers:
            t.join()
    except BaseException as e:  # Ctrl-C: let the workers stop after their current image
        errors.append(e)
        raise
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


class NvxsBackend:
    """Anime faces and 9 landmarks (``NVXS_POINTS``) from nvxs, on CPU threads.

    Points are derived from nvxs's part boxes (eye and mouth boxes, d/16 nose and
    chin boxes), swapped so that index 0 is the image-left eye. Pixel coordinates
    are continuous: pixel i spans [i, i + 1). ``point_scores`` are the face
    likelihood repeated (nvxs has no per-point score); faces come back as
    :class:`NvxsFace` with ``face_width`` and ``colors``.
    """

    name = "nvxs"
    point_names = NVXS_POINTS

    def __init__(self, threads: int | None = None, colors: bool = True, retry: Sequence[str] | None = None) -> None:
        """threads: worker threads (None: every core this process may use); colors: run nv_face_analyze;
        retry: RETRY_MODES tried in order on images where nothing was found (None: DEFAULT_RETRY)."""
        self._nv = _load()
        self.retry = tuple(DEFAULT_RETRY if retry is None else retry)
        bad = [m for m in self.retry if m not in RETRY_MODES]
        if bad:
            raise KohyaExtError(f"unknown nvxs retry mode(s) {bad}: choose from {', '.join(RETRY_MODES)}")
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if threads < 1:
            raise KohyaExtError(f"nvxs threads must be >= 1, got {threads}")
        self.threads = int(threads)
        self.colors = bool(colors)

    def identity(self) -> dict:
        nv = self._nv
        return {
            "backend": self.name,
            "library": nv.path.name,
            "library_sha256": nv.sha256[:16],
            "version": f"animeface {nv.version}",
            "points_version": POINTS_VERSION,
            "settings": {"step": STEP, "scale_factor": SCALE_FACTOR, "min_window_size": MIN_WINDOW,
                         **({"retry": list(self.retry), "retry_pad": RETRY_PAD, "retry_scale": RETRY_SCALE} if self.retry else {})},
        }

    def detect(self, images: Sequence[np.ndarray]) -> list[ImageFaces]:
        """Faces in RGB uint8 (H, W, 3) arrays (any strides), one ImageFaces per image, in order."""
        images = list(images)
        if not images:
            return []
        check_sizes("nvxs", images)
        threads = min(self.threads, len(images))
        results = _run_threads(lambda i: _detect_one(self._nv, images[i], self.colors), len(images), threads)
        for mode in self.retry:
            todo = [i for i, r in enumerate(results) if not r.faces]
            if not todo:
                break
            shown = [retry_view(_as_rgb(images[i]), mode) for i in todo]
            found = _run_threads(lambda j: _detect_one(self._nv, shown[j][0], self.colors), len(todo), min(self.threads, len(todo)))
            for i, (view, back), r in zip(todo, shown, found):
                if r.faces:
                    results[i] = ImageFaces(faces=[back(f) for f in r.faces], width=results[i].width, height=results[i].height)
        return results


def retry_view(image: np.ndarray, mode: str) -> tuple[np.ndarray, Callable[[NvxsFace], NvxsFace]]:
    """The image a retry mode detects in, and the map of a face found there back onto ``image``."""
    h, w = image.shape[:2]
    if mode == "mirror":
        flipped = np.ascontiguousarray(image[:, ::-1])

        def unmirror(f: NvxsFace) -> NvxsFace:
            p = np.asarray(f.points, np.float32).copy()
            p[:, 0] = w - p[:, 0]
            for a, b in NVXS_FLIP_PAIRS:
                p[[a, b]] = p[[b, a]]
            x0, y0, x1, y1 = (float(v) for v in f.box)
            colors = f.colors
            if colors:
                colors = {**colors, "left_eye": colors["right_eye"], "right_eye": colors["left_eye"]}
            return NvxsFace(box=np.array([w - x1, y0, w - x0, y1], np.float32), score=f.score, points=p,
                            point_scores=f.point_scores, face_width=f.face_width, colors=colors)

        return flipped, unmirror
    if mode not in ("pad", "padsmall"):
        raise KohyaExtError(f"unknown nvxs retry mode {mode!r}")
    q = int(round(RETRY_PAD * max(h, w)))
    padded = np.pad(image, ((q, q), (q, q), (0, 0)), mode="edge")
    scale = RETRY_SCALE if mode == "padsmall" else 1.0
    if scale != 1.0:
        from PIL import Image

        padded = np.asarray(Image.fromarray(padded).resize((round(padded.shape[1] * scale), round(padded.shape[0] * scale)), Image.Resampling.LANCZOS))

    def back(f: NvxsFace) -> NvxsFace:
        return NvxsFace(box=np.asarray(f.box, np.float32) / scale - np.float32(q), score=f.score,
                        points=np.asarray(f.points, np.float32) / scale - np.float32(q), point_scores=f.point_scores,
                        face_width=f.face_width / scale, colors=f.colors)

    return padded, back
