"""``kohya-ext check-config``: unknown or misspelled keys of a --config_file, with the closest
option name; against the installed sd-scripts' parser when found, the shipped tables otherwise."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)


def _check(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "KOHYA_SD_SCRIPTS"}
    return subprocess.run([sys.executable, "-m", "kohya_ext", "check-config", *args], cwd=cwd, capture_output=True, text=True,
                          env={**e, **(env or {})}, timeout=120)


def test_misspelled_keys_get_the_closest_name_from_the_shipped_tables(tmp_path):
    cfg = tmp_path / "my.toml"
    cfg.write_text('[network]\nnetwrok_dim = 16\nnetwork_alpha = 8\n[training]\nconsistency_patiense = 3\nmax_train_steps = "many"\n')
    r = _check(str(cfg), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert any("netwrok_dim: not an option of train_network.py" in ln and "did you mean network_dim" in ln for ln in lines)
    assert any("consistency_patiense" in ln and "did you mean consistency_patience" in ln for ln in lines)
    assert any("max_train_steps: got 'many', expected an integer" in ln for ln in lines)
    assert lines[-1].endswith("4 keys checked for train_network.py against the option tables of every supported sd-scripts version: 3 problem(s)")
    from kohya_ext.preset_loader import preset_dir

    r = _check(str(preset_dir() / "sdxl_character.toml"), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK") and "sdxl_train_network.py" in r.stdout, r.stdout + r.stderr


def test_the_installed_sd_scripts_parser_decides_when_found(tmp_path):
    sd = h.standin_checkout(tmp_path / "sd", layout="v0.11")
    cfg = tmp_path / "my.toml"
    cfg.write_text('output_dir = "out"\nstandin_faces = "faces"\nconsistency = true\nmax_train_steps = 8\nsave_every_n_steps = 2\n')  # standin_faces: only the stand-in's parser has it
    r = _check(str(cfg), "--sd-scripts", str(sd), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"against the installed sd-scripts v0.11.x at {sd}: OK" in r.stdout
    r = _check(str(cfg), cwd=tmp_path, env={"KOHYA_SD_SCRIPTS": str(sd)})  # found through the variable too
    assert r.returncode == 0 and "installed sd-scripts v0.11.x" in r.stdout
    r = _check(str(cfg), cwd=tmp_path)  # none found: the shipped tables, where the key is unknown
    assert r.returncode == 1 and "standin_faces: not an option of train_network.py" in r.stdout
    r = _check(str(cfg), "--sd-scripts", str(tmp_path), cwd=tmp_path)  # not a checkout: said, then the tables
    assert r.returncode == 1 and f"{tmp_path} has no train_network.py; checked against the shipped option tables instead" in r.stdout
