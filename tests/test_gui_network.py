"""The kohya_ss GUI path (``--network_module kohya_ext.gui_network``) through the stand-in loop.

Launched as the GUI launches (kohya_gui/lora_gui.py, common_gui.run_cmd_advanced_training):
the stock script itself, ``--config_file`` a flat TOML holding ``network_module`` and
``network_args``, then the "Additional parameters" text with double quotes removed, split on
whitespace and each item ``shlex.quote``d, run without a shell; PYTHONPATH holds sd-scripts.
The stand-in handles network modules as sd-scripts does (import by dotted name, network_args
as kwargs with the dropout workaround, ``prepare_network``, ``ss_network_args`` metadata).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kohya_ext.errors import KohyaExtError
from kohya_ext.patches import gui_network as gn

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

_FAKE_LYCO = '''
import json, os
from networks.lora import StandinLoRANetwork

class FakeLycoNetwork(StandinLoRANetwork):
    def prepare_network(self, args):
        with open(os.environ["FAKELYCO_RECORD"] + ".prepared", "w") as f:
            json.dump(args.network_module, f)

def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    with open(os.environ["FAKELYCO_RECORD"], "w") as f:
        json.dump(kwargs, f)
    return FakeLycoNetwork(dim=int(network_dim or 4))
'''


def _standin_with_fakelyco(root: Path) -> Path:
    """The stand-in checkout (harness shims) plus a LyCORIS-like ``fakelyco.kohya`` network module."""
    return h.standin_checkout(root / "sd-scripts", {"fakelyco/__init__.py": "", "fakelyco/kohya.py": _FAKE_LYCO})


def gui_split(additional: str) -> list[str]:
    """What run_cmd_advanced_training makes of the "Additional parameters" text."""
    return [shlex.quote(a) for a in additional.replace('"', "").split()]


def _gui_toml(root: Path, steps: int, save_every: int, network_module: str, network_args: list[str], extra: dict | None = None) -> Path:
    """A flat, sorted TOML as lora_gui.py writes it (toml.dump of config_toml_data)."""
    data = {"train_data_dir": str(root / "train"), "caption_extension": ".txt", "output_dir": str(root / "out"),
            "output_name": "tiny", "network_module": network_module, "network_args": network_args, "network_dim": 4,
            "max_train_steps": steps, "save_every_n_steps": save_every, "resolution": "64", "save_precision": "float",
            "seed": 0, "save_model_as": "safetensors", **(extra or {})}
    lines = []
    for k in sorted(data):
        v = data[k]
        lines.append(f"{k} = {json.dumps(v)}")
    path = root / "out" / "config_lora-20260101-000000.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_gui(root: Path, sd: Path, cfg: Path, additional: str, env: dict | None = None, nproc: int = 1, timeout: float = 180):
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(sd), os.environ.get("PYTHONPATH", "")]),
         "KOHYA_EXT_TRACE": str(root / "trace.jsonl"), "PYTHONUNBUFFERED": "1",
         "FAKELYCO_RECORD": str(root / "inner_kwargs.json"), **(env or {})}
    e.pop("KOHYA_SD_SCRIPTS", None)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                                   "--master_port", str(h.free_port())]
    cmd = [*launcher, str(sd / "train_network.py"), "--config_file", str(cfg), *gui_split(additional)]
    return subprocess.run(cmd, cwd=root, env=e, capture_output=True, text=True, timeout=timeout)


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _board(root: Path) -> list[dict]:
    return json.loads((root / "out" / "consistency" / "leaderboard.json").read_text())["evaluations"]


def _steps(trace: list[dict]) -> list[int]:
    return [t["step"] for t in trace if t["hook"] == "sample_images" and t["epoch"] is None and t["step"] > 0]


def _fake(root: Path, script: str) -> dict:
    return {"FAKE_SCORES": script, "FAKE_COUNTER": str(root / "counter")}


LYCO_ARGS = ["preset=full", "conv_dim=4", "conv_alpha=1", "algo=locon", "dropout=0.1"]


def test_gui_lycoris_settings_survive_and_saves_are_scored(tmp_path):
    """The GUI chose fakelyco.kohya with its own network_args in the TOML; the user appended our
    module and options. The inner module gets exactly the GUI's kwargs, every save is scored, the
    best copy is kept, and the files' metadata names the inner module, as a stock run would."""
    sd = _standin_with_fakelyco(tmp_path)
    h.make_dataset(tmp_path, 4)
    cfg = _gui_toml(tmp_path, 4, 2, "fakelyco.kohya", LYCO_ARGS,
                    {"logging_dir": str(tmp_path / "logs"), "log_with": "tensorboard"})
    proc = _run_gui(tmp_path, sd, cfg, '--network_module kohya_ext.gui_network --network_args '
                    '"consistency_scorer=fake_scorers:scripted" consistency_memorization_max=0.9', env=_fake(tmp_path, "0.5,0.7"))
    _ok(proc)
    inner = json.loads((tmp_path / "inner_kwargs.json").read_text())
    assert inner == {"preset": "full", "conv_dim": "4", "conv_alpha": "1", "algo": "locon", "dropout": "0.1"}
    # the loop called the inner network's prepare_network with its args (our module name in them)
    assert json.loads((tmp_path / "inner_kwargs.json.prepared").read_text()) == "kohya_ext.gui_network"
    board = _board(tmp_path)
    assert [(r["kohya_step"], r["checkpoint"], r["score"]) for r in board] == [
        (2, "tiny-step00000002.safetensors", 0.5), (4, "tiny-step00000004.safetensors", 0.7)]
    assert board[1]["is_best"]
    tb = h.read_tensorboard(tmp_path / "logs")
    assert sorted(s for s, _ in tb["consistency/score"]) == [2, 4]
    from kohya_ext.training.best import read_metadata

    out = tmp_path / "out"
    for name in ("tiny-step00000002.safetensors", "tiny.safetensors", "tiny-best.safetensors"):
        meta = read_metadata(out / name)
        assert meta["ss_network_module"] == "fakelyco.kohya", name
        assert json.loads(meta["ss_network_args"]) == inner, name
    assert read_metadata(out / "tiny-best.safetensors")["kohya_ext_consistency_step"] == "4"
    assert "network_args from" in proc.stdout and "best consistency 0.7000 at step 4" in proc.stdout
    assert [t for t in h.read_trace(tmp_path / "trace.jsonl") if t["hook"] == "train_end"][0]["step"] == 4


