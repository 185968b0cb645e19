"""Issue 15, parts 2-3: what is read is validated (types, finite numbers, versions), and nothing good
is replaced by something worse. Every hostile file is made here at run time; each CLI case asserts no
signal death, no traceback, one error line, the documented exit code, and the previous good file
byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from kohya_ext.errors import KohyaExtError
from kohya_ext.io_utils import STALE_TMP_SECONDS, DamagedFileError, atomic_write_text, dumps_json, loads_json
from kohya_ext.reference import ReferenceStats

NVXS = ["--backend", "nvxs", "-q"]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kohya_ext.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 1, *needles: str) -> str:
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == code, (proc.returncode, proc.stdout[-500:], proc.stderr[-1000:])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("kohya-ext: error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def good_ref(tmp_path_factory, tadne_dir) -> Path:
    """A working ref.json of the first 12 shared portraits (nvxs)."""
    d = tmp_path_factory.mktemp("good")
    src = d / "images"
    src.mkdir()
    for p in sorted(tadne_dir.glob("*.png"))[:12]:
        (src / p.name).write_bytes(p.read_bytes())
    ref = d / "ref.json"
    proc = run_cli("reference", str(src), "-o", str(ref), *NVXS, "--cache-dir", str(d / "cache"))
    assert proc.returncode == 0, proc.stderr
    return ref


@pytest.fixture()
def samples(tmp_path, tadne_dir) -> Path:
    d = tmp_path / "samples"
    d.mkdir()
    for p in sorted(tadne_dir.glob("*.png"))[20:24]:
        (d / p.name).write_bytes(p.read_bytes())
    return d


def edited_ref(good_ref: Path, dest: Path, edit) -> Path:
    d = json.loads(good_ref.read_text(encoding="utf-8"))
    edit(d)
    dest.write_text(json.dumps(d), encoding="utf-8")  # json.dumps writes NaN as the bare token NaN
    return dest


# -- strict JSON ------------------------------------------------------------------------------------

def test_json_is_written_finite_and_read_strictly():
    assert json.loads(dumps_json({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}
    for text in ('{"a": NaN}', '{"a": -Infinity}', '{"a": 1e999}'):
        with pytest.raises(ValueError):
            loads_json(text)
    assert loads_json('{"a": NaN, "b": 1e999}', nonfinite_as_null=True) == {"a": None, "b": None}


# -- reference files ------------------------------------------------------------------------------

def _nan_ratio(d):
    for m in d["images"]:
        if m["ratios"].get("interocular_ratio") is not None:
            m["ratios"]["interocular_ratio"] = float("nan")


REF_CASES = {
    "nan-ratio": (_nan_ratio, "non-finite number"),
    "string-ratio": (lambda d: d["images"][0]["ratios"].update(interocular_ratio="0.4"), "image 0"),
    "list-not-object": (lambda d: d.update(images=[[1, 2, "x"]]), "image 0"),
    "bad-status": (lambda d: d["images"][1].update(status="great"), "status"),
    "huge-share": (lambda d: d["images"][0].update(placed={"drawn": "", "mask": "", "share": 1e6}), "placed"),
    "points-nested": (lambda d: d["images"][0].update(points=[[1, [2]]]), "points"),
    "backend-number": (lambda d: d.update(backend=3), "backend"),
    "version-text": (lambda d: d.update(measurement_version="5"), "whole number"),
    "future-version": (lambda d: d.update(format_version=99), "upgrade kohya-ext"),
}


@pytest.mark.parametrize("case", sorted(REF_CASES))
def test_damaged_references_are_refused_with_one_line_never_scored(case, good_ref, samples, tmp_path):
    edit, needle = REF_CASES[case]
    bad = edited_ref(good_ref, tmp_path / "bad.json", edit)
    with pytest.raises(KohyaExtError) as e:
        ReferenceStats.load(bad)
    assert needle in str(e.value) and "\n" not in str(e.value)
    report = tmp_path / "report.json"
    report.write_text("previous report")
    proc = run_cli("score", "-r", str(bad), str(samples), *NVXS, "--json", str(report))
    assert_one_line_error(proc, 1, str(bad))
    assert "consistency score" not in proc.stdout
    assert report.read_text() == "previous report"


@pytest.mark.parametrize("payload", [b'{"format": "kohya-ext-reference", "images": [', b"\xff\xfe not utf-8", b"", b"[1, 2, 3]"],
                         ids=["truncated", "binary", "empty", "json-list"])
def test_unparseable_reference_is_a_reference_error_not_an_image(payload, samples, tmp_path):
    bad = tmp_path / "ref.json"
    bad.write_bytes(payload)
    line = assert_one_line_error(run_cli("score", "-r", str(bad), str(samples), *NVXS), 1, str(bad))
    assert "reference file" in line and "unreadable" not in line and "1 images" not in line


# -- caches -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", ['[1, 2, "x"]', '{"entries": [], "stat": {}}', "{not json", '{"entries": {"k": {"name": 1}}, "stat": {}}'],
                         ids=["list", "entries-list", "not-json", "bad-entry"])
def test_damaged_cache_is_read_as_empty_said_once_and_rewritten(payload, tadne_dir, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for p in sorted(tadne_dir.glob("*.png"))[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    cache = tmp_path / "cache"
    assert run_cli("reference", str(src), "-o", str(tmp_path / "r.json"), *NVXS, "--cache-dir", str(cache)).returncode == 0
    (cache_file,) = cache.glob("measurements-*.json")
    cache_file.write_text(payload)
    proc = run_cli("reference", str(src), "-o", str(tmp_path / "r2.json"), "--backend", "nvxs", "--cache-dir", str(cache))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if str(cache_file) in ln]
    if payload.startswith('{"entries": {"k"'):
        assert notes == []  # an entry nobody asks for is never read; the file is merged and kept
    else:
        assert len(notes) == 1, proc.stderr
    data = json.loads(cache_file.read_text())
    assert isinstance(data["entries"], dict) and len([k for k in data["entries"] if k != "k"]) == 3


def test_concurrent_scorers_keep_each_others_cache_entries(tadne_dir, tmp_path):
    cache = tmp_path / "cache"
    folders = []
    for k in range(2):
        d = tmp_path / f"set{k}"
        d.mkdir()
        for p in sorted(tadne_dir.glob("*.png"))[k * 4:(k + 1) * 4]:
            (d / p.name).write_bytes(p.read_bytes())
        folders.append(d)
    procs = [subprocess.Popen([sys.executable, "-m", "kohya_ext.cli", "reference", str(d), "-o", str(tmp_path / f"r{k}.json"),
                               *NVXS, "--threads", "1", "--cache-dir", str(cache)]) for k, d in enumerate(folders)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    (cache_file,) = cache.glob("measurements-*.json")
    assert len(json.loads(cache_file.read_text())["entries"]) == 8


# -- leaderboards, run records, dataset configs ----------------------------------------------------

def _run_dir(tmp_path: Path, evaluations: list) -> Path:
    run = tmp_path / "run"
    (run / "consistency").mkdir(parents=True)
    (run / "consistency" / "leaderboard.json").write_text(
        json.dumps({"format": "kohya-ext-leaderboard", "version": 1, "run": {}, "evaluations": evaluations}))
    return run


def _row(eval_: int, score, **kw) -> dict:
    return {"eval": eval_, "status": "ok", "cum_step": 10 * eval_, "kohya_step": 10 * eval_, "score": score,
            "detection_rate": 1.0, "is_best": False, "memorized": False, **kw}


def test_leaderboard_with_wrong_types_is_one_line(tmp_path):
    run = _run_dir(tmp_path, [_row(1, "high")])
    assert_one_line_error(run_cli("rank", str(run), "-q"), 1, "leaderboard.json", "score")


def test_nan_score_row_is_never_best(tmp_path):
    run = _run_dir(tmp_path, [_row(1, float("nan"), is_best=True), _row(2, 0.5)])
    proc = run_cli("rank", str(run), "-q", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["evaluations"]
    nan_row = next(r for r in rows if r["eval"] == 1)
    assert nan_row["score"] is None and nan_row["is_best"] is False
    assert "*best" not in run_cli("rank", str(run), "-q").stdout.splitlines()[1]


def test_compare_reports_a_damaged_run_and_compares_the_rest(tmp_path):
    good = _run_dir(tmp_path / "a", [_row(1, 0.4, is_best=True), _row(2, 0.3)])
    bad = tmp_path / "b"
    (bad / "consistency").mkdir(parents=True)
    (bad / "consistency" / "leaderboard.json").write_text('{"format": "kohya-ext-leaderboard", "evaluations": [1')
    proc = run_cli("compare", str(good), str(bad), "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "0.4000" in proc.stdout and "error:" in proc.stdout and str(bad) in proc.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the permission case cannot be made as root")
def test_rank_on_a_read_only_run_is_one_line(tmp_path):
    run = _run_dir(tmp_path, [_row(1, 0.4, is_best=True)])
    run.chmod(0o555)
    try:
        assert_one_line_error(run_cli("rank", str(run), "-q"), 1, "--out")
        proc = run_cli("compare", str(run), "-q")
        assert proc.returncode == 0 and "not stored" in proc.stdout, proc.stdout + proc.stderr
    finally:
        run.chmod(0o755)


def test_rank_into_an_unwritable_out_is_one_line(tmp_path):
    run = _run_dir(tmp_path, [_row(1, 0.4, is_best=True)])
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    assert_one_line_error(run_cli("rank", str(run), "-q", "--out", str(blocker / "sub")), 1, "--out")


def test_damaged_run_record_is_left_out(tmp_path):
    from kohya_ext.posthoc.run_info import find_tensorboard_dir, load_run_record

    run = _run_dir(tmp_path, [])
    (run / "consistency" / "run.json").write_text('{"tensorboard_dir": ["not", "a", "path"]}')
    assert load_run_record(run) == {}
    assert find_tensorboard_dir(run) is None
    (run / "consistency" / "run.json").write_text('[1, 2')
    assert load_run_record(run) == {}


@pytest.mark.parametrize("toml,needle", [
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = 5\n', "image_dir"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\nis_reg = "no"\n', "is_reg"),
    ('general = 3\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\n', "[general]"),
    ('[[datasets]]\nsubsets = "x"\n', "subsets"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\nclass_tokens = ["a"]\n', "class_tokens"),
], ids=["image_dir-int", "is_reg-text", "general-int", "subsets-text", "class_tokens-list"])
def test_ill_typed_dataset_toml_is_one_line(toml, needle, tmp_path):
    cfg = tmp_path / "dataset.toml"
    cfg.write_text(toml)
    assert_one_line_error(run_cli("reference", str(cfg), "-o", str(tmp_path / "r.json"), *NVXS), 1, str(cfg), needle)


# -- nothing good replaced -----------------------------------------------------------------------

def test_a_faceless_reference_run_keeps_the_working_ref_json(good_ref, tmp_path):
    keep = tmp_path / "ref.json"
    keep.write_bytes(good_ref.read_bytes())
    faceless = tmp_path / "faceless"
    faceless.mkdir()
    Image.new("RGB", (256, 256), "white").save(faceless / "a.png")
    assert_one_line_error(run_cli("reference", str(faceless), "-o", str(keep), *NVXS), 1, "usable face")
    assert keep.read_bytes() == good_ref.read_bytes()


def test_non_utf8_file_names_survive_into_the_json_report(good_ref, tadne_dir, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    raw_name = os.fsencode(str(d)) + b"/bad\xff.png"
    with open(raw_name, "wb") as f:
        f.write((tadne_dir / "tile_20.png").read_bytes())
    report = tmp_path / "report.json"
    report.write_text("previous")
    proc = run_cli("score", "-r", str(good_ref), str(d), *NVXS, "--json", str(report), "--overlay", str(tmp_path / "ov"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    names = [m["name"] for m in json.loads(report.read_text(encoding="utf-8"))["images"]]
    assert len(names) == 1 and os.fsencode(names[0]) == raw_name
    assert len(list((tmp_path / "ov").glob("*.png"))) == 1


def test_a_kill_during_a_write_leaves_the_previous_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "ref.json"
    target.write_text("good previous content")
    script = textwrap.dedent(f"""
        import sys, time
        from kohya_ext.io_utils import atomic_write
        def slow(f):
            f.write("half")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, slow)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert target.read_text() == "good previous content"
    (leftover,) = [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
    atomic_write_text(target, "new")  # too fresh to be a leftover: another writer's could still be at work
    assert leftover.exists()
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(leftover, (old, old))
    atomic_write_text(target, "newer")
    assert not leftover.exists() and target.read_text() == "newer"


def test_write_failure_keeps_the_previous_file(tmp_path):
    from kohya_ext.io_utils import atomic_write

    target = tmp_path / "leaderboard.csv"
    target.write_text("previous")

    def fail(f):
        f.write("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["leaderboard.csv"]


def test_damaged_files_are_kohya_errors_and_value_errors():
    # training's resume path catches ValueError around the history; the CLI catches KohyaExtError
    assert issubclass(DamagedFileError, KohyaExtError) and issubclass(DamagedFileError, ValueError)


def test_compare_of_a_run_whose_ranking_cannot_be_stored_still_compares(tmp_path):
    """The read-only case made without permissions (which root ignores): rank's folder is a file."""
    run = _run_dir(tmp_path, [_row(1, 0.4, is_best=True), _row(2, 0.2)])
    (run / "kohya-ext-rank").write_text("a file where rank's folder would go")
    proc = run_cli("compare", str(run), "-q")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "0.4000" in proc.stdout and "ranking not stored" in proc.stdout
    assert_one_line_error(run_cli("rank", str(run), "-q"), 1, "--out")
