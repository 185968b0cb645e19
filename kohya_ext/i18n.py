"""Report wording in English (default) and Korean (`--lang ko`)."""

from __future__ import annotations

from typing import Callable

from .errors import KohyaExtError

LANGUAGES = ("en", "ko")

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "reference_line": "reference ratios computed ({images} images, {faces} faces)",
        "sample_line": "sample ratios computed ({images} images, {faces} faces)",
        "difference": "difference",
        "higher": "samples higher",
        "lower": "samples lower",
        "same": "same",
        "ref_sd": "reference sd",
        "unavailable": "unavailable ({reason})",
        "detection_line": "face detection rate: {rate:.1f}%",
        "confidence_line": "mean landmark confidence: {conf:.3f}",
        "memorization_line": "near-copies of training images: {pct:.1f}% of samples",
        "score_line": "consistency score: {score:.3f} ({version})",
        "color_line": "colour distance (reference spreads): hair {hair}, eyes {eyes}",
        "skipped_line": "skipped: {error}",
        "skipped_more": "... and {n} more skipped images (their reasons are in --json)",
        "downscaled_line": "{n} images over {mp:.1f} MP measured downscaled to it",
    },
    "ko": {
        "reference_line": "기준 비율 계산 완료 (이미지 {images}장, 얼굴 {faces}개)",
        "sample_line": "샘플 비율 계산 완료 (이미지 {images}장, 얼굴 {faces}개)",
        "difference": "차이",
        "higher": "샘플이 더 큼",
        "lower": "샘플이 더 작음",
        "same": "같음",
        "ref_sd": "기준 표준편차",
        "unavailable": "계산 불가 ({reason})",
        "detection_line": "얼굴 검출률: {rate:.1f}%",
        "confidence_line": "랜드마크 평균 신뢰도: {conf:.3f}",
        "memorization_line": "학습 이미지와 거의 같은 샘플: {pct:.1f}%",
        "score_line": "일관성 점수: {score:.3f} ({version})",
        "color_line": "색상 거리 (기준 표준편차 단위): 머리카락 {hair}, 눈 {eyes}",
        "skipped_line": "건너뜀: {error}",
        "skipped_more": "... 외 {n}장 건너뜀 (이유는 --json에 있음)",
        "downscaled_line": "{mp:.1f} MP보다 큰 이미지 {n}장은 그 크기로 줄여서 측정함",
        # reasons
        "nvxs finds no eyebrows": "nvxs는 눈썹을 찾지 못함",
        "no usable face had this ratio": "이 비율을 잴 수 있는 얼굴이 없음",
        "no sample face had this ratio": "이 비율을 잴 수 있는 샘플 얼굴이 없음",
        "reference mean is zero": "기준 평균이 0",
    },
}


def translate(lang: str) -> Callable[..., str]:
    """A function key -> text for ``lang``; unknown keys fall back to English, then to the key itself."""
    if lang not in LANGUAGES:
        raise KohyaExtError(f"unknown language {lang!r}: choose one of {', '.join(LANGUAGES)}")
    table = MESSAGES[lang]

    def t(key: str, **kw) -> str:
        text = table.get(key) or MESSAGES["en"].get(key) or key
        return text.format(**kw) if kw else text

    return t
