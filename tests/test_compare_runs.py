"""`kohya-ext compare`: runs side by side, each ranked the way `rank` ranks it."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest

from kohya_ext.backends import BackendSpec
from kohya_ext.cli import main
from kohya_ext.posthoc.compare_runs import FIELDS, compare_runs, format_comparison
from kohya_ext.posthoc.rank import RANK_DIR, load_rank
from posthoc_fixtures import make_kohya_ext_run, make_sample_run


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "posthoc-cache"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tadne_tiles, cache_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    return make_kohya_ext_run(root, tadne_tiles, cache_dir), make_sample_run(root, tadne_tiles, per_step=2)


def test_compare_side_by_side(runs, cache_dir, tmp_path, capsys):
    ext, plain = runs
    missing = tmp_path / "no_such_run"
    out_csv = tmp_path / "cmp.csv"
    rc = main(["compare", str(plain), str(ext), str(missing), "--backend", "nvxs", "-q",
               "--cache-dir", str(cache_dir), "--csv", str(out_csv)])
    assert rc == 1  # one run could not be ranked; the others are still shown
    text = capsys.readouterr().out
    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == FIELDS
    assert rows[-1]["run"] == str(missing) and rows[-1]["source"] == "error"
    scored = rows[:2]
    assert float(scored[0]["best_score"]) >= float(scored[1]["best_score"])  # best run first
    for r in scored:
        ranking = load_rank(Path(r["run"]) / RANK_DIR)  # what `rank` wrote for that run
        best = ranking.best
        last = max(ranking.rows, key=lambda x: x["eval"])
        assert float(r["best_score"]) == pytest.approx(best["score"])
        assert float(r["last_score"]) == pytest.approx(last["score"])
        assert float(r["last_minus_best"]) == pytest.approx(last["score"] - best["score"])
        assert int(r["evaluations"]) == len(ranking.rows)
    by_run = {r["run"]: r for r in rows}
    assert by_run[str(ext)]["source"] == "leaderboard" and by_run[str(ext)]["last"] == "step 300"
    assert by_run[str(plain)]["source"] == "samples" and by_run[str(plain)]["last"] == "epoch 2"
    assert "only 2 image(s)" in by_run[str(plain)]["warnings"]
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["run", "best", "best"]
    assert any(line.startswith("error:") and "no such output folder" in line for line in lines)


def test_compare_reuses_a_fresh_ranking_and_redoes_a_stale_one(runs, cache_dir, monkeypatch):
    ext, plain = runs
    kw = dict(backend=BackendSpec("nvxs"), cache_dir=cache_dir, progress=False)
    first = compare_runs([plain], **kw)[0]
    assert first["source"] == "samples"

    def no_scoring(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr("kohya_ext.scorer.Scorer", no_scoring)
    again = compare_runs([plain], **kw)[0]
    assert again == first  # read from kohya-ext-rank/, nothing scored
    newest = max((plain / "sample").glob("*.png"), key=lambda p: p.stat().st_mtime)
    later = time.time() + 5
    os.utime(newest, (later, later))  # a new sample since the ranking: it must be ranked again
    with pytest.raises(AssertionError, match="scored again"):
        compare_runs([plain], **kw)
    assert "best score" in format_comparison([first])
