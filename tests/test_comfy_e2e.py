"""The node pack inside a real ComfyUI server (the vendored 0.8.0), end to end over its HTTP API.

What runs, as a user's machine would:
1. ComfyUI's own venv: built once from ComfyUI's requirements.txt (torchaudio left out:
   no build for this torch; ``requests`` added: transformers 5 no longer brings it), cached
   under ~/.cache/kohya-ext/comfyui-venv-<tarball hash>-<requirements hash>/; its package list
   right after the build is kept as the "before" of the pins check.
2. The repository copied into ComfyUI/custom_nodes/kohya-ext (what a clone or ComfyUI-Manager
   does) and kohya-ext installed the documented way: ``PYTHON=<comfy python> scripts/install.sh``.
   Then every package ComfyUI's environment had keeps its version, and ``import cv2`` works.
3. ``main.py --cpu --listen 127.0.0.1`` with the pack; an API-format workflow is POSTed
   (LoadImage x5 -> Batch -> reference from a folder -> consistency (ko) -> gate -> SaveImage
   of both sides) and /history polled. Checked: the set score is ``kohya-ext score``'s on the
   same files, the gate splits the character's images from other characters' as the per-image
   scores say, the Korean report, the faceless image's reason, an empty side skips its
   SaveImage, and bad references are node errors while the server keeps serving. The reference
   folder is allowed through ``--extra-model-paths-config`` (``kohya_ext_references``); paths outside
   the allowed folders are refused at queue time (docs/comfyui.md, "Folder rules"). The shipped
   examples/ workflows run (a folder loaded as a list is one set) or validate (the generation
   one, up to its model files), and ComfyUI's own parser reads pyproject.toml. The server is
   stopped by its PID.

Skips, saying why, without ../shared/vendor (the ComfyUI tarball) or ../shared/data (the
portraits). Building the venv needs the package index once; a failed build fails under CI=true
and skips elsewhere. Cost on a shared 2-core machine: the first build ~5.5 min with its own torch
(about 6 GB, most of it torch's CUDA wheels; where torch can be hard-linked from this test venv,
tests/linked_torch.py, a few hundred MB), then ~1.5 min per run (reinstalling the pack only when its
files changed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, SHARED
from linked_torch import link_torch
from test_comfy_nodes import CHARACTER, OTHERS, variant

VENDOR = SHARED / "vendor"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kohya-ext"
#: requirements.txt lines left out of ComfyUI's venv, and packages added (see the module docstring)
DROPPED = ("torchaudio",)
ADDED = ("requests",)
#: bump when the way the venv is built changes (it is part of the cache key)
BUILD_RECIPE = 3
#: what each prompt may take (nvxs on a shared 2-core machine: ~0.5 s an image)
PROMPT_TIMEOUT = 600


def _torch_spec() -> list[str]:
    """The torch build the Makefile installs (TORCH_SPEC), so both venvs run the same torch."""
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("TORCH_SPEC") and "=" in line:
            return line.split("=", 1)[1].split()
    return ["torch", "torchvision"]


def _tarball() -> Path:
    found = sorted(VENDOR.glob("ComfyUI-*.tar.gz")) if VENDOR.is_dir() else []
    if not found:
        pytest.skip(f"no vendored ComfyUI at {VENDOR}/ComfyUI-*.tar.gz (set KOHYA_EXT_SHARED to a folder holding vendor/)")
    return found[-1]


def _sha(data: bytes, n: int = 12) -> str:
    return hashlib.sha256(data).hexdigest()[:n]


def _fail_or_skip(why: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)


def _run(cmd: list[str], log: Path, timeout: int = 1800, **kw) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, **kw)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        _fail_or_skip(f"`{' '.join(cmd[:4])} ...` exited {proc.returncode} (log {log}):\n{tail}")


def _packages(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out)}


def _requirements(src: Path) -> list[str]:
    keep = []
    for line in (src / "requirements.txt").read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name and not any(name.lower().startswith(d) for d in DROPPED):
            keep.append(name)
    return keep + list(ADDED)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfy_src(tmp_path_factory) -> Path:
    """A fresh extraction of the vendored ComfyUI (it writes into its own folders)."""
    tarball = _tarball()
    dest = tmp_path_factory.mktemp("comfyui")
    with tarfile.open(tarball) as tf:
        tf.extractall(dest, filter="data")
    return dest / "ComfyUI"


@pytest.fixture(scope="module")
def comfy_venv(comfy_src) -> Path:
    """ComfyUI's venv (cached); returns its python. ``base-packages.json`` holds its packages as built."""
    reqs = _requirements(comfy_src)
    torch_spec = _torch_spec()
    key = f"{_sha(_tarball().read_bytes())}-{_sha(json.dumps([reqs, torch_spec, sys.version_info[:2], BUILD_RECIPE]).encode(), 8)}"
    venv = CACHE_ROOT / f"comfyui-venv-{key}"
    py = venv / "bin" / "python"
    with _locked(CACHE_ROOT / f"comfyui-venv-{key}.lock"):
        if not (venv / ".complete").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            venv.mkdir(parents=True)
            log = venv / "build.log"
            _run([sys.executable, "-m", "venv", str(venv)], log)
            # torch as hard links to this venv's copy of the same wheels where it can (tests/linked_torch.py); pip
            # then finds it installed, and installs it itself where it cannot
            if link_torch(py, torch_spec):
                with open(log, "a") as f:
                    f.write(f"\nlinked {' '.join(torch_spec)} and their requirements from {sys.prefix}\n")
            (venv / "requirements.txt").write_text("\n".join(reqs) + "\n")
            # one resolve; no byte-compiling of ~6 GB of packages (Python compiles what it imports)
            _run([str(py), "-m", "pip", "install", "-q", "--no-compile", "--progress-bar", "off", *torch_spec,
                  "-r", str(venv / "requirements.txt")], log)
            (venv / "base-packages.json").write_text(json.dumps(_packages(py), indent=1, sort_keys=True))
            (venv / ".complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    return py


def _pack_files() -> list[Path]:
    """The repository as a clone has it: tracked files plus untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return sorted(Path(p) for p in out.decode().split("\0") if p and (REPO / p).is_file())


@pytest.fixture(scope="module")
def installed(comfy_src, comfy_venv) -> dict:
    """The pack cloned into custom_nodes and installed with scripts/install.sh into ComfyUI's venv."""
    pack = comfy_src / "custom_nodes" / "kohya-ext"
    files = _pack_files()
    for rel in files:
        (pack / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, pack / rel)
    installed_from = [p for p in files if p.parts[0] in ("kohya_ext", "callbacks", "patches", "presets") or
                      str(p) in ("setup.py", "pyproject.toml", "scripts/install.sh", "README.md")]
    tree = _sha(b"".join(str(p).encode() + b"\0" + (REPO / p).read_bytes() for p in installed_from), 16)
    venv = comfy_venv.parent.parent
    marker = venv / ".kohya-ext-installed"
    with _locked(venv.parent / f"{venv.name}.lock"):
        if not (marker.is_file() and marker.read_text() == tree):
            log = venv / "install.log"
            log.write_text("")
            _run(["bash", str(pack / "scripts" / "install.sh")], log, cwd=pack, env={**os.environ, "PYTHON": str(comfy_venv)})
            marker.write_text(tree)
    return {"pack": pack, "python": comfy_venv, "venv": venv}


@pytest.fixture(scope="module")
def data(comfy_src, tadne_tiles, tmp_path_factory) -> dict:
    """Reference folder (benign edits of one portrait) and the mixed batch in ComfyUI's input folder."""
    root = tmp_path_factory.mktemp("e2e")
    ref = root / "train" / "10_sks girl"
    ref.mkdir(parents=True)
    for k in ("orig", "mirror", "crop", "pad"):
        Image.fromarray(variant(tadne_tiles[CHARACTER], k)).save(ref / f"{k}.png")
    blank = root / "blank_ref"
    blank.mkdir()
    Image.fromarray(np.full((256, 256, 3), 255, np.uint8)).save(blank / "white.png")
    samples = [variant(tadne_tiles[CHARACTER], "rescale"), variant(tadne_tiles[CHARACTER], "jpeg")]
    samples += [tadne_tiles[i] for i in OTHERS] + [np.full((512, 512, 3), 200, np.uint8)]
    kinds = ["same", "same", "other", "other", "no_face"]
    names = []
    folder = comfy_src / "input" / "kx_folder"  # before the server starts: Load Image Dataset lists input subfolders
    folder.mkdir()
    for i, a in enumerate(samples):
        names.append(f"kx_sample_{i}.png")
        Image.fromarray(a).save(comfy_src / "input" / names[-1])
        Image.fromarray(a).save(folder / names[-1])
    return {"root": root, "ref": ref.parent, "blank_ref": blank, "names": names, "kinds": kinds,
            "cache": root / "cache", "folder": folder}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "{}")


