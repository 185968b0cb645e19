"""The kohya_ss GUI path driven by the command the GUI really builds (tests/gui_command.py):
its TOML (toml.dump, sorted keys, empty values dropped, sample_prompts always set), the
"Additional parameters" text split on spaces, ``accelerate launch``; on the stand-in loop.
The same command on real sd-scripts checkouts: tests/test_gui_sd_scripts.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kohya_ext.errors import KohyaExtError
from kohya_ext.patches import gui_network as gn

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import gui_command as gc  # noqa: E402

_spec = importlib.util.spec_from_file_location("standin_harness", TESTS / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

pytest.importorskip("toml", reason="the GUI writes its TOML with the toml package (pip install toml)")
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))

_FAKE_LYCO = '''
import json, os
from networks.lora import StandinLoRANetwork

def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    with open(os.environ["FAKELYCO_RECORD"], "w") as f:
        json.dump(kwargs, f)
    return StandinLoRANetwork(dim=int(network_dim or 4))
'''


def _settings(root: Path, **extra) -> dict:
    """LoRA-tab settings as the GUI puts them in its TOML (unset ones are "", False or None)."""
    return {"train_data_dir": str(root / "train"), "caption_extension": ".txt", "output_name": "tiny", "network_dim": 4,
            "network_alpha": 1, "network_module": "networks.lora", "max_train_steps": 4, "save_every_n_steps": 2,
            "resolution": "64", "save_precision": "float", "seed": 0, "save_model_as": "safetensors", "logging_dir": "",
            "sample_every_n_steps": 0, "sample_sampler": "euler_a", "cache_latents": False, "network_weights": "",
            "network_dropout": 0, "log_with": "", "learning_rate": 0.0001, **extra}


def _run(root: Path, additional: str, settings: dict, network_args_text: str = "", env: dict | None = None):
    if ACCELERATE is None:
        pytest.skip("accelerate's launcher is not installed next to this python (pip install accelerate)")
    sd = h.standin_checkout(root / "sd-scripts", {"fakelyco/__init__.py": "", "fakelyco/kohya.py": _FAKE_LYCO})
    cfg = gc.write_gui_toml(root / "out", settings, network_args_text)
    e = gc.gui_env(root, sd)
    e.update({"KOHYA_EXT_TRACE": str(root / "trace.jsonl"), "PYTHONUNBUFFERED": "1", "FAKELYCO_RECORD": str(root / "inner.json"),
              **(env or {})})
    cmd = gc.gui_command(ACCELERATE, sd, "train_network.py", cfg, additional)
    return subprocess.run(cmd, cwd=root, env=e, capture_output=True, text=True, timeout=300)


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_gui_toml_is_what_the_gui_writes(tmp_path):
    cfg = gc.write_gui_toml(tmp_path / "out", _settings(tmp_path), 'preset=full conv_dim="4" algo=locon')
    text = cfg.read_text()
    keys = [ln.split(" = ")[0] for ln in text.splitlines() if " = " in ln]
    assert keys == sorted(keys) and "logging_dir" not in keys and "cache_latents" not in keys and "network_dropout" not in keys
    assert 'network_args = [ "preset=full", "conv_dim=4", "algo=locon",]' in text  # toml.dump's list style
    assert (tmp_path / "out" / "sample" / "prompt.txt").read_text() == ""  # always written, here empty
    assert gc.additional_items('--network_args "a=b c=d" x=C:\\p') == ["--network_args", "a=b", "c=d", "'x=C:\\p'"]


def test_paths_with_spaces_user_network_args_merged_prompts_from_the_training_captions(tmp_path):
    """The reference lives under a folder with a space, reached through a consistency_config file
    (itself under a space, written with %20); the user's own --network_args in Additional
    parameters is merged with the GUI's LyCORIS settings, not dropped; with no prompt file the
    prompts are the training captions, not the reference folder's name."""
    h.make_dataset(tmp_path, 4, caption="mio, 1girl, portrait")
    ref = tmp_path / "My Characters" / "ref"
    ref.mkdir(parents=True)
    options = tmp_path / "kohya ext" / "mio.toml"
    options.parent.mkdir()
    options.write_text(f'consistency_reference = "{ref.as_posix()}"\nconsistency_scorer = "fake_scorers:scripted"\n'
                       f'consistency_patience = 5\n')
    cfg_arg = options.as_posix().replace(" ", "%20")
    additional = (f'--network_args "conv_dim=8 conv_alpha=2" --network_module kohya_ext.gui_network '
                  f'--network_args consistency_config={cfg_arg} consistency_num_prompts=2')
    proc = _run(tmp_path, additional, _settings(tmp_path, network_module="fakelyco.kohya"), "preset=full conv_dim=4 algo=locon",
                env={"FAKE_SCORES": "0.5,0.7", "FAKE_COUNTER": str(tmp_path / "counter")})
    _ok(proc)
    assert json.loads((tmp_path / "inner.json").read_text()) == {
        "preset": "full", "conv_dim": "8", "algo": "locon", "conv_alpha": "2", "dropout": None}
    assert "earlier --network_args kept for fakelyco.kohya: conv_dim=8 conv_alpha=2" in proc.stdout
    run = json.loads((tmp_path / "out" / "consistency" / "leaderboard.json").read_text())
    assert [(r["kohya_step"], r["score"]) for r in run["evaluations"]] == [(2, 0.5), (4, 0.7)]
    assert run["run"]["options"]["consistency_reference"] == ref.as_posix()
    assert run["run"]["options"]["consistency_patience"] == 5
    prompts = json.loads((tmp_path / "out" / "consistency" / "prompts.json").read_text())
    assert [p["prompt"] for p in prompts] == ["mio, 1girl, portrait"] * 2


