"""The `kohya-ext` command line as a user runs it: outputs, files, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from kohya_ext.cli import main

pytest.importorskip("animeface", reason="the CLI tests use the nvxs backend (animeface wheel, Linux x86-64)")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tadne_tiles):
    root = tmp_path_factory.mktemp("cli")
    ref, smp = root / "train" / "10_sks girl", root / "samples"
    ref.mkdir(parents=True)
    smp.mkdir()
    for i, t in enumerate(tadne_tiles[:6]):
        Image.fromarray(t).save(ref / f"{i}.png")
        Image.fromarray(t[:, ::-1]).save(smp / f"{i}.jpg", quality=90)
    return root


def test_reference_then_score_json_overlay_ko(dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KOHYA_EXT_CACHE", str(tmp_path / "cache"))
    ref_json = tmp_path / "ref.json"
    assert main(["reference", str(dirs / "train"), "-o", str(ref_json), "--backend", "nvxs", "-q"]) == 0
    out = capsys.readouterr().out
    assert "'sks girl', 6 images" in out and ref_json.exists()
    report_json, overlay = tmp_path / "rep.json", tmp_path / "ov"
    rc = main(["score", "-q", "--reference", str(ref_json), str(dirs / "samples"),
               "--json", str(report_json), "--overlay", str(overlay), "--lang", "ko"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "기준 비율 계산 완료 (이미지 6장" in text and "일관성 점수" in text
    rep = json.loads(report_json.read_text())
    assert rep["backend"]["backend"] == "nvxs" and 0 <= rep["score"] <= 1
    assert len(rep["images"]) == 6 and "interocular_ratio" in rep["ratios"]
    assert len(list(overlay.glob("*.png"))) == 6


def test_auto_backend_follows_the_reference_file(dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KOHYA_EXT_CACHE", str(tmp_path / "cache"))
    ref_json = tmp_path / "ref.json"
    assert main(["reference", "-q", str(dirs / "train"), "-o", str(ref_json), "--backend", "nvxs"]) == 0
    capsys.readouterr()
    assert main(["score", "-q", "--reference", str(ref_json), str(dirs / "samples")]) == 0
    assert "consistency score" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["score", "--backend", "nvxs", "--reference", "/no/such/dir", "x"], "/no/such/dir: no such file or folder"),
        (["reference", "--backend", "nvxs", "{empty}"], "no images found"),
    ],
)
def test_errors_are_one_line(args, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("kohya-ext: error: ") and message in err and err.count("\n") == 1


def test_unknown_backend_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "--backend", "magic", "--reference", "x", "y"])
    assert e.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err


def test_console_script_has_no_traceback(tmp_path):
    env = dict(os.environ, KOHYA_EXT_CACHE=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "kohya_ext", "score", "--backend", "nvxs", "-r", str(tmp_path / "nope"), "x"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "no such file or folder" in p.stderr