@pytest.fixture(scope="module")
def server(comfy_src, installed, data):
    port = _free_port()
    log = data["root"] / "comfyui.log"
    env = {**os.environ, "KOHYA_EXT_CACHE": str(data["cache"]), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("KOHYA_EXT_COMFY_ALLOWED_DIRS", None)
    # the reference folders are allowed the way a studio allows its own: extra_model_paths.yaml (docs/comfyui.md, Folder rules)
    extra = data["root"] / "extra_model_paths.yaml"
    extra.write_text(f"studio:\n  kohya_ext_references: {json.dumps(str(data['root']))}\n")
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(installed["python"]), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--disable-auto-launch", "--disable-api-nodes", "--extra-model-paths-config", str(extra)],
            cwd=comfy_src, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        info = None
        while time.time() < deadline and proc.poll() is None:
            try:
                info = _get(f"{url}/object_info/KohyaExtConsistencyGate")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        assert proc.poll() is None, f"ComfyUI exited {proc.returncode}:\n{tail}"
        assert info and "KohyaExtConsistencyGate" in info, f"the node pack did not load:\n{tail}"
        yield {"url": url, "proc": proc, "log": log, "env": env}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # by its PID, nothing else
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def _queue(server: dict, prompt: dict) -> tuple[int, dict]:
    return _post(f"{server['url']}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})


def _wait(server: dict, prompt_id: str) -> dict:
    deadline = time.time() + PROMPT_TIMEOUT
    while time.time() < deadline:
        h = _get(f"{server['url']}/history/{prompt_id}")
        if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
            if h[prompt_id]["status"].get("status_str") in ("success", "error"):
                return h[prompt_id]
        assert server["proc"].poll() is None, "ComfyUI died:\n" + server["log"].read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"prompt {prompt_id} did not finish in {PROMPT_TIMEOUT} s")


def workflow(data: dict, reference: str, threshold: float, lang: str = "ko", prefix: str = "kx") -> dict:
    """API-format workflow: LoadImage per sample -> Batch Images -> reference -> consistency -> gate -> SaveImage x2."""
    p: dict = {}
    for i, name in enumerate(data["names"]):
        p[f"load{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    p["batch"] = {"class_type": "BatchImagesNode",
                  "inputs": {f"images.image{i}": [f"load{i}", 0] for i in range(len(data["names"]))}}
    p["ref"] = {"class_type": "KohyaExtCharacterReference",
                "inputs": {"path": reference, "backend": "auto", "device": "auto"}}
    p["cons"] = {"class_type": "KohyaExtCharacterConsistency",
                 "inputs": {"images": ["batch", 0], "reference": ["ref", 0], "language": lang}}
    p["gate"] = {"class_type": "KohyaExtConsistencyGate",
                 "inputs": {"images": ["batch", 0], "reference": ["ref", 0], "threshold": threshold}}
    p["save_pass"] = {"class_type": "SaveImage", "inputs": {"images": ["gate", 0], "filename_prefix": f"{prefix}_pass"}}
    p["save_fail"] = {"class_type": "SaveImage", "inputs": {"images": ["gate", 1], "filename_prefix": f"{prefix}_fail"}}
    p["save_overlay"] = {"class_type": "SaveImage", "inputs": {"images": ["cons", 3], "filename_prefix": f"{prefix}_overlay"}}
    p["show_verdicts"] = {"class_type": "PreviewAny", "inputs": {"source": ["gate", 4]}}
    return p


def _saved(history: dict, node: str) -> list[dict]:
    return history["outputs"].get(node, {}).get("images", [])


def example(name: str, **inputs) -> dict:
    """A shipped example workflow (examples/), with node inputs replaced: inputs={"<node id>.<input>": value}."""
    p = json.loads((REPO / "examples" / name).read_text())
    for k, v in inputs.items():
        node, key = k.split(".", 1)
        p[node]["inputs"][key] = v
    return p


# -- tests ------------------------------------------------------------------------------------------

def test_install_keeps_comfyui_pins(installed):
    """Nothing ComfyUI's environment had changes version or disappears; cv2 and the nodes import."""
    before = json.loads((installed["venv"] / "base-packages.json").read_text())
    after = _packages(installed["python"])
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not changed, f"installing kohya-ext changed ComfyUI's packages: {changed}"
    assert "kohya-ext" in after and "anime-face-detector" in after
    out = subprocess.run([str(installed["python"]), "-c", "import cv2, kohya_ext.comfy.core; print(cv2.__version__)"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_workflow_end_to_end(server, installed, data, comfy_src):
    from kohya_ext.image_score import DEFAULT_THRESHOLD

    kinds = data["kinds"]
    threshold = DEFAULT_THRESHOLD
    status, body = _queue(server, workflow(data, str(data["ref"]), threshold))
    assert status == 200, body
    h = _wait(server, body["prompt_id"])
    assert h["status"]["status_str"] == "success", json.dumps(h["status"], ensure_ascii=False)[:3000]
    cons = h["outputs"]["cons"]
    summary = cons["kohya_ext"][0]
    report = cons["text"][0]
    # the Korean report, in the seed format
    assert report.splitlines()[0].startswith("기준 비율 계산 완료") and "일관성 점수" in report.splitlines()[-1]
    # the set score is the CLI's on the same files, in the same order
    files = [str(comfy_src / "input" / n) for n in data["names"]]
    cli = subprocess.run([str(installed["venv"] / "bin" / "kohya-ext"), "-q", "score", "--reference", str(data["ref"]), *files,
                          "--json", str(data["root"] / "cli.json")], capture_output=True, text=True, env=server["env"])
    assert cli.returncode == 0, cli.stderr
    cli_report = json.loads((data["root"] / "cli.json").read_text())
    assert summary["score"] == cli_report["score"], (summary["score"], cli_report["score"])
    assert summary["score_version"] == cli_report["score_version"]
    # the gate splits as the per-image scores say, and that is character vs others
    gate = h["outputs"]["gate"]["kohya_ext"][0]
    scores = gate["image_scores"]
    assert scores == summary["image_scores"]
    assert gate["passed"] == [i for i, s in enumerate(scores) if s >= threshold and kinds[i] != "no_face"]
    assert gate["passed"] == [i for i, k in enumerate(kinds) if k == "same"], (scores, kinds)
    assert gate["failed"] == [i for i, k in enumerate(kinds) if k != "same"]
    verdicts = json.loads(h["outputs"]["show_verdicts"]["text"][0])
    faceless = verdicts[kinds.index("no_face")]
    assert faceless["passed"] is False and faceless["status"] == "no_face" and faceless["reason"] == "no face detected"
    assert faceless["score"] == 0.0
    # both branches were saved, with the right images
    assert len(_saved(h, "save_pass")) == len(gate["passed"]) and len(_saved(h, "save_fail")) == len(gate["failed"])
    first = np.asarray(Image.open(comfy_src / "output" / _saved(h, "save_pass")[0]["filename"]).convert("RGB"), dtype=int)
    orig = np.asarray(Image.open(files[gate["passed"][0]]).convert("RGB"), dtype=int)
    assert np.abs(first - orig).max() <= 1  # SaveImage truncates 255 * x
    assert len(_saved(h, "save_overlay")) == len(kinds)


def test_empty_side_skips_its_save(server, data):
    relative = data["ref"].name  # relative to the kohya_ext_references folder extra_model_paths.yaml gave
    status, body = _queue(server, workflow(data, relative, 1.0, lang="en", prefix="kx_empty"))
    assert status == 200, body
    h = _wait(server, body["prompt_id"])
    assert h["status"]["status_str"] == "success", json.dumps(h["status"])[:3000]
    assert _saved(h, "save_pass") == []  # blocked: SaveImage did not run, nothing failed
    assert len(_saved(h, "save_fail")) == len(data["kinds"])
    assert h["outputs"]["cons"]["text"][0].splitlines()[-1].startswith("consistency score:")


def test_bad_references_are_node_errors(server, data):
    # not found under the allowed folders, and outside them (existing or not): one message each, at queue time
    for path in (str(data["root"] / "no_such_folder"), str(REPO), str(REPO / "no_such_folder"), "../main.py"):
        status, body = _queue(server, workflow(data, path, 0.5))
        assert status == 400, body
        errs = body["node_errors"]["ref"]["errors"]
        assert any(f"reference path {path!r} is not a file or folder under the allowed folders" in e["details"]
                   for e in errs), errs
    # a folder without a usable face: the node fails when it runs, with the CLI's line
    status, body = _queue(server, workflow(data, str(data["blank_ref"]), 0.5))
    assert status == 200, body
    h = _wait(server, body["prompt_id"])
    assert h["status"]["status_str"] == "error"
    err = [m[1] for m in h["status"]["messages"] if m[0] == "execution_error"][0]
    assert err["node_id"] == "ref" and "has a usable face" in err["exception_message"]
    assert err["exception_message"].strip().count("\n") == 0  # one line, as the CLI prints it
    # and the server keeps serving
    assert server["proc"].poll() is None
    assert "system" in _get(f"{server['url']}/system_stats")


def test_huge_images_are_node_results_or_errors_and_the_server_keeps_serving(server, data, comfy_src):
    """A 10000x10000 white PNG (315 KB; it segfaulted libnvxs inside the server before the image gate)
    is measured downscaled; a PNG whose header claims 70000x70000 is LoadImage's own node error."""
    from test_hostile_images import png_declaring

    Image.new("RGB", (10000, 10000), "white").save(comfy_src / "input" / "kx_huge.png")
    png_declaring(comfy_src / "input" / "kx_bomb.png", 70000, 70000)
    p = {"load": {"class_type": "LoadImage", "inputs": {"image": "kx_huge.png"}},
         "ref": {"class_type": "KohyaExtCharacterReference", "inputs": {"path": data["ref"].name, "backend": "auto", "device": "auto"}},
         "cons": {"class_type": "KohyaExtCharacterConsistency",
                  "inputs": {"images": ["load", 0], "reference": ["ref", 0], "language": "en", "draw_overlays": False}},
         "show": {"class_type": "PreviewAny", "inputs": {"source": ["cons", 1]}}}
    status, body = _queue(server, p)
    assert status == 200, body
    h = _wait(server, body["prompt_id"])
    assert h["status"]["status_str"] == "success", json.dumps(h["status"])[:3000]
    report = json.dumps(h["outputs"]["show"])
    assert "measured downscaled" in report and "face detection rate: 0.0%" in report, report[:2000]
    p["load"]["inputs"]["image"] = "kx_bomb.png"
    status, body = _queue(server, p)
    if status == 200:  # ComfyUI validates the file name only; decoding fails when LoadImage runs
        h = _wait(server, body["prompt_id"])
        assert h["status"]["status_str"] == "error"
        err = [m[1] for m in h["status"]["messages"] if m[0] == "execution_error"][0]
        assert err["node_id"] == "load", err
    assert server["proc"].poll() is None
    assert "system" in _get(f"{server['url']}/system_stats")


def test_comfyui_reads_the_registry_metadata(installed, comfy_src):
    """ComfyUI's own pyproject parser (comfy_config, shared with comfy-cli) reads the pack's [project] / [tool.comfy]."""
    code = ("import json; from comfy_config import config_parser as c; x = c.extract_node_configuration({!r}); "
            "print(json.dumps([x.project.name, x.project.version, x.tool_comfy.display_name, x.project.supported_comfyui_version]))")
    out = subprocess.run([str(installed["python"]), "-c", code.format(str(installed["pack"]))], cwd=comfy_src,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    from kohya_ext import __version__

    name, version, display, comfy = json.loads(out.stdout.strip().splitlines()[-1])
    assert (name, version, comfy) == ("kohya-ext", __version__, ">=0.8.0") and "kohya-ext" in display


def test_generation_example_validates(server, data):
    """The shipped generation workflow: the only node errors are the model files this server does not have."""
    status, body = _queue(server, example("comfyui_generate_and_gate.json", **{"10.path": str(data["ref"])}))
    assert status == 400, body
    errs = body["node_errors"]
    assert set(errs) <= {"1", "2"} and errs, errs
    for node in errs.values():
        assert all(e["type"] == "value_not_in_list" for e in node["errors"]), node


def test_folder_example_scores_a_list_as_one_set(server, data, installed, comfy_src):
    """examples/comfyui_check_folder.json: Load Image Dataset from Folder gives a LIST of images; scored as one set."""
    p = example("comfyui_check_folder.json", **{"1.folder": data["folder"].name, "2.path": str(data["ref"]),
                                                "5.filename_prefix": "kx_folder/passed", "6.filename_prefix": "kx_folder/rejected",
                                                "9.filename_prefix": "kx_folder/overlay"})
    status, body = _queue(server, p)
    assert status == 200, body
    h = _wait(server, body["prompt_id"])
    assert h["status"]["status_str"] == "success", json.dumps(h["status"])[:3000]
    summary = h["outputs"]["3"]["kohya_ext"][0]
    assert len(summary["image_scores"]) == len(data["names"])  # one call over all images, not one per image
    batch = _queue(server, workflow(data, str(data["ref"]), 0.5, lang="en", prefix="kx_cmp"))[1]
    ref_summary = _wait(server, batch["prompt_id"])["outputs"]["cons"]["kohya_ext"][0]
    assert sorted(summary["image_scores"]) == sorted(ref_summary["image_scores"])
    assert abs(summary["score"] - ref_summary["score"]) < 1e-12  # the same set (in listing order)
    gate = h["outputs"]["4"]["kohya_ext"][0]
    assert len(gate["passed"]) == data["kinds"].count("same")
    assert len(_saved(h, "5")) == len(gate["passed"]) and len(_saved(h, "6")) == len(gate["failed"])
    assert "consistency score" in h["outputs"]["7"]["text"][0]
