"""Presets against a real sd-scripts checkout (skipped unless one is given).

  KOHYA_SD_SCRIPTS  an sd-scripts checkout (v0.10.x or v0.11.x)
  KOHYA_SD_PYTHON   a python with sd-scripts' requirements (its venv); kohya-ext is taken from
                    this working tree through PYTHONPATH, nothing is installed into it

Checks, run inside that python (this file is also the script it runs):
  * kohya_ext/sd_options/<version>.json (the version of the checkout) is still what
    scripts/gen_sd_options.py makes from it;
  * each preset resolves through the family script's own ``setup_parser()`` (plus kohya-ext's
    flags, as the launcher adds them) and ``train_util.read_config_from_file``: no key left
    over that the parser does not know, every value as written, and every value of the
    resulting Namespace fits the live parser's action (type, nargs, choices), because
    read_config_from_file checks none of that; kohya-ext's own ``from_args`` accepts it;
    sd-scripts' ``verify_training_args``/``prepare_dataset_args`` and the trainer's
    ``assert_extra_args`` accept it;
  * the network module imports, and networks.lora built on a meta-device SDXL U-Net with the
    B-LoRA preset's network_args creates LoRA modules only in output_blocks.0.1, the block
    sd-scripts' own diffusers->SAI map pairs with up_blocks.0.attentions.0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SD = os.environ.get("KOHYA_SD_SCRIPTS")
PY = os.environ.get("KOHYA_SD_PYTHON")


def _inside(checkout: str) -> dict:
    """Run in sd-scripts' python with cwd = checkout; returns a JSON-able result."""
    import argparse
    import copy
    import importlib
    import logging
    from unittest import mock

    logging.disable(logging.WARNING)
    sys.path[:0] = [checkout, str(REPO)]
    from library import train_util

    from kohya_ext.preset_loader import check_preset, describe_parser, preset_dir, preset_names, value_problem
    from kohya_ext.training.options import add_arguments, from_args

    out: dict = {"presets": {}}
    for name in preset_names():
        path = preset_dir() / f"{name}.toml"
        problems: list[str] = []
        static = check_preset(path)
        script = static.script
        module = importlib.import_module(script[:-3])
        parser = module.setup_parser()
        add_arguments(parser)  # what `python -m kohya_ext SCRIPT` does before parsing
        # read_config_from_file parses sys.argv again: set it as the launch would
        sys.argv = [script, "--config_file", str(path)]
        args = parser.parse_args()
        args = train_util.read_config_from_file(args, parser)
        live = describe_parser(parser)
        leftover = sorted(set(vars(args)) - set(live) - {"config_file"})
        problems += [f"{k}: kept by read_config_from_file but unknown to {script}'s parser" for k in leftover]
        for key, want in static.values.items():
            got = getattr(args, key, None)
            if got != want:
                problems.append(f"{key}: resolved to {got!r}, preset says {want!r}")
            if key in live:
                p = value_problem(key, got, live[key])
                if p:
                    problems.append("after read_config_from_file: " + p)
        try:
            from_args(args)
        except Exception as e:  # noqa: BLE001  (reported, not raised)
            problems.append(f"kohya-ext from_args: {e}")
        checked = copy.deepcopy(args)
        try:
            train_util.verify_training_args(checked)
            train_util.prepare_dataset_args(checked, True)
            trainer_cls = [v for k, v in vars(module).items() if k.endswith("NetworkTrainer") and isinstance(v, type)]
            trainer = trainer_cls[-1]() if trainer_cls else None
            if trainer is not None:
                trainer.assert_extra_args(checked, mock.MagicMock(), None)
        except Exception as e:  # noqa: BLE001
            problems.append(f"sd-scripts rejects it: {type(e).__name__}: {e}")
        try:
            net = importlib.import_module(args.network_module)
            if not hasattr(net, "create_network"):
                problems.append(f"network_module {args.network_module} has no create_network")
        except Exception as e:  # noqa: BLE001
            problems.append(f"network_module {args.network_module}: {e}")
        out["presets"][name] = {"script": script, "keys": len(static.values), "problems": problems + static.problems}

    # B-LoRA: which modules networks.lora really creates for the preset's network_args
    import torch
    from library.sdxl_model_util import make_unet_conversion_map
    from library.sdxl_original_unet import SdxlUNet2DConditionModel
    from networks import lora

    blora = check_preset(preset_dir() / "sdxl_blora_content.toml").values
    kwargs = dict(a.split("=", 1) for a in blora["network_args"])
    with torch.device("meta"):  # full SDXL shapes, no memory
        unet = SdxlUNet2DConditionModel()
        network = lora.create_network(1.0, blora["network_dim"], blora["network_alpha"], None, [], unet, **kwargs)
    names = [m.lora_name for m in network.unet_loras]
    sai = [sd for sd, hf in make_unet_conversion_map() if hf == "up_blocks.0.attentions.0."]
    out["blora"] = {
        "modules": len(names),
        "blocks": sorted({n[: len("lora_unet_output_blocks_0_1")] for n in names}),
        "attention_modules": sum(("_attn1_" in n or "_attn2_" in n) for n in names),
        "sai_of_up_blocks_0_attentions_0": sai,
    }
    gen = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_sd_options.py"), "--check"], cwd=checkout, capture_output=True, text=True
    )
    out["options_current"] = {"rc": gen.returncode, "output": (gen.stdout + gen.stderr).strip().splitlines()[-5:]}
    return out


if __name__ == "__main__":
    result = _inside(sys.argv[1])
    print("KOHYA_EXT_RESULT " + json.dumps(result))
    sys.exit(0)

import pytest  # noqa: E402  (not needed by the __main__ branch, which runs in sd-scripts' python)

pytestmark = [
    pytest.mark.skipif(not SD, reason="KOHYA_SD_SCRIPTS is unset: point it at an sd-scripts checkout to check presets against it"),
    pytest.mark.skipif(not PY, reason="KOHYA_SD_PYTHON is unset: point it at a python that has sd-scripts' requirements"),
]


@pytest.fixture(scope="module")
def real() -> dict:
    if not (Path(SD) / "train_network.py").exists():
        pytest.skip(f"KOHYA_SD_SCRIPTS={SD} has no train_network.py")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    p = subprocess.run([PY, str(Path(__file__).resolve()), SD], cwd=SD, env=env, capture_output=True, text=True, timeout=600)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("KOHYA_EXT_RESULT ")]
    assert p.returncode == 0 and line, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    result = json.loads(line[-1][len("KOHYA_EXT_RESULT "):])
    print(json.dumps(result, indent=1))
    return result


def test_option_table_is_current(real):
    assert real["options_current"]["rc"] == 0, "\n".join(real["options_current"]["output"])


def test_presets_resolve_through_sd_scripts(real):
    assert {"sd15_character", "sdxl_character", "sdxl_blora_content", "flux_character"} <= set(real["presets"])
    bad = {n: r["problems"] for n, r in real["presets"].items() if r["problems"]}
    assert not bad, bad


def test_blora_preset_trains_only_the_content_block(real):
    b = real["blora"]
    assert b["sai_of_up_blocks_0_attentions_0"] == ["output_blocks.0.1."]
    assert b["blocks"] == ["lora_unet_output_blocks_0_1"]
    # 10 transformer blocks x 8 attention projections, as B-LoRA targets, plus what networks.lora adds
    assert b["attention_modules"] == 80 and b["modules"] >= 80
