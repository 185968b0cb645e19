"""The training command as the kohya_ss GUI (v26, lora_gui.train_model) builds it, written from
its behaviour for the tests (no GUI code): nothing here is kohya-ext.

- the TOML: one flat table of the LoRA tab's settings, values "", False and None dropped,
  ``max_data_loader_n_workers`` always set, keys sorted, written with ``toml.dump``;
  ``network_args`` is the GUI's network-args text with double quotes removed, split on
  whitespace; ``sample_prompts`` always names ``output_dir/sample/prompt.txt``, written from the
  sample-prompts box even when that box is empty;
- the command: ``accelerate launch`` with the GUI's accelerate options, the family script of
  the GUI's own sd-scripts, ``--config_file`` the TOML, then the "Additional parameters" text
  with double quotes removed, split on whitespace, each item ``shlex.quote``d; run without a
  shell, with ``PYTHONPATH`` holding the GUI folder and its sd-scripts.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any


def additional_items(text: str) -> list[str]:
    """What the GUI appends for its "Additional parameters" text."""
    return [shlex.quote(a) for a in text.replace('"', "").split()]


def network_args_items(text: str) -> list[str]:
    return str(text).replace('"', "").split()


def write_gui_toml(output_dir: Path, settings: dict[str, Any], network_args_text: str = "", sample_prompts: str = "",
                   max_data_loader_n_workers: int = 0, stamp: str = "20260101-000000") -> Path:
    """``output_dir/config_lora-<stamp>.toml`` as the GUI writes it."""
    import toml

    output_dir = Path(output_dir)
    prompt_file = output_dir / "sample" / "prompt.txt"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    prompt_file.write_text(sample_prompts, encoding="utf-8")
    data = {**settings, "output_dir": str(output_dir), "network_args": network_args_items(network_args_text),
            "sample_prompts": str(prompt_file)}
    data = {k: v for k, v in data.items() if v not in ["", False, None]}
    data["max_data_loader_n_workers"] = int(max_data_loader_n_workers)
    data = dict(sorted(data.items()))
    path = output_dir / f"config_lora-{stamp}.toml"
    with open(path, "w", encoding="utf-8") as f:
        toml.dump(data, f)
    return path


def gui_command(accelerate: str, sd_scripts: Path, script: str, config: Path, additional: str,
                num_cpu_threads_per_process: int = 2, mixed_precision: str = "no") -> list[str]:
    """The argv the GUI runs (accelerate launch options as the GUI's defaults set them)."""
    return [accelerate, "launch", "--dynamo_backend", "no", "--dynamo_mode", "default", "--mixed_precision", mixed_precision,
            "--num_processes", "1", "--num_machines", "1", "--num_cpu_threads_per_process", str(num_cpu_threads_per_process),
            str(Path(sd_scripts) / script), "--config_file", str(config), *additional_items(additional)]


def gui_env(gui_dir: Path, sd_scripts: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(gui_dir), str(sd_scripts), env.get("PYTHONPATH", "")])
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    env.pop("KOHYA_SD_SCRIPTS", None)
    return env