def test_gui_early_stop_exact_step_exit_zero(tmp_path):
    """Patience 2 stops at the 4th evaluation (step 8, mid-epoch): no optimizer step after it, the
    process exits 0, the final file holds step 8 and the best copy (step 4) survives rotation."""
    sd = _standin_with_fakelyco(tmp_path)
    h.make_dataset(tmp_path, 6)
    cfg = _gui_toml(tmp_path, 30, 2, "networks.lora", [], {"save_last_n_steps": 2})
    proc = _run_gui(tmp_path, sd, cfg, "--network_module kohya_ext.gui_network --network_args consistency_scorer=fake_scorers:scripted "
                    "consistency_patience=2", env=_fake(tmp_path, "0.5,0.8,0.6,0.55,0.9"))
    _ok(proc)
    assert _steps(h.read_trace(tmp_path / "trace.jsonl")) == list(range(1, 9))
    board = _board(tmp_path)
    assert [r["kohya_step"] for r in board] == [2, 4, 6, 8] and board[-1]["stop_reason"] == "patience_exhausted"
    from kohya_ext.training.best import read_metadata

    out = tmp_path / "out"
    assert not (out / "tiny-step00000004.safetensors").exists()
    assert read_metadata(out / "tiny-best.safetensors")["ss_steps"] == "4"
    final = read_metadata(out / "tiny.safetensors")
    assert final["ss_steps"] == "8" and "patience" in final["kohya_ext_early_stop"] and final["ss_network_module"] == "networks.lora"
    assert "early stop at step 8" in proc.stdout and "stopped early" in proc.stdout


def test_gui_two_processes_stop_at_the_same_step(tmp_path, accelerate_version):
    """Hooks are installed on every rank (create_network runs on each), so the broadcast stop
    decision reaches both ranks at the same step, as on the command-line path; with the venv's
    accelerate and with sd-scripts' pinned 1.6.0 (conftest.accelerate_version).

    ``ddp_timeout`` makes the stand-in give accelerate a gloo backend, as sd-scripts does on a
    multi-GPU machine: on CPU only without a backend, accelerate >= 1.13 makes no process group
    and each process trains alone (kohya_ext.training.distributed), so there would be no two-rank run."""
    sd = _standin_with_fakelyco(tmp_path)
    h.make_dataset(tmp_path, 12)
    cfg = _gui_toml(tmp_path, 16, 2, "networks.lora", [], {"ddp_timeout": 10})
    proc = _run_gui(tmp_path, sd, cfg, "--network_module kohya_ext.gui_network --network_args consistency_scorer=fake_scorers:scripted "
                    "consistency_patience=2", env=_fake(tmp_path, "0.5,0.4,0.3"), nproc=2)
    _ok(proc)
    ranks = [ln for ln in proc.stdout.splitlines() if ln.startswith("kohya-ext: 2 ranks (")]
    assert len(ranks) == 1 and f"(accelerate {accelerate_version}, " in ranks[0] and "broadcast" in ranks[0], proc.stdout[-3000:]
    t0, t1 = h.read_trace(tmp_path / "trace.jsonl"), h.read_trace(tmp_path / "trace.jsonl.rank1")
    assert _steps(t0) == _steps(t1) == list(range(1, 7))
    assert [t["step"] for t in t0 if t["hook"] == "train_end"] == [t["step"] for t in t1 if t["hook"] == "train_end"] == [6]
    assert [r["kohya_step"] for r in _board(tmp_path)] == [2, 4, 6]


