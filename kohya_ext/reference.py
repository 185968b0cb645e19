"""Reference statistics: the seven ratios measured on a character's training images.

A reference file (`ref.json`) is versioned and self-describing: it records the
backend identity (name, weights, settings), the formula version and exclusion
rules, per-image measurements (so outliers can be found) and each image's
perceptual hash (to flag samples that copy training images).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .backends.base import Backend
from .errors import BackendMismatchError, KohyaExtError
from .io_utils import DamagedFileError, atomic_write_text, dumps_json, read_json
from .measure import MEASUREMENT_VERSION, ImageMeasurement
from .ratios import FORMULA_VERSION, RATIO_NAMES, UNAVAILABLE, ExclusionRules
from .similarity import SCORE_VERSION

logger = logging.getLogger(__name__)

REFERENCE_FORMAT = "kohya-ext-reference"
REFERENCE_FORMAT_VERSION = 1

#: Spread of each ratio across many different anime faces, per backend: the prior
#: that keeps z meaningful when a reference is small or near-identical (its own std
#: then goes to ~0). nvxs values were measured on the 36 TADNE portraits (one face
#: each, 33 usable faces of different characters; `python bench/population.py`). hrnet values
#: cannot be measured without the real weights: they are provisional guesses (about
#: 8% of the mean-face value of docs/ratios.md) and say so in docs/ratios.md.
POPULATION_STD: dict[str, dict[str, float]] = {
    "nvxs": {
        "interocular_ratio": 0.1189,
        "eye_to_nose_ratio": 0.0317,
        "nose_to_mouth_ratio": 0.0267,
        "mouth_width_ratio": 0.0373,
        "chin_length_ratio": 0.0292,
        "intercanthal_ratio": 0.0834,
    },
    "hrnet": {
        "interocular_ratio": 0.045,
        "eye_to_nose_ratio": 0.024,
        "nose_to_mouth_ratio": 0.028,
        "mouth_width_ratio": 0.012,
        "chin_length_ratio": 0.029,
        "eyebrow_height_ratio": 0.026,
        "intercanthal_ratio": 0.026,
    },
}
#: z is measured in units of sqrt(ref_std^2 + (SPREAD_FLOOR_FRACTION * population_std)^2).
SPREAD_FLOOR_FRACTION = 0.5


@dataclass
class RatioStats:
    """Summary of one ratio over a set of faces."""

    n: int = 0
    mean: float | None = None
    std: float | None = None
    median: float | None = None
    mad: float | None = None
    unavailable: str | None = None

    @classmethod
    def from_values(cls, values: list[float], unavailable: str | None = None) -> "RatioStats":
        if unavailable:
            return cls(unavailable=unavailable)
        if not values:
            return cls(unavailable="no usable face had this ratio")
        a = np.asarray(values, dtype=np.float64)
        med = float(np.median(a))
        return cls(
            n=len(a),
            mean=float(a.mean()),
            std=float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            median=med,
            mad=float(np.median(np.abs(a - med)) * 1.4826),
        )


def summarize_counts(measurements: list[ImageMeasurement]) -> dict[str, int]:
    """Images, faces found, usable faces, and every reason an image did not count."""
    c = Counter(m.status for m in measurements)
    return {
        "images": len(measurements),
        "faces": sum(1 for m in measurements if m.face_score is not None),
        "usable": c.get("ok", 0),
        "multi_face_images": sum(1 for m in measurements if m.n_faces > 1),
        **{k: v for k, v in sorted(c.items()) if k != "ok"},
    }


def ratio_statistics(backend: str, measurements: list[ImageMeasurement]) -> dict[str, RatioStats]:
    out = {}
    for name in RATIO_NAMES:
        reason = UNAVAILABLE.get(backend, {}).get(name)
        vals = [m.ratios[name] for m in measurements if m.status == "ok" and m.ratios.get(name) is not None]
        out[name] = RatioStats.from_values(vals, reason)
    return out


def spread(backend: str, name: str, stats: RatioStats) -> float:
    """The unit of z for one ratio: the reference std with a population floor."""
    pop = POPULATION_STD.get(backend, {}).get(name, 0.03)
    own = stats.std or 0.0
    return float(np.sqrt(own**2 + (SPREAD_FLOOR_FRACTION * pop) ** 2))


@dataclass
class ReferenceStats:
    """Ratios of a character's reference images, and where they came from."""

    backend: dict
    rules: dict
    measurements: list[ImageMeasurement]
    name: str = "reference"
    sources: list[str] = field(default_factory=list)
    formula_version: int = FORMULA_VERSION
    created: str = ""

    @property
    def backend_name(self) -> str:
        return self.backend["backend"]

    @property
    def counts(self) -> dict[str, int]:
        return summarize_counts(self.measurements)

    @property
    def ratios(self) -> dict[str, RatioStats]:
        return ratio_statistics(self.backend_name, self.measurements)

    @property
    def phashes(self) -> list[str]:
        return [m.phash for m in self.measurements if m.phash]

    def check_usable(self) -> None:
        """Raise when nothing usable remains: scoring against it would be meaningless."""
        c = self.counts
        if c["usable"] == 0:
            reasons = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items() if k not in ("images", "faces", "usable", "multi_face_images") and v)
            raise KohyaExtError(
                f"reference {self.name!r}: none of its {c['images']} images has a usable face ({reasons or 'no faces found'}); "
                "use images where the character's face is visible and at least ~64 px wide"
            )

    def check_compatible(self, identity: dict, rules: dict | None = None) -> None:
        """Refuse to compare numbers measured by another backend, weights or formula."""
        if identity != self.backend:
            raise BackendMismatchError(
                f"reference {self.name!r} was measured with {_describe(self.backend)}, the samples with {_describe(identity)}; "
                "rebuild the reference with the samples' backend (pass the image folder instead of the ref.json, "
                "or run `kohya-ext reference` with the same --backend)"
            )
        if self.formula_version != FORMULA_VERSION or (rules is not None and rules != self.rules):
            raise BackendMismatchError(
                f"reference {self.name!r} uses formula version {self.formula_version} / rules {self.rules}; "
                f"this kohya-ext uses version {FORMULA_VERSION} / rules {rules}: rebuild the reference from its images"
            )

    def to_dict(self) -> dict:
        return {
            "format": REFERENCE_FORMAT,
            "format_version": REFERENCE_FORMAT_VERSION,
            "kohya_ext_version": __version__,
            "created": self.created,
            "name": self.name,
            "sources": self.sources,
            "backend": self.backend,
            "formula_version": self.formula_version,
            "measurement_version": MEASUREMENT_VERSION,
            "score_version": SCORE_VERSION,
            "rules": self.rules,
            "counts": self.counts,
            "ratios": {k: v.__dict__ for k, v in self.ratios.items()},
            "images": [m.to_dict() for m in self.measurements],
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, dumps_json(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def from_dict(cls, d: dict, origin: str = "reference") -> "ReferenceStats":
        if d.get("format") != REFERENCE_FORMAT:
            raise KohyaExtError(f"{origin}: not a kohya-ext reference file (no \"format\": \"{REFERENCE_FORMAT}\")")
        if not isinstance(d.get("format_version", 0), int) or not isinstance(d.get("measurement_version", 3), int):
            raise DamagedFileError(f"{origin}: damaged reference file (its format or measurement version is not a whole number): "
                                   "rebuild it from its images (`kohya-ext reference DATA -o ref.json`)")
        if d.get("format_version", 0) > REFERENCE_FORMAT_VERSION:
            raise KohyaExtError(
                f"{origin}: reference format version {d['format_version']} is newer than this kohya-ext understands "
                f"({REFERENCE_FORMAT_VERSION}); upgrade kohya-ext"
            )
        mv = d.get("measurement_version", 3)  # files before measurement version 4 do not say
        if mv != MEASUREMENT_VERSION:
            if mv > MEASUREMENT_VERSION:
                raise KohyaExtError(f"{origin}: reference measured by a newer kohya-ext (measurement version {mv}); upgrade kohya-ext")
            raise KohyaExtError(
                f"{origin}: this reference was measured by an older kohya-ext (measurement version {mv}, score "
                f"v{d.get('score_version', 3)}); this kohya-ext scores with v{SCORE_VERSION} (real-drawing weights, hair colour "
                f"histograms, a copy gate on drawn-area and face hashes and on drawings moved onto another background), "
                f"which needs measurement version {MEASUREMENT_VERSION}: "
                "rebuild the reference from its images (`kohya-ext reference DATA -o ref.json`, or pass the image folder instead of the ref.json)"
            )
        fix = "rebuild it from its images (`kohya-ext reference DATA -o ref.json`)"
        problem = _shape_problem(d)
        if problem:
            raise DamagedFileError(f"{origin}: damaged reference file ({problem}): {fix}")
        measurements = []
        for i, m in enumerate(d["images"]):
            try:
                measurements.append(ImageMeasurement.from_dict(m))
            except ValueError as e:
                raise DamagedFileError(f"{origin}: damaged reference file (image {i}: {e}): {fix}") from None
        return cls(
            backend=d["backend"],
            rules=d["rules"],
            measurements=measurements,
            name=d.get("name", "reference"),
            sources=d.get("sources", []),
            formula_version=d.get("formula_version", 0),
            created=d.get("created", ""),
        )

    @classmethod
    def load(cls, path: str | Path) -> "ReferenceStats":
        path = Path(path)
        try:
            d = read_json(path, "reference file", "rebuild it from its images (`kohya-ext reference DATA -o ref.json`)")
        except OSError as e:
            raise KohyaExtError(f"{path}: cannot read reference file ({e.strerror or e})") from e
        if not isinstance(d, dict):
            raise DamagedFileError(f"{path}: not a kohya-ext reference file (it holds a JSON {type(d).__name__}, not an object)")
        return cls.from_dict(d, str(path))


def _shape_problem(d: dict) -> str | None:
    """What is wrong with a reference file's top level (None: nothing); the images are checked one by one."""
    checks = (
        ("backend", lambda v: isinstance(v, dict) and isinstance(v.get("backend"), str), "an object naming its backend"),
        ("rules", lambda v: isinstance(v, dict) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v.values()), "an object of numbers"),
        ("images", lambda v: isinstance(v, list), "a list"),
        ("name", lambda v: isinstance(v, str), "text"),
        ("sources", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of text"),
        ("formula_version", lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
        ("created", lambda v: isinstance(v, str), "text"),
    )
    for key, ok, what in checks:
        if key in d and not ok(d[key]):
            return f"{key!r} is not {what}"
        if key in ("backend", "rules", "images") and key not in d:
            return f"{key!r} is missing"
    return None


def _describe(identity: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in identity.items() if k != "backend")
    return f"{identity.get('backend')} ({extra})" if extra else str(identity.get("backend"))


def build_reference(
    paths: list[Path],
    backend_factory: Callable[[], Backend],
    identity: dict,
    rules: ExclusionRules = ExclusionRules(),
    name: str = "reference",
    sources: list[str] | None = None,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ReferenceStats:
    """Measure reference images (cached) and summarise them."""
    from .cache import MeasurementCache
    from .measure import measure_files

    cache = MeasurementCache(identity, rules.as_dict(), cache_dir) if use_cache else None
    ms = measure_files(paths, backend_factory, identity["backend"], cache=cache, rules=rules, progress=progress)
    return ReferenceStats(
        backend=identity,
        rules=rules.as_dict(),
        measurements=ms,
        name=name,
        sources=sources or [],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
