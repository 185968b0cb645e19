"""Samples vs reference: per-ratio differences with uncertainty, detection, the copy gate
(memorisation) and one score (kohya_ext.similarity), as a ConsistencyReport (kohya_ext.report)."""

from __future__ import annotations

import math

import numpy as np

from .color import color_distances, hist_distance
from .measure import ImageMeasurement
from .phash import REFERENCE_WINDOW_INDEX, SAMPLE_WINDOW_INDEX
from .placed_copy import best_placed_similarity
from .ratios import RATIO_NAMES
from .reference import ReferenceStats, ratio_statistics, spread, summarize_counts
from .report import ConsistencyReport, RatioComparison
from .similarity import consistency_score, geometry_distance, score_version

#: Copy gate (memorisation), measurement version 5: a sample is a near-copy of a training image when the
#: 256-bit hash of its drawn area (a plain canvas trimmed) or of one of its kohya_ext.phash.SAMPLE_WINDOWS is
#: within MEMORIZATION_HAMMING bits of a training image's drawn area (as is or mirrored) or of one of its
#: REFERENCE_WINDOWS, OR its face-window hash within MEMORIZATION_FACE_HAMMING bits of a training face's (any of
#: its sizes, as is or mirrored). Both limits are capped at MEMORIZATION_RELATIVE x the reference set's own
#: distinct-image distance (its 25th percentile nearest-other distance): a set of near-identical drawings
#: lowers them. Chosen on the tune half of bench/validity_real.py (docs/validity.md; bench/fit_constants.py).
MEMORIZATION_HAMMING = 52
MEMORIZATION_FACE_HAMMING = 44
MEMORIZATION_RELATIVE = 0.6
#: ... OR, for a sample on a plain canvas and a training image without one (or the reverse), the drawn area
#: found in the other image with at least this masked correlation (kohya_ext.placed_copy: a drawing moved
#: onto another background). Chosen like the limits above (bench/fit_constants.py).
MEMORIZATION_PLACED = 0.89


def _refs(reference) -> list:
    return list(getattr(reference, "measurements", reference))


def reference_hashes(reference) -> list[str]:
    """The training images' drawn-area hashes (as is and mirrored) and their REFERENCE_WINDOWS hashes."""
    out: list[str] = []
    for m in _refs(reference):
        out += [h for h in (getattr(m, "drawn_hash", None), getattr(m, "drawn_hash_mirror", None)) if h]
        wins = getattr(m, "window_hashes", None) or []
        out += [wins[i] for i in REFERENCE_WINDOW_INDEX if i < len(wins)]
    return out


def reference_face_hashes(reference) -> list[str]:
    """The training faces' face-window hashes, their mirrors' and both at the other window sizes, where kept."""
    out: list[str] = []
    for m in _refs(reference):
        out += [h for h in (getattr(m, "face_phash", None), getattr(m, "face_phash_mirror", None)) if h]
        out += getattr(m, "face_phash_scaled", None) or []
    return out


def reference_placed(reference) -> list[dict]:
    """The training images' kohya_ext.placed_copy thumbnails, where kept."""
    return [p for m in _refs(reference) if (p := getattr(m, "placed", None))]


def sample_hashes(sample: ImageMeasurement) -> list[str]:
    """What a sample is compared with: its drawn-area hash and its SAMPLE_WINDOWS hashes."""
    wins = getattr(sample, "window_hashes", None) or []
    return ([sample.drawn_hash] if getattr(sample, "drawn_hash", None) else []) + [wins[i] for i in SAMPLE_WINDOW_INDEX if i < len(wins)]


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def _bytes(hashes: list[str]) -> np.ndarray:
    """Hex hashes of one length -> (N, bytes) uint8."""
    return np.frombuffer(bytes.fromhex("".join(hashes)), np.uint8).reshape(len(hashes), -1) if hashes else np.zeros((0, 0), np.uint8)


