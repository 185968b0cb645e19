"""Samples vs reference: per-ratio differences with uncertainty, detection, memorisation, one score."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__
from .i18n import translate
from .measure import ImageMeasurement
from .phash import hamming
from .ratios import FORMULA_VERSION, RATIO_NAMES
from .reference import RatioStats, ReferenceStats, ratio_statistics, spread, summarize_counts
from .color import color_distances
from .score import consistency_score, geometry_distance, score_version

#: A sample whose perceptual hash is within this many bits (of 64) of a reference
#: image (or of its mirror image) counts as a near-copy of it. Chosen on half of the
#: shared portraits by bench/validity.py (docs/validity.md): copies after JPEG, rescale
#: or a small roll sit at <= 12 bits in 96-99 % of cases, other characters at >= 14.
MEMORIZATION_HAMMING = 12
#: The same for the face-aligned hash (kohya_ext.phash.face_phash), which also catches
#: cropped and padded copies; a sample is a near-copy when EITHER hash is this close.
#: Chosen on the tune half of bench/validity.py (docs/validity.md), with the reference
#: windows hashed at 5 sizes: crop/pad copies 0.98, other characters 0.000 at 10 bits.
MEMORIZATION_FACE_HAMMING = 10


@dataclass
class RatioComparison:
    name: str
    reference: RatioStats
    samples: RatioStats
    diff_pct: float | None = None
    z: float | None = None
    diff_pct_se: float | None = None
    z_se: float | None = None
    unavailable: str | None = None


@dataclass
class ConsistencyReport:
    """Everything one comparison found. ``score`` is never NaN; unavailable values say why."""

    reference_name: str
    backend: dict
    score: float
    score_version: str
    geometry_distance: float | None
    detection_rate: float
    mean_landmark_confidence: float | None
    memorization: float | None
    reference_counts: dict
    sample_counts: dict
    ratios: dict[str, RatioComparison]
    samples: list[ImageMeasurement] = field(default_factory=list)
    #: per colour part (hair, eyes): sample-vs-reference colour distance in reference spreads;
    #: None when either side has no colours (the score is then geometry-only, see score_version)
    color_distance: dict[str, float | None] | None = None

    # -- output ---------------------------------------------------------------
    def to_dict(self, include_images: bool = True) -> dict:
        d = {
            "kohya_ext_version": __version__,
            "reference": self.reference_name,
            "backend": self.backend,
            "formula_version": FORMULA_VERSION,
            "score": self.score,
            "score_version": self.score_version,
            "geometry_distance": self.geometry_distance,
            "detection_rate": self.detection_rate,
            "mean_landmark_confidence": self.mean_landmark_confidence,
            "memorization": self.memorization,
            "color_distance": self.color_distance,
            "reference_counts": self.reference_counts,
            "sample_counts": self.sample_counts,
            "ratios": {
                k: {
                    "reference": asdict(v.reference),
                    "samples": asdict(v.samples),
                    "diff_pct": v.diff_pct,
                    "diff_pct_se": v.diff_pct_se,
                    "z": v.z,
                    "z_se": v.z_se,
                    "unavailable": v.unavailable,
                }
                for k, v in self.ratios.items()
            },
        }
        if include_images:
            d["images"] = [m.to_dict() for m in self.samples]
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(**kw), indent=1, ensure_ascii=False)

    def scalars(self) -> dict[str, float]:
        """Flat finite numbers for trackers: consistency/score, .../<ratio>_diff_pct, _z, detection_rate."""
        out = {"consistency/score": self.score, "consistency/detection_rate": self.detection_rate}
        for k, v in self.ratios.items():
            if v.diff_pct is not None:
                out[f"consistency/{k}_diff_pct"] = v.diff_pct
            if v.z is not None:
                out[f"consistency/{k}_z"] = v.z
        if self.memorization is not None:
            out["consistency/memorization"] = self.memorization
        for part, z in (self.color_distance or {}).items():
            if z is not None:
                out[f"consistency/color_{part}_z"] = z
        return out

    def format_text(self, lang: str = "en") -> str:
        t = translate(lang)
        rc, sc = self.reference_counts, self.sample_counts
        lines = [
            t("reference_line", images=rc["images"], faces=rc["usable"]),
            t("sample_line", images=sc["images"], faces=sc["usable"]),
        ]
        for name in RATIO_NAMES:
            r = self.ratios[name]
            if r.unavailable:
                lines.append(f"{name}: {t('unavailable', reason=t(r.unavailable))}")
                continue
            direction = t("higher") if r.diff_pct > 0 else t("lower") if r.diff_pct < 0 else t("same")
            lines.append(
                f"{name}: {abs(r.diff_pct):.2f}% {t('difference')} "
                f"({direction}; z {r.z:+.2f} ± {r.z_se:.2f} {t('ref_sd')})"
            )
        lines.append(t("detection_line", rate=100 * self.detection_rate))
        if self.mean_landmark_confidence is not None:
            lines.append(t("confidence_line", conf=self.mean_landmark_confidence))
        if self.memorization is not None:
            lines.append(t("memorization_line", pct=100 * self.memorization))
        if self.color_distance and t("color_line") != "color_line":  # wording lives in kohya_ext.i18n
            parts = {p: ("-" if z is None else f"{z:.2f}") for p, z in self.color_distance.items()}
            lines.append(t("color_line", **parts))
        lines.append(t("score_line", score=self.score, version=self.score_version))
        return "\n".join(lines)


def reference_hashes(reference: ReferenceStats) -> list[str]:
    """The reference images' pHashes, plus their mirror images' when the measurements keep them (``phash_mirror``)."""
    mirrored = [h for m in reference.measurements if (h := getattr(m, "phash_mirror", None))]
    return reference.phashes + mirrored


def reference_face_hashes(reference: ReferenceStats) -> list[str]:
    """The reference faces' face-aligned hashes, their mirrors' and both at the other window sizes, where kept.

    (``face_phash``, ``face_phash_mirror``, ``face_phash_scaled``; kohya_ext.phash.FACE_REFERENCE_SCALES.)
    """
    out: list[str] = []
    for m in reference.measurements:
        out += [h for h in (getattr(m, "face_phash", None), getattr(m, "face_phash_mirror", None)) if h]
        out += getattr(m, "face_phash_scaled", None) or []
    return out


def is_near_copy(
    sample: ImageMeasurement,
    reference_hashes: list[str],
    reference_face_hashes: list[str] | None = None,
    max_bits: int = MEMORIZATION_HAMMING,
    max_face_bits: int = MEMORIZATION_FACE_HAMMING,
) -> bool:
    """Whether one sample is a near-copy: its whole-image hash OR its face-aligned hash is close to a reference's."""
    if sample.phash and reference_hashes and min(hamming(sample.phash, r) for r in reference_hashes) <= max_bits:
        return True
    fh = getattr(sample, "face_phash", None)
    return bool(fh and reference_face_hashes and min(hamming(fh, r) for r in reference_face_hashes) <= max_face_bits)


