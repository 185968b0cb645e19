"""Landmark layouts of the two backends: what each point index means.

One convention everywhere: "left" is image-left (the character's right).
The tests pin these indices (swapping two of them, or breaking a flip pair,
makes a test fail), because every ratio formula is written against them.
"""

from __future__ import annotations

# --- hrnet: anime-face-detector's HRNetV2, 28 points -------------------------
# Meanings read off anime-face-detector's mean-face index map and its flip
# pairs (configs/mmpose/hrnetv2.py `swap` fields, _landmark.FLIP_PAIRS).
HRNET_POINTS: tuple[str, ...] = (
    "contour_eye_left",  # 0  face contour at eye level, image-left
    "jaw_left",  # 1  jaw contour at mouth level
    "chin",  # 2  chin tip
    "jaw_right",  # 3
    "contour_eye_right",  # 4
    "brow_left_outer",  # 5
    "brow_left_peak",  # 6
    "brow_left_inner",  # 7
    "brow_right_inner",  # 8
    "brow_right_peak",  # 9
    "brow_right_outer",  # 10
    "eye_left_upper_outer",  # 11  outer canthus of the image-left eye
    "eye_left_upper_apex",  # 12
    "eye_left_upper_inner",  # 13  inner canthus
    "eye_left_lower_outer",  # 14
    "eye_left_lower_middle",  # 15
    "eye_left_lower_inner",  # 16
    "eye_right_upper_inner",  # 17  inner canthus of the image-right eye
    "eye_right_upper_apex",  # 18
    "eye_right_upper_outer",  # 19
    "eye_right_lower_inner",  # 20
    "eye_right_lower_middle",  # 21
    "eye_right_lower_outer",  # 22
    "nose",  # 23
    "mouth_left",  # 24
    "mouth_upper",  # 25  upper-lip centre
    "mouth_right",  # 26
    "mouth_lower",  # 27  lower-lip centre
)
HRNET_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (0, 4), (1, 3), (5, 10), (6, 9), (7, 8), (11, 19), (12, 18),
    (13, 17), (14, 22), (15, 21), (16, 20), (24, 26),
)  # fmt: skip
HRNET_EYE_LEFT = tuple(range(11, 17))
HRNET_EYE_RIGHT = tuple(range(17, 23))
HRNET_BROW_LEFT = (5, 6, 7)
HRNET_BROW_RIGHT = (8, 9, 10)

# --- nvxs: the detector inside the animeface wheel ---------------------------
# nvxs returns boxes for the eyes and mouth and points for nose and chin; the
# backend turns them into these points. nvxs's own "left_eye" is the
# image-RIGHT eye: the backend swaps it so this table holds.
NVXS_POINTS: tuple[str, ...] = (
    "eye_left_center",  # 0  centre of the image-left eye box
    "eye_right_center",  # 1
    "eye_left_inner",  # 2  inner (image-right) edge of the image-left eye box, at its centre height
    "eye_right_inner",  # 3  inner (image-left) edge of the image-right eye box
    "nose",  # 4
    "mouth_left",  # 5  left edge of the mouth box, centre height
    "mouth_right",  # 6
    "mouth_center",  # 7
    "chin",  # 8
)
NVXS_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (5, 6))

POINT_LAYOUTS: dict[str, tuple[str, ...]] = {"hrnet": HRNET_POINTS, "nvxs": NVXS_POINTS}
FLIP_PAIRS: dict[str, tuple[tuple[int, int], ...]] = {"hrnet": HRNET_FLIP_PAIRS, "nvxs": NVXS_FLIP_PAIRS}


def flip_permutation(backend: str) -> list[int]:
    """Index permutation that maps a mirrored face's points back onto this layout."""
    perm = list(range(len(POINT_LAYOUTS[backend])))
    for a, b in FLIP_PAIRS[backend]:
        perm[a], perm[b] = b, a
    return perm
