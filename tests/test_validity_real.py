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


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


rx = _bench_module("real_export")
metrics = _bench_module("metrics")

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
#: new_bg on a busy reference (the drawing lifted off its scene) is caught only by kohya_ext.placed_copy's search,
#: which needs small greyscale copies of the drawings: not committed (no licence), so here the hashes alone
#: catch 2.5 %; the bench measures 100 % with the search (docs/validity.md), tests/test_placed_copy.py floors it.
MEASURED_GATE: dict[tuple[str, str], dict[str, float]] = {
    ("white", "tune"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 0.975},
    ("white", "report"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 0.975},
    ("busy", "tune"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 0.025},
    ("busy", "report"): {**_NO_FALSE_ALARMS, **_EDITS_CAUGHT, "copies: new_bg": 0.025},
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
        auc, per = metrics.pairwise_auc(data.sets[presentation], data.halves[half], 4, f)
        assert auc >= MEASURED_AUC4[(presentation, half)] - AUC_MARGIN, (presentation, half, auc, per)
        if presentation == "white":
            auc8, _ = metrics.pairwise_auc(data.sets[presentation], data.halves[half], 8, f)
            assert auc8 >= MEASURED_AUC8_WHITE[half] - AUC_MARGIN, (half, auc8)


@pytest.mark.parametrize("presentation", ["white", "busy"])
def test_copy_gate_on_real_drawings(data, presentation):
    for half in ("tune", "report"):
        r = metrics.gate_rates(data.sets[presentation], data.halves[half], rx.shipped_gate_for)
        m = MEASURED_GATE[(presentation, half)]
        for k, v in r.items():
            if k.startswith("new drawings") or k.startswith("evaluations"):
                assert v <= m[k] + FA_MARGIN, (presentation, half, k, v)
            else:
                assert v >= m[k] - HIT_MARGIN, (presentation, half, k, v)
        # the targets where this data meets them (docs/validity.md says where it does not)
        assert r["new drawings, same character"] <= 0.02 and r["new drawings, other characters"] <= 0.01
        assert min(r[f"copies: {e}"] for e in ("exact", "jpeg_q70", "rescale_0.75")) >= 0.95
        assert min(r[f"copies: {e}"] for e in ("crop_6", "pad_6", "mirror")) >= 0.90
        if presentation == "white":  # both sides on a plain canvas: the hashes' job
            assert r["copies: new_bg"] >= 0.90


def test_references_of_older_measurements_are_refused():
    old = {"format": "kohya-ext-reference", "format_version": 1, "backend": {"backend": "nvxs"}, "rules": {}, "formula_version": 2, "images": []}
    with pytest.raises(KohyaExtError, match="rebuild the reference"):
        ReferenceStats.from_dict(old, "ref.json")
    with pytest.raises(KohyaExtError, match="upgrade kohya-ext"):
        ReferenceStats.from_dict({**old, "measurement_version": MEASUREMENT_VERSION + 1}, "ref.json")