def memorization_share(
    samples: list[ImageMeasurement],
    reference_hashes: list[str],
    max_bits: int = MEMORIZATION_HAMMING,
    reference_face_hashes: list[str] | None = None,
    max_face_bits: int = MEMORIZATION_FACE_HAMMING,
) -> float | None:
    """Share of readable samples that are near-copies (perceptual hash) of some reference image.

    A sample counts when its whole-image hash is within ``max_bits`` of a reference
    hash, or its face-aligned hash within ``max_face_bits`` of a reference face hash
    (crops and pads move the first, not the second). A gate beside the score, not part
    of it: geometry consistency alone rewards copying the training images. Measured in
    docs/validity.md; its false-alarm rate on genuine new drawings of the same
    character is unmeasured (no such data here), and the face hash is the part more
    likely to fire on a new drawing in the same pose and framing.
    """
    readable = [m for m in samples if m.phash]
    if not readable or not (reference_hashes or reference_face_hashes):
        return None
    copies = sum(is_near_copy(m, reference_hashes, reference_face_hashes, max_bits, max_face_bits) for m in readable)
    return copies / len(readable)


def compare(reference: ReferenceStats, samples: list[ImageMeasurement], sample_identity: dict | None = None) -> ConsistencyReport:
    """Compare sample measurements with a reference measured by the same backend and formulas."""
    if sample_identity is not None:
        reference.check_compatible(sample_identity, reference.rules)
    backend = reference.backend_name
    ref_stats = reference.ratios
    smp_stats = ratio_statistics(backend, samples)
    comps: dict[str, RatioComparison] = {}
    for name in RATIO_NAMES:
        r, s = ref_stats[name], smp_stats[name]
        c = RatioComparison(name, r, s)
        if r.unavailable or s.unavailable:
            c.unavailable = r.unavailable or (s.unavailable and "no sample face had this ratio")
        elif abs(r.mean) < 1e-9:
            c.unavailable = "reference mean is zero"
        else:
            sd = spread(backend, name, r)
            diff = s.mean - r.mean
            se = math.sqrt((r.std or 0.0) ** 2 / max(r.n, 1) + (s.std or 0.0) ** 2 / max(s.n, 1))
            c.diff_pct = 100.0 * diff / abs(r.mean)
            c.diff_pct_se = 100.0 * se / abs(r.mean)
            c.z = diff / sd
            c.z_se = se / sd
        comps[name] = c
    counts = summarize_counts(samples)
    readable = counts["images"] - counts.get("unreadable", 0)
    detection_rate = counts["usable"] / readable if readable else 0.0
    confs = [m.mean_point_score for m in samples if m.status == "ok" and m.mean_point_score is not None]
    zs = {k: v.z for k, v in comps.items() if v.z is not None}
    color_z = _color_distance(reference.measurements, samples)
    with_color = color_z is not None and any(z is not None for z in color_z.values())
    return ConsistencyReport(
        reference_name=reference.name,
        backend=reference.backend,
        score=consistency_score(zs, detection_rate, backend, color_z if with_color else None),
        score_version=score_version(backend, with_color),
        geometry_distance=geometry_distance(zs, backend),
        detection_rate=detection_rate,
        mean_landmark_confidence=float(np.mean(confs)) if confs else None,
        memorization=memorization_share(samples, reference_hashes(reference), reference_face_hashes=reference_face_hashes(reference)),
        reference_counts=reference.counts,
        sample_counts=counts,
        ratios=comps,
        samples=samples,
        color_distance=color_z,
    )


def _color_distance(reference: list[ImageMeasurement], samples: list[ImageMeasurement]) -> dict[str, float | None] | None:
    """Colour distances of the usable faces, or None when either side kept no colours (``colors``)."""
    ref = [c for m in reference if m.status == "ok" and (c := getattr(m, "colors", None))]
    smp = [c for m in samples if m.status == "ok" and (c := getattr(m, "colors", None))]
    if not ref or not smp:
        return None
    return color_distances(ref, smp)
