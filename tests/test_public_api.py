"""The public API: ``kohya_ext.__all__`` and the README's Python example, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_all_names_resolve_and_import_stays_light():
    code = ("import sys, kohya_ext; heavy = 'torch' in sys.modules; "
            "names = [n for n in kohya_ext.__all__ if getattr(kohya_ext, n, None) is None]; print(heavy, names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert out[0] == "False", "import kohya_ext pulled torch in"  # the training glue imports it first thing
    assert out[1].strip() == "[]"
    import kohya_ext

    assert {"Scorer", "load_references", "ReferenceStats", "ConsistencyReport", "BackendSpec", "KohyaExtError"} <= set(kohya_ext.__all__)


def test_readme_example_runs(tmp_path, tadne_tiles):
    from PIL import Image

    block = re.search(r"## Library\n\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    train = tmp_path / "train" / "10_sks girl"
    samples = tmp_path / "samples"
    train.mkdir(parents=True)
    samples.mkdir()
    for i in range(8):
        Image.fromarray(tadne_tiles[i]).save(train / f"{i}.png")
        Image.fromarray(tadne_tiles[i + 8]).save(samples / f"{i}.png")
    env = {**os.environ, "KOHYA_EXT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interocular_ratio" in proc.stdout and "consistency score" in proc.stdout
    score = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert 0.0 <= score <= 1.0