def test_a_path_cut_at_a_space_is_one_kohya_ext_line_before_anything_is_written(tmp_path):
    h.make_dataset(tmp_path, 4)
    proc = _run(tmp_path, "--network_module kohya_ext.gui_network --network_args consistency_reference=D:/My Characters/mio",
                _settings(tmp_path))
    assert proc.returncode != 0
    err = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("kohya-ext: error:")]
    assert len(err) == 1 and "'Characters/mio' is not key=value" in err[0], proc.stderr[-3000:]
    assert "%20" in err[0] and "consistency_config=FILE.toml" in err[0]
    assert "not enough values to unpack" not in proc.stderr
    assert not list((tmp_path / "out").glob("*.safetensors")) and not (tmp_path / "out" / "consistency").exists()


# -- in-process units -------------------------------------------------------------------------

def _ns(tmp_path: Path, network_args: list[str] | None, toml_text: str = "", **extra) -> argparse.Namespace:
    (tmp_path / "cfg.toml").write_text(toml_text)
    return argparse.Namespace(config_file=str(tmp_path / "cfg"), network_args=network_args, network_dropout=None, **extra)


def test_every_network_args_occurrence_is_read_back_from_the_command_line(tmp_path):
    argv = ["--config_file", "x.toml", "--network_args", "conv_dim=4", "conv_alpha=1", "--network_module", "kohya_ext.gui_network",
            "--network_args", "consistency_patience=3"]
    args = _ns(tmp_path, ["consistency_patience=3"])
    assert gn.command_line_network_args(args, argv) == ["conv_dim=4", "conv_alpha=1", "consistency_patience=3"]
    # argv that is not where args came from (its last occurrence differs): args alone
    assert gn.command_line_network_args(_ns(tmp_path, ["x=1"]), argv) == ["x=1"]
    assert gn.command_line_network_args(args, ["--network_args=a=1", "--network_args", "consistency_patience=3"]) == [
        "a=1", "consistency_patience=3"]


def test_options_file_and_percent_escapes(tmp_path):
    f = tmp_path / "my opts.toml"
    f.write_text('consistency_reference = "D:/My Characters/mio"\nconsistency_patience = 4\n')
    p = gn.plan(_ns(tmp_path, [f"consistency_config={f.as_posix().replace(' ', '%20')}", "consistency_patience=6"]))
    assert p.options.consistency_reference == "D:/My Characters/mio" and p.options.consistency_patience == "6"
    assert gn.plan(_ns(tmp_path, ["consistency_reference=D:/My%20Characters/mio"])).options.consistency_reference == "D:/My Characters/mio"
    assert gn.plan(_ns(tmp_path, ["algo=a%20b"])).kwargs["algo"] == "a%20b"  # other modules' values are passed as typed
    f.write_text('network_dim = 8\n')
    with pytest.raises(KohyaExtError, match="only consistency_\\* keys"):
        gn.plan(_ns(tmp_path, [f"consistency_config={f}"]))
    with pytest.raises(KohyaExtError, match="cannot read it"):
        gn.plan(_ns(tmp_path, [f"consistency_config={tmp_path / 'nope.toml'}"]))
