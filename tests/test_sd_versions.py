"""The sd-scripts surface per supported version (patches/sd_scripts.py SURFACES), on the
stand-in laid out as v0.10.x (everything in library/train_util.py) and as v0.11.x
(library/args.py, checkpoint_io.py, sampling.py; trainers no longer import train_util).

The real checkouts are exercised by tests/test_train_sd_scripts.py and test_gui_sd_scripts.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

_gspec = importlib.util.spec_from_file_location("gui_standin_test", Path(__file__).parent / "test_gui_network.py")
gui = importlib.util.module_from_spec(_gspec)
_gspec.loader.exec_module(gui)

_RESOLVE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import train_network
from kohya_ext.patches.sd_scripts import resolve_surface
s = resolve_surface(train_network.NetworkTrainer)
print(json.dumps({"version": s.version, "root": str(s.root), "functions": sorted(vars(s.functions)),
                  "imported": sorted(m for m in sys.modules if m.startswith("library."))}))
"""


def _resolve(sd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _RESOLVE, str(sd)], cwd=sd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("layout", h.LAYOUTS)
def test_each_layout_resolves_to_its_version_from_the_modules_it_defines(tmp_path, layout):
    sd = h.standin_checkout(tmp_path / "sd", layout=layout)
    proc = _resolve(sd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["version"] == f"{layout}.x" and Path(got["root"]) == sd.resolve()
    assert "get_step_ckpt_name" in got["functions"] and "load_prompts" in got["functions"]
    if layout == "v0.11":  # imported where v0.11 defines them, not through the re-exporting train_util
        assert {"library.args", "library.checkpoint_io", "library.sampling"} <= set(got["imported"])


_BROKEN = "import sys\n\nsys.path.insert(0, {standin!r})\nfrom standin_util import get_last_ckpt_name  # noqa\n"


def test_an_unknown_surface_is_one_line_naming_what_is_missing_on_both_paths(tmp_path):
    """A v0.11-looking checkout whose checkpoint_io lost two functions: the command-line path and
    the GUI path both exit 2 before training with one line naming the missing functions."""
    sd = h.standin_checkout(tmp_path / "sd", {"library/checkpoint_io.py": _BROKEN}, layout="v0.11")
    h.make_dataset(tmp_path, 4)
    proc = h.run_trainer(tmp_path, h.base_args(tmp_path) + ["--consistency", "--consistency_backend", "nvxs"], sd_scripts=sd)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("kohya-ext: error: sd-scripts at ") and "looks like v0.11.x" in line
    assert "library.checkpoint_io.get_step_ckpt_name" in line and "library.checkpoint_io.save_state_on_train_end" in line
    assert "supports sd-scripts v0.10.x and v0.11.x" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "tiny.safetensors").exists()

    cfg = gui._gui_toml(tmp_path, 4, 2, "networks.lora", [])
    proc = gui._run_gui(tmp_path, sd, cfg, "--network_module kohya_ext.gui_network --network_args consistency_backend=nvxs")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "library.checkpoint_io.get_step_ckpt_name" in proc.stderr and "looks like v0.11.x" in proc.stderr
    assert not list((tmp_path / "out").glob("*.safetensors"))


def _shape(trace: list[dict]) -> list[tuple]:
    return [(t["hook"], t["rank"], t["step"], t["epoch"], tuple(t["args"])) for t in trace]


def _fake(root: Path, script: str) -> dict:
    return {"FAKE_SCORES": script, "FAKE_COUNTER": str(root / "counter")}


def test_both_layouts_train_stop_and_keep_the_best_with_the_same_hook_trace(tmp_path):
    """Command-line path, early stop with patience 1: same leaderboard, best copy and hook trace
    on the v0.10 and the v0.11 layout."""
    results = {}
    for layout in h.LAYOUTS:
        root = tmp_path / layout
        root.mkdir()
        h.make_dataset(root, 4)
        args = h.base_args(root, steps=12, save_every=2) + [
            "--consistency", "--consistency_scorer", "fake_scorers:scripted", "--consistency_patience", "1"]
        proc = h.run_trainer(root, args, env=_fake(root, "0.5,0.8,0.6,0.9"), layout=layout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        board = json.loads((root / "out" / "consistency" / "leaderboard.json").read_text())["evaluations"]
        from kohya_ext.training.best import read_metadata

        results[layout] = ([(r["kohya_step"], r["score"], r["is_best"], r["stop"]) for r in board],
                           read_metadata(root / "out" / "tiny-best.safetensors")["kohya_ext_consistency_step"],
                           read_metadata(root / "out" / "tiny.safetensors")["ss_steps"],
                           _shape(h.read_trace(root / "trace.jsonl")))
    v010, v011 = results["v0.10"], results["v0.11"]
    assert v010[0] == [(2, 0.5, False, False), (4, 0.8, True, False), (6, 0.6, False, True)]
    assert v010[1] == "4" and v010[2] == "6"
    assert v011[:3] == v010[:3]
    assert v011[3] == v010[3]


@pytest.mark.parametrize("layout", h.LAYOUTS)
def test_gui_path_on_each_layout(tmp_path, layout):
    sd = h.standin_checkout(tmp_path / "sd", layout=layout)
    h.make_dataset(tmp_path, 4)
    cfg = gui._gui_toml(tmp_path, 4, 2, "networks.lora", [])
    proc = gui._run_gui(tmp_path, sd, cfg, "--network_module kohya_ext.gui_network --network_args "
                        "consistency_scorer=fake_scorers:scripted", env=_fake(tmp_path, "0.5,0.7"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    board = json.loads((tmp_path / "out" / "consistency" / "leaderboard.json").read_text())["evaluations"]
    assert [(r["kohya_step"], r["score"]) for r in board] == [(2, 0.5), (4, 0.7)]
    assert (tmp_path / "out" / "tiny-best.safetensors").is_file()
