"""Presets: each shipped TOML parses, every key is an sd-scripts or kohya-ext option, values fit.

Uses the generated option tables (kohya_ext/sd_options/<version>.json); tests/test_presets_real.py checks
that table against a real sd-scripts checkout and resolves the presets through its parser.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kohya_ext.errors import KohyaExtError
from kohya_ext.preset_loader import (
    check_preset,
    kohya_ext_options,
    load_toml,
    preset_names,
    sd_options,
    validate_preset,
    value_problem,
)

EXPECTED = {"sd15_character", "sdxl_character", "sdxl_blora_content", "flux_character"}


def test_shipped_presets_are_the_four_families():
    assert EXPECTED <= set(preset_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_is_valid(name):
    r = validate_preset(name)
    assert r.problems == []
    assert r.values["consistency"] is True
    # early stopping configured, evaluated at saves, and able to fire within the run
    assert r.values["consistency_patience"] >= 1 and r.values["save_every_n_steps"] >= 1
    evals = r.values["max_train_steps"] // r.values["save_every_n_steps"]
    assert r.values.get("consistency_warmup", 0) + r.values["consistency_patience"] <= evals
    # dataset and output paths are placeholders the README explains
    assert {"train_data_dir", "output_dir", "output_name", "pretrained_model_name_or_path"} <= set(r.placeholders)


def test_option_table_covers_the_three_scripts():
    for script, must in {
        "train_network.py": {"network_dim", "learning_rate", "save_every_n_steps"},
        "sdxl_train_network.py": {"cache_text_encoder_outputs"},
        "flux_train_network.py": {"t5xxl", "blocks_to_swap", "timestep_sampling"},
    }.items():
        assert must <= set(sd_options(script))
    assert "t5xxl" not in sd_options("train_network.py")
    # kohya-ext's options come from its real parser group, not from the sd-scripts table
    assert {"consistency", "consistency_patience", "consistency_backend"} <= set(kohya_ext_options())
    assert "consistency" not in sd_options("train_network.py")


def test_blora_preset_trains_only_output_blocks_0():
    args = dict(a.split("=", 1) for a in load_toml(Path(validate_preset("sdxl_blora_content").path))["network"]["network_args"])
    up = [float(x) for x in args["up_lr_weight"].split(",")]
    assert len(up) == 9 and up[0] > 0 and not any(up[1:])
    assert not any(float(x) for x in args["down_lr_weight"].split(",")) and len(args["down_lr_weight"].split(",")) == 9
    assert not any(float(x) for x in args["mid_lr_weight"].split(",")) and len(args["mid_lr_weight"].split(",")) == 3


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


BASE = 'network_module = "networks.lora"\nmax_train_steps = 1000\n'


@pytest.mark.parametrize(
    "body, needle",
    [
        ("netwrok_dim = 16\n", "netwrok_dim: not an option of train_network.py"),
        ("netwrok_dim = 16\n", "did you mean network_dim"),
        ('network_dim = "16"\n', "network_dim: got '16', expected an integer"),
        ("network_dim = true\n", "expected an integer"),
        ("learning_rate = true\n", "expected a number"),
        ('gradient_checkpointing = "yes"\n', "expected true or false"),
        ('mixed_precision = "fp8"\n', "expected one of 'no', 'fp16', 'bf16'"),
        ("text_encoder_lr = 5e-5\n", "text_encoder_lr: got 5e-05, expected a list of number values"),
        ('network_args = ["conv_dim"]\n', "is not key=value"),
        ("learning_rate = 0.5\n", "outside (0, 1e-2]"),
        ("network_dim = 8\nnetwork_alpha = 16\n", "network_alpha: 16 should be in (0, network_dim=8]"),
        ("t5xxl = \"x\"\n", "t5xxl: not an option of train_network.py"),
        ("consistency_patience = 3\n", "given but --consistency is off"),
        ('consistency = true\nsave_every_n_steps = 100\nconsistency_backend = "dlib"\n', "expected one of 'auto', 'hrnet', 'nvxs'"),
        ("consistency = true\n", "set save_every_n_steps"),
        ("consistency = true\nsave_every_n_steps = 500\nconsistency_patience = 3\n", "early stopping can never fire"),
        ("[a]\nseed = 1\n[b]\nseed = 2\n", "seed: set twice ([a] and [b])"),
        ("[a.b]\nseed = 1\n", "tables nest one level only"),
    ],
)
def test_bad_values_are_named(tmp_path, body, needle):
    p = _write(tmp_path, "sd15_bad.toml", BASE + body)
    r = check_preset(p)
    assert not r.ok
    assert any(needle in msg for msg in r.problems), r.problems
    with pytest.raises(KohyaExtError, match="sd15_bad.toml"):
        validate_preset(p)


def test_good_minimal_preset_passes(tmp_path):
    p = _write(tmp_path, "sdxl_ok.toml", BASE + "[x]\nnetwork_dim = 8\ntext_encoder_lr = [1e-5, 2e-5]\nlr_warmup_steps = 0.1\n")
    r = validate_preset(p)
    assert r.script == "sdxl_train_network.py" and r.values["network_dim"] == 8


def test_script_override_and_unknown_prefix(tmp_path):
    p = _write(tmp_path, "mine.toml", BASE + "blocks_to_swap = 8\n")
    with pytest.raises(KohyaExtError, match="sd15_, sdxl_, flux_"):
        check_preset(p)
    assert validate_preset(p, script="flux_train_network.py").ok
    assert not check_preset(p, script="sdxl_train_network.py").ok


def test_bad_toml_is_one_line(tmp_path):
    p = _write(tmp_path, "sd15_broken.toml", "seed = = 1\n")
    with pytest.raises(KohyaExtError, match=r"sd15_broken.toml: not valid TOML") as e:
        check_preset(p)
    assert "\n" not in str(e.value)


def test_unknown_preset_lists_names():
    with pytest.raises(KohyaExtError, match="sd15_character"):
        check_preset("nope")


def test_value_problem_nargs_and_choices():
    info = {"kind": "store", "type": "str", "nargs": None, "choices": [None, "ckpt", "safetensors"], "flags": ["--x"]}
    assert value_problem("x", "safetensors", info) is None
    assert "one of 'ckpt', 'safetensors'" in value_problem("x", "bin", info)
    lst = {"kind": "store", "type": "float", "nargs": "+", "choices": None, "flags": ["--y"]}
    assert value_problem("y", [1, 2.5], lst) is None
    assert "at least one" in value_problem("y", [], lst)
    assert "expected a number" in value_problem("y", [1, "a"], lst)