def test_gui_consistency_false_only_delegates_and_bad_option_is_one_line(tmp_path):
    sd = _standin_with_fakelyco(tmp_path)
    h.make_dataset(tmp_path, 4)
    cfg = _gui_toml(tmp_path, 2, 2, "fakelyco.kohya", ["algo=lokr"])
    proc = _run_gui(tmp_path, sd, cfg, "--network_module kohya_ext.gui_network --network_args consistency=false")
    _ok(proc)
    assert not (tmp_path / "out" / "consistency").exists() and (tmp_path / "out" / "tiny.safetensors").is_file()
    assert json.loads((tmp_path / "inner_kwargs.json").read_text()) == {"algo": "lokr", "dropout": None}
    proc = _run_gui(tmp_path, sd, cfg, "--network_module kohya_ext.gui_network --network_args consistency_patiense=3")
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("kohya-ext: error:")]
    assert proc.returncode == 2 and len(err) == 1 and "consistency_patiense" in err[0] and "consistency_patience" in err[0]


# -- in-process units -------------------------------------------------------------------------

def _ns(tmp_path: Path, toml_text: str, network_args: list[str] | None, **extra) -> argparse.Namespace:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(toml_text)
    return argparse.Namespace(config_file=str(tmp_path / "cfg"), network_args=network_args, network_dropout=None, **extra)


def test_split_pair_strips_the_quotes_the_gui_adds():
    item = gui_split(r"consistency_reference=C:\data\ref")[0]
    assert item.startswith("'")  # shlex.quote wraps it; Popen without a shell passes the quotes on
    assert gn.split_pair(item) == ("consistency_reference", r"C:\data\ref")
    with pytest.raises(KohyaExtError, match="key=value"):
        gn.split_pair("consistency_patience")


def test_plan_inner_module_kwargs_and_option_precedence(tmp_path):
    toml = '[network]\nnetwork_module = "lycoris.kohya"\nnetwork_args = ["algo=locon", "conv_dim=8"]\n'
    args = _ns(tmp_path, toml, ["conv_dim=4", "consistency_patience=3"], consistency_patience=5, consistency_warmup=2)
    p = gn.plan(args)
    assert p.inner == "lycoris.kohya" and p.kwargs == {"algo": "locon", "conv_dim": "4", "dropout": None}
    assert p.options.consistency is True and p.options.consistency_patience == "3" and p.options.consistency_warmup == 2
    from kohya_ext.training.options import from_args

    opts = from_args(p.options)
    assert opts.patience == 3 and opts.warmup == 2
    # No --network_args appended: sd-scripts already passes the TOML's list; nothing is restored.
    p = gn.plan(_ns(tmp_path, toml, ["algo=locon", "conv_dim=8"]))
    assert p.restored == [] and p.kwargs["conv_dim"] == "8"
    # The TOML itself names our module (a hand-written config): the inner one comes from our key.
    own = 'network_module = "kohya_ext.gui_network"\n'
    assert gn.plan(_ns(tmp_path, own, None)).inner == "networks.lora"
    assert gn.plan(_ns(tmp_path, own, ["consistency_network_module=networks.lora_flux"])).inner == "networks.lora_flux"
    assert gn.plan(_ns(tmp_path, own, ["consistency=off"])).options.consistency is False
    with pytest.raises(KohyaExtError, match="true or false"):
        gn.plan(_ns(tmp_path, own, ["consistency=maybe"]))


def test_fix_metadata_names_the_inner_module():
    p = gn.Plan(inner="lycoris.kohya", kwargs={"algo": "locon", "dropout": None}, options=argparse.Namespace(), restored=["algo=locon"])
    meta = gn.fix_metadata({"ss_network_module": "kohya_ext.gui_network", "ss_network_args": '{"consistency_patience": "3"}'}, p)
    assert meta == {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "locon", "dropout": null}'}


def test_gui_validation_loss_monitor_from_network_args(tmp_path):
    """The GUI exposes no validation settings: the user puts sd-scripts' in the TOML (or Additional parameters) and
    ``consistency_monitor=val_loss`` in network_args. The run stops on the validation loss, exits 0, nothing renders."""
    sd = _standin_with_fakelyco(tmp_path)
    h.make_dataset(tmp_path, 8)
    cfg = _gui_toml(tmp_path, 24, 2, "networks.lora", [],
                    {"logging_dir": str(tmp_path / "logs"), "log_with": "tensorboard", "validation_split": 0.25,
                     "validate_every_n_steps": 2, "validate_every_n_epochs": 100})
    proc = _run_gui(tmp_path, sd, cfg, "--network_module kohya_ext.gui_network --network_args consistency_monitor=val_loss "
                    "consistency_patience=2", env={"FAKE_VAL_LOSSES": "0.50,0.40,0.45,0.47,0.30"})
    _ok(proc)
    board = _board(tmp_path)
    assert [(r["kohya_step"], r["val_loss"], r["is_best"]) for r in board] == [
        (2, 0.5, False), (4, 0.4, True), (6, 0.45, False), (8, 0.47, False)]
    assert max(_steps(h.read_trace(tmp_path / "trace.jsonl"))) == 8
    from kohya_ext.training.best import read_metadata

    best = read_metadata(tmp_path / "out" / "tiny-best.safetensors")
    assert best["kohya_ext_consistency_step"] == "4" and best["ss_network_module"] == "networks.lora"
    assert not list((tmp_path / "out" / "consistency").glob("eval-*"))
