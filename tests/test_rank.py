"""`kohya-ext rank`: sd-scripts sample names, scoring sample/ by step, reading a kohya-ext leaderboard."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from kohya_ext.backends import BackendSpec
from kohya_ext.cli import main
from kohya_ext.errors import KohyaExtError
from kohya_ext.posthoc.rank import RANK_DIR, format_table, rank_run
from kohya_ext.patches.sample_names import group_samples, parse_sample_name
from kohya_ext.training.leaderboard import COLUMNS, FORMAT
from posthoc_fixtures import OUTPUT_NAME, make_kohya_ext_run, make_sample_run, sample_file


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    # shared by the posthoc test modules: the measurement cache is keyed by file content
    return tmp_path_factory.getbasetemp() / "posthoc-cache"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, tadne_tiles) -> Path:
    return make_sample_run(tmp_path_factory.mktemp("samplerun"), tadne_tiles)


@pytest.fixture(scope="module")
def ranked(sample_run, cache_dir):
    return rank_run(sample_run, backend=BackendSpec("nvxs"), cache_dir=cache_dir, progress=False)


# -- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, out, step, epoch, idx, seed", [
    ("000500_03_20240101120000.png", None, 500, None, 3, None),  # no --output_name, no seed
    ("my_char_v2_000500_03_20240101120000_42.png", "my_char_v2", 500, None, 3, 42),
    ("a_123456_e000003_100_20240101120000.png", "a_123456", None, 3, 100, None),  # prompt index past 99
    ("sks_girl_v2_000100_000100_07_20240101120000_7.png", "sks_girl_v2_000100", 100, None, 7, 7),
    ("run_1234567_00_20240101120000_0.png", "run", 1234567, None, 0, 0),  # steps wider than {:06d}
])
def test_parse_sample_name(name, out, step, epoch, idx, seed):
    s = parse_sample_name(name)
    assert s is not None
    assert (s.output_name, s.step, s.epoch, s.prompt_index, s.seed) == (out, step, epoch, idx, seed)
    assert s.time == datetime(2024, 1, 1, 12, 0, 0)


@pytest.mark.parametrize("name", ["notes.png", "x_000500_03_2024010112.png", "x_0500_03_20240101120000.png",
                                  "x_000500_03_20241301120000.png", "x_000500_03_20240101120000.jpg"])
def test_not_sample_names(name):
    assert parse_sample_name(name) is None


def test_groups_in_the_order_they_were_made(sample_run):
    groups, other = group_samples(sample_run / "sample")
    assert [(g.kind, g.number) for g in groups] == [("step", 100), ("step", 200), ("epoch", 1), ("epoch", 2)]
    assert all(len(g.samples) == 4 for g in groups)
    assert [parse_sample_name(p).prompt_index for p in groups[0].paths] == [98, 99, 100, 101]
    assert [p.name for p in other] == ["notes.png"]


# -- scoring sample/ -----------------------------------------------------------------------------

def test_rank_scores_samples_best_first(ranked, sample_run):
    rows = ranked.rows
    assert ranked.source == "samples"
    assert ranked.reference == str(sample_run.parent / "train")  # found through config_lora-*.toml
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0]["is_best"] and sum(bool(r["is_best"]) for r in rows) == 1
    by_label = {r["label"]: r for r in rows}
    squashed = by_label["step 200"]
    # the squashed portraits are the worst step, and it is their proportions that moved
    assert squashed is rows[-1]
    assert all(squashed["score"] < r["score"] for r in rows if r is not squashed)
    for r in rows:
        assert 0.0 <= r["detection_rate"] <= 1.0
        assert r["interocular_ratio_diff_pct"] is not None and r["trigger"] in ("sample_step", "sample_epoch")
        assert (ranked.folder / r["images_dir"] / "overlay_grid.png").is_file()
    # epoch 1's step comes from its checkpoint's ss_steps; epoch 2 has no checkpoint left
    e1 = by_label["epoch 1 (step 250)"]
    assert (e1["epoch"], e1["kohya_step"], e1["checkpoint"]) == (1, 250, f"{OUTPUT_NAME}-000001.safetensors")
    e2 = by_label["epoch 2"]
    assert (e2["epoch"], e2["kohya_step"], e2["cum_step"]) == (2, None, None)
    assert any("epoch 2" in w for w in ranked.warnings)
    assert any("notes.png" in w or "not sd-scripts sample names" in w for w in ranked.warnings)


def test_rank_writes_leaderboard_schema(ranked):
    with open(ranked.folder / "leaderboard.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        csv_rows = list(reader)
    doc = json.loads((ranked.folder / "leaderboard.json").read_text(encoding="utf-8"))
    assert doc["format"] == FORMAT and doc["columns"] == COLUMNS
    assert [float(r["score"]) for r in csv_rows] == pytest.approx([r["score"] for r in doc["evaluations"]])
    assert [r["score"] for r in doc["evaluations"]] == sorted((r["score"] for r in doc["evaluations"]), reverse=True)
    assert doc["best"]["score"] == doc["evaluations"][0]["score"]


def test_rank_cli_warns_when_samples_are_few(tmp_path, tadne_tiles, cache_dir, capsys):
    run = make_sample_run(tmp_path, tadne_tiles, per_step=2)
    rc = main(["rank", str(run), "--backend", "nvxs", "-q", "--cache-dir", str(cache_dir), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["#", "checkpoint", "score"]
    assert "*best" in lines[1]
    assert any(line.startswith("warning: only 2 image(s) per") for line in lines)
    assert (tmp_path / "r" / "leaderboard.csv").is_file()


def test_rank_without_training_data_asks_for_reference(tmp_path, tadne_tiles, capsys):
    run = make_sample_run(tmp_path, tadne_tiles, per_step=1, config=False)
    with pytest.raises(KohyaExtError) as e:
        rank_run(run, backend=BackendSpec("nvxs"), progress=False)
    msg = str(e.value)
    assert "--reference" in msg and "'10_sks girl'" in msg and "\n" not in msg
    assert main(["rank", str(run), "--backend", "nvxs", "-q"]) == 1
    assert "--reference" in capsys.readouterr().err


def test_rank_config_naming_missing_data_says_so(tmp_path, tadne_tiles):
    run = make_sample_run(tmp_path, tadne_tiles, per_step=1, config=False)
    (run / "config_lora-20240506-070000.toml").write_text('train_data_dir = "/nowhere/train"\n')
    with pytest.raises(KohyaExtError, match=r"/nowhere/train.*--reference"):
        rank_run(run, backend=BackendSpec("nvxs"), progress=False)


def test_rank_several_runs_in_one_sample_folder(tmp_path, tadne_tiles):
    run = make_sample_run(tmp_path, tadne_tiles, per_step=1)
    src = next((run / "sample").glob(f"{OUTPUT_NAME}_000100_*"))
    shutil.copy(src, sample_file(run / "sample", "000100", 0, datetime(2024, 1, 1), None, output_name="other_run"))
    with pytest.raises(KohyaExtError, match="--output-name"):
        rank_run(run, backend=BackendSpec("nvxs"), progress=False)


# -- a run trained with kohya-ext ----------------------------------------------------------------

def test_rank_reads_kohya_ext_leaderboard_without_rescoring(tmp_path, tadne_tiles, cache_dir, monkeypatch):
    run = make_kohya_ext_run(tmp_path, tadne_tiles, cache_dir)
    board = run / "consistency"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in board.glob("leaderboard.*")}
    trained = json.loads((board / "leaderboard.json").read_text())["evaluations"]

    def no_scoring(*a, **k):
        raise AssertionError("rank re-scored a run that has a leaderboard")

    monkeypatch.setattr("kohya_ext.scorer.Scorer", no_scoring)
    res = rank_run(run, progress=False)
    assert res.source == "leaderboard" and res.folder == run / RANK_DIR
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in board.glob("leaderboard.*")} == before
    assert sorted(r["score"] for r in res.rows) == sorted(r["score"] for r in trained)
    assert res.rows[0]["score"] == max(r["score"] for r in trained) and res.rows[0]["is_best"]
    assert res.images_per_point == 4 and not res.warnings
    doc = json.loads((res.folder / "leaderboard.json").read_text())
    assert doc["columns"] == COLUMNS and doc["run"]["source"] == "leaderboard"
    text = format_table(res)
    assert "not re-scored" in text and text.splitlines()[1].split()[1:3] == ["step", str(res.rows[0]["kohya_step"])]
    with pytest.raises(KohyaExtError, match="never overwrites"):
        rank_run(run, out_dir=board, progress=False)


def test_rank_names_the_file_that_holds_weights_after_a_resume_overwrote_one(tmp_path):
    """A resumed run: kohya rewrote ext-step00000002/4 at cumulative steps 6/8; the best (cum 4) lives on in ext-best."""
    from kohya_ext.training.leaderboard import Leaderboard

    board = Leaderboard(tmp_path / "run" / "consistency")
    for cum, kohya, score in [(2, 2, 0.5), (4, 4, 0.8), (6, 2, 0.6), (8, 4, 0.7)]:
        board.append({"status": "ok", "cum_step": cum, "kohya_step": kohya, "epoch": 1, "score": score, "detection_rate": 1.0,
                      "checkpoint": f"ext-step{kohya:08d}.safetensors", "is_best": cum == 4})
    board.mark_overwritten("ext-step00000002.safetensors", 6, {"eval": 2, "cum_step": 4}, "ext-best.safetensors")
    board.mark_overwritten("ext-step00000004.safetensors", 8, {"eval": 2, "cum_step": 4}, "ext-best.safetensors")
    board.best_file = {"file": "ext-best.safetensors", "holds": {"eval": 2, "cum_step": 4}, "error": None, "pending": None}
    board.write()
    res = rank_run(tmp_path / "run")
    by_cum = {r["cum_step"]: r for r in res.rows}
    assert res.best["cum_step"] == 4 and res.best["checkpoint"] == "ext-best.safetensors"
    assert by_cum[2]["checkpoint"] is None and by_cum[6]["checkpoint"] == "ext-step00000002.safetensors"
    assert sum("was overwritten" in w for w in res.warnings) == 2
    assert "step 4 *best (file overwritten)" in format_table(res)
    board.best_file = {**board.best_file, "holds": None, "error": "OSError: [Errno 28] No space left on device"}
    board.write()
    assert any(w.startswith("ext-best.safetensors does not hold the best evaluation") and "No space" in w
               for w in rank_run(tmp_path / "run").warnings)
