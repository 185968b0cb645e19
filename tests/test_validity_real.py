"""Real-drawing floors (issue 9), offline and in seconds: the score and the copy gate on committed measurements.

tests/data/validity_real_nvxs.json.gz holds derived measurements of bench/validity_real.py's real-drawing
benchmark (20 characters of github:Sytwu/Anime-Face-Recognition, 16 reference + 32 new drawings each, four
presentations, edited copies): per image its status, face box, nvxs points, colours, hair histogram and
copy-gate hashes; no images. Ratios are recomputed from the points with the current formulas, scores go
through kohya_ext.comparison.compare and the gate through kohya_ext.comparison's own functions, so a regression of
the formula, the weights, the colour parts or the gate fails here. Floors = the measured values
(docs/validity.md) less a margin of about one character's worth; regenerate the file with
``python bench/validity_real.py DIR --export tests/data/validity_real_nvxs.json.gz`` when measurements change.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kohya_ext.errors import KohyaExtError
from kohya_ext.measure import MEASUREMENT_VERSION
from kohya_ext.reference import ReferenceStats

DATA = Path(__file__).resolve().parent / "data" / "validity_real_nvxs.json.gz"
_spec = importlib.util.spec_from_file_location("real_export", Path(__file__).resolve().parents[1] / "bench" / "real_export.py")
rx = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("real_export", rx)
_spec.loader.exec_module(rx)

#: AUC floors at n = 4 new drawings per evaluation (reference 16), per presentation and half.
#: Measured (docs/validity.md): see MEASURED below; floors 0.03 lower (one character of ten moving by ~0.3).
MEASURED_AUC4: dict[tuple[str, str], float] = {
    ("tight", "tune"): 0.871, ("tight", "report"): 0.957, ("white", "tune"): 0.869, ("white", "report"): 0.959,
    ("busy", "tune"): 0.882, ("busy", "report"): 0.957, ("busy_blur", "tune"): 0.874, ("busy_blur", "report"): 0.962,
}
#: n = 8, white canvas (the issue's headline presentation).
MEASURED_AUC8_WHITE: dict[str, float] = {"tune": 0.879, "report": 0.976}
AUC_MARGIN = 0.03
#: Copy gate, per gate presentation and half: false alarms at most (measured + 1 %), copies caught at least (measured - 5 %).
_NO_FALSE_ALARMS = {"new drawings, same character": 0.0, "new drawings, other characters": 0.0,
                    "evaluations of 4 new drawings denied": 0.0, "evaluations of 8 new drawings denied": 0.0}
_EDITS_CAUGHT = {f"copies: {e}": 1.0 for e in ("exact", "jpeg_q70", "rescale_0.75", "crop_6", "pad_6", "mirror")}
#: new_bg on a busy reference (the drawing lifted off its scene) is caught by kohya_ext.placed_copy's search.
MEASURED_GATE: dict[tuple[str, str], dict[str, float]] = {
    ("white", "tune"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 0.975},
    ("white", "report"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 0.975},
    ("busy", "tune"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 1.0},
    ("busy", "report"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 1.0},
}
FA_MARGIN, HIT_MARGIN = 0.01, 0.05


@pytest.fixture(scope="module")
def data():
    return rx.Loaded(DATA)


def test_measurements_are_current(data):
    assert data.meta["measurement_version"] == MEASUREMENT_VERSION, "regenerate tests/data/validity_real_nvxs.json.gz"
    from kohya_ext.backends import nvxs

    assert data.meta["chain"] == "+".join(("plain",) + tuple(nvxs.DEFAULT_RETRY))
    assert set(data.halves["tune"]).isdisjoint(data.halves["report"]) and len(data.halves["report"]) == 10


@pytest.mark.parametrize("presentation", ["tight", "white", "busy", "busy_blur"])
def test_score_separates_characters_on_real_drawings(data, presentation):
    f = rx.shipped_score(data.meta["backend"])
    for half in ("tune", "report"):
        auc, per = rx.pairwise_auc(data.sets[presentation], data.halves[half], 4, f)
        assert auc >= MEASURED_AUC4[(presentation, half)] - AUC_MARGIN, (presentation, half, auc, per)
        if presentation == "white":
            auc8, _ = rx.pairwise_auc(data.sets[presentation], data.halves[half], 8, f)
            assert auc8 >= MEASURED_AUC8_WHITE[half] - AUC_MARGIN, (half, auc8)


@pytest.mark.parametrize("presentation", ["white", "busy"])
def test_copy_gate_on_real_drawings(data, presentation):
    for half in ("tune", "report"):
        r = rx.gate_rates(data.sets[presentation], data.halves[half], rx.shipped_gate_for)
        m = MEASURED_GATE[(presentation, half)]
        for k, v in r.items():
            if k.startswith("new drawings") or k.startswith("evaluations"):
                assert v <= m[k] + FA_MARGIN, (presentation, half, k, v)
            else:
                assert v >= m[k] - HIT_MARGIN, (presentation, half, k, v)
        # the targets where this data meets them (docs/validity.md says where it does not)
        assert r["new drawings, same character"] <= 0.02 and r["new drawings, other characters"] <= 0.01
        assert min(r[f"copies: {e}"] for e in ("exact", "jpeg_q70", "rescale_0.75")) >= 0.95
        assert min(r[f"copies: {e}"] for e in ("crop_6", "pad_6", "mirror", "new_bg")) >= 0.90


#: False alarms of the gate on genuine new drawings of one presentation against references of another
#: (the moved-onto-another-background search applies to exactly these pairs), per half: at most measured + 1 %.
_NONE = {"new drawings, same character": 0.0, "new drawings, other characters": 0.0}
MEASURED_CROSS: dict[tuple[str, str, str], dict[str, float]] = {
    ("white", "busy", "tune"): _NONE, ("white", "busy", "report"): _NONE,
    # 1 of 80: a same-artist near-variant of a reference drawing (docs/validity.md)
    ("busy", "white", "tune"): {"new drawings, same character": 0.0125, "new drawings, other characters": 0.0},
    ("busy", "white", "report"): _NONE,
}


@pytest.mark.parametrize(("samples", "refs"), [("white", "busy"), ("busy", "white")])
def test_copy_gate_across_backgrounds(data, samples, refs):
    pytest.importorskip("cv2", reason="the moved-copy search needs OpenCV (scripts/install.sh installs it)")
    for half in ("tune", "report"):
        # the new drawings that kept their thumbnail (bench/real_export.py THUMB_NEW)
        kept = {c: {"new": v["new"][: rx.THUMB_NEW]} for c, v in data.sets[samples].items()}
        r = rx.cross_rates(kept, data.sets[refs], data.halves[half], rx.shipped_gate_for)
        m = MEASURED_CROSS[(samples, refs, half)]
        for k, v in r.items():
            assert v <= m[k] + FA_MARGIN, (samples, refs, half, k, v)
        assert r["new drawings, same character"] <= 0.02 and r["new drawings, other characters"] <= 0.01, (samples, refs, half, r)


def test_references_of_older_measurements_are_refused():
    old = {"format": "kohya-ext-reference", "format_version": 1, "backend": {"backend": "nvxs"}, "rules": {}, "formula_version": 2, "images": []}
    with pytest.raises(KohyaExtError, match="rebuild the reference"):
        ReferenceStats.from_dict(old, "ref.json")
    with pytest.raises(KohyaExtError, match="upgrade kohya-ext"):
        ReferenceStats.from_dict({**old, "measurement_version": MEASUREMENT_VERSION + 1}, "ref.json")