def _bit_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, bytes) x (M, bytes) -> (N, M) Hamming distances."""
    return _POPCOUNT[a[:, None, :] ^ b[None, :, :]].sum(-1)


def nearest_other(own: list[list[str]], refs: list[list[str]]) -> list[int]:
    """For each image j with hashes: min distance of own[j] to refs[k] over k != j (same-length hashes only)."""
    n = len(own)
    lens = {len(h) for hs in own + refs for h in hs}
    if len(lens) != 1:
        return []
    A = [_bytes(h) for h in own]
    B = [_bytes(h) for h in refs]
    out = []
    for j in range(n):
        if not len(A[j]):
            continue
        ds = [int(_bit_distances(A[j], B[k]).min()) for k in range(n) if k != j and len(B[k])]
        if ds:
            out.append(min(ds))
    return out


def reference_thresholds(reference, max_bits: int = MEMORIZATION_HAMMING, max_face_bits: int = MEMORIZATION_FACE_HAMMING,
                         relative: float = MEMORIZATION_RELATIVE) -> tuple[int, int]:
    """The gate's limits for one reference set: the absolute ones, capped at ``relative`` x the set's distinct-image distance.

    Each training image is compared, as a sample would be, with the other training images; the 25th
    percentile of these nearest-other distances is a genuine "new drawing" distance of this character
    (a quantile, not the minimum, so a few duplicates inside the set do not collapse the limit).
    With fewer than 4 such images the absolute limits stand.
    """
    ms = _refs(reference)
    img = nearest_other([sample_hashes(m) for m in ms], [reference_hashes([m]) for m in ms])
    face = nearest_other([[h] if (h := getattr(m, "face_phash", None)) else [] for m in ms], [reference_face_hashes([m]) for m in ms])
    cap = lambda nn, t: t if len(nn) < 4 else min(t, int(relative * float(np.percentile(nn, 25))))
    return cap(img, max_bits), cap(face, max_face_bits)


class CopyGate:
    """The copy gate against one set of training-image hashes (arrays built once; is_near_copy per sample)."""

    def __init__(self, reference_hashes: list[str], reference_face_hashes: list[str] | None = None,
                 max_bits: int = MEMORIZATION_HAMMING, max_face_bits: int = MEMORIZATION_FACE_HAMMING,
                 reference_placed: list[dict] | None = None, min_placed: float = MEMORIZATION_PLACED):
        self.max_bits, self.max_face_bits = max_bits, max_face_bits
        self.placed, self.min_placed = reference_placed or [], min_placed
        self.ref = self._by_len(reference_hashes)
        self.face = self._by_len(reference_face_hashes or [])

    @staticmethod
    def _by_len(hashes: list[str]) -> dict[int, np.ndarray]:
        groups: dict[int, list[str]] = {}
        for h in hashes:
            if h:
                groups.setdefault(len(h), []).append(h)
        return {k: _bytes(v) for k, v in groups.items()}

    @staticmethod
    def _min(hashes: list[str], refs: dict[int, np.ndarray]) -> int | None:
        best = None
        for h in hashes:
            r = refs.get(len(h)) if h else None
            if r is not None:
                d = int(_bit_distances(_bytes([h]), r).min())
                best = d if best is None else min(best, d)
        return best

    def distances(self, sample: ImageMeasurement) -> tuple[int | None, int | None]:
        """(drawn-area/window distance, face distance) of a sample, None where either side has no such hash."""
        fh = getattr(sample, "face_phash", None)
        return self._min(sample_hashes(sample), self.ref), self._min([fh] if fh else [], self.face)

    def placed_similarity(self, sample: ImageMeasurement) -> float | None:
        """The sample's drawn area found in a training image, or a training drawing found in the sample (placed_copy)."""
        return best_placed_similarity(getattr(sample, "placed", None), self.placed) if self.placed else None

    def is_copy(self, sample: ImageMeasurement) -> bool:
        d, f = self.distances(sample)
        if (d is not None and d <= self.max_bits) or (f is not None and f <= self.max_face_bits):
            return True
        p = self.placed_similarity(sample)
        return p is not None and p >= self.min_placed


def is_near_copy(
    sample: ImageMeasurement,
    reference_hashes: list[str],
    reference_face_hashes: list[str] | None = None,
    max_bits: int = MEMORIZATION_HAMMING,
    max_face_bits: int = MEMORIZATION_FACE_HAMMING,
) -> bool:
    """Whether one sample is a near-copy: its drawn-area/window hashes OR its face hash are close to a training image's."""
    return CopyGate(reference_hashes, reference_face_hashes, max_bits, max_face_bits).is_copy(sample)


def memorization_share(
    samples: list[ImageMeasurement],
    reference_hashes: list[str],
    max_bits: int = MEMORIZATION_HAMMING,
    reference_face_hashes: list[str] | None = None,
    max_face_bits: int = MEMORIZATION_FACE_HAMMING,
    reference_placed: list[dict] | None = None,
) -> float | None:
    """Share of readable samples that are near-copies of some training image (is_near_copy).

    A gate beside the score, not part of it: geometry and colour consistency alone reward
    copying the training images. Its false-alarm rate on genuine new drawings and its hit
    rate on edited copies are measured on real drawings (docs/validity.md).
    """
    readable = [m for m in samples if getattr(m, "drawn_hash", None)]
    if not readable or not (reference_hashes or reference_face_hashes):
        return None
    gate = CopyGate(reference_hashes, reference_face_hashes, max_bits, max_face_bits, reference_placed)
    return sum(gate.is_copy(m) for m in readable) / len(readable)


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
    t_img, t_face = _thresholds(reference)
    with_color = color_z is not None and any(z is not None for z in color_z.values())
    return ConsistencyReport(
        reference_name=reference.name,
        backend=reference.backend,
        score=consistency_score(zs, detection_rate, backend, color_z if with_color else None),
        score_version=score_version(backend, with_color),
        geometry_distance=geometry_distance(zs, backend),
        detection_rate=detection_rate,
        mean_landmark_confidence=float(np.mean(confs)) if confs else None,
        memorization=memorization_share(samples, reference_hashes(reference), t_img, reference_face_hashes(reference), t_face,
                                        reference_placed(reference)),
        reference_counts=reference.counts,
        sample_counts=counts,
        ratios=comps,
        samples=samples,
        color_distance=color_z,
    )


def _thresholds(reference: ReferenceStats) -> tuple[int, int]:
    """reference_thresholds, computed once per reference object (its measurements do not change)."""
    key = tuple(id(m) for m in reference.measurements)
    cached = getattr(reference, "_gate_thresholds", None)
    if cached is None or cached[0] != key:
        cached = (key, reference_thresholds(reference))
        try:
            reference._gate_thresholds = cached
        except AttributeError:
            pass
    return cached[1]


def _color_distance(reference: list[ImageMeasurement], samples: list[ImageMeasurement]) -> dict[str, float | None] | None:
    """Colour distances of the usable faces (hair, eyes; hair_hist where both sides kept histograms),
    or None when either side kept no colours (``colors``)."""
    ref_ok = [m for m in reference if m.status == "ok" and getattr(m, "colors", None)]
    smp_ok = [m for m in samples if m.status == "ok" and getattr(m, "colors", None)]
    if not ref_ok or not smp_ok:
        return None
    out = color_distances([m.colors for m in ref_ok], [m.colors for m in smp_ok])
    hd = hist_distance([getattr(m, "hair_hist", None) for m in ref_ok], [getattr(m, "hair_hist", None) for m in smp_ok])
    if hd is not None:
        out["hair_hist"] = hd
    return out
