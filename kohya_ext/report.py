"""The result of one comparison (kohya_ext.comparison.compare): per-ratio differences, detection,
memorisation and the score, as text (en/ko), JSON and tracker scalars."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import __version__
from .i18n import translate
from .images import MAX_DETECT_PIXELS
from .io_utils import dumps_json
from .measure import ImageMeasurement
from .ratios import FORMULA_VERSION, RATIO_NAMES
from .reference import RatioStats

#: unreadable samples named one per line in the text report; the rest are counted (all are in the JSON)
MAX_SKIPPED_LINES = 5


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
        return dumps_json(self.to_dict(**kw), indent=1, ensure_ascii=False)

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
        skipped = [m.error or m.name for m in self.samples if m.status == "unreadable"]
        lines += [t("skipped_line", error=e) for e in skipped[:MAX_SKIPPED_LINES]]
        if len(skipped) > MAX_SKIPPED_LINES:
            lines.append(t("skipped_more", n=len(skipped) - MAX_SKIPPED_LINES))
        downscaled = sum(1 for m in self.samples if m.detected_size)
        if downscaled:
            lines.append(t("downscaled_line", n=downscaled, mp=MAX_DETECT_PIXELS / 1e6))
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
