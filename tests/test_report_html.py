"""`kohya-ext report`: one self-contained page, checked as Chromium draws it, not only as text."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kohya_ext.cli import main
from kohya_ext.posthoc.report_html import CURVES_SIZE, write_report
from posthoc_fixtures import make_kohya_ext_run

IMG_IDS = ("curves", "ratios", "grid-best", "grid-last")
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "") if p and Path(p).exists()), None)
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1"]
# Written into the DOM once everything has loaded, then read back with --dump-dom.
_PROBE = """<script>window.addEventListener('load', () => {
  const out = {height: document.documentElement.scrollHeight, width: document.documentElement.scrollWidth, imgs: {}};
  for (const im of document.images) { const r = im.getBoundingClientRect();
    out.imgs[im.id] = {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height, nw: im.naturalWidth, nh: im.naturalHeight, ok: im.complete}; }
  const p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(out); document.body.appendChild(p);
});</script>"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "posthoc-cache"


@pytest.fixture(scope="module")
def report(tmp_path_factory, tadne_tiles, cache_dir) -> Path:
    root = tmp_path_factory.mktemp("report")
    run = make_kohya_ext_run(root, tadne_tiles, cache_dir)
    out = root / "report.html"
    assert main(["report", str(run), "-o", str(out), "-q"]) == 0
    return out


def embedded_images(page: str) -> dict[str, tuple[Image.Image, int, int]]:
    """id -> (decoded PNG, width attribute, height attribute)."""
    out = {}
    for m in re.finditer(r'<img id="([^"]+)" width="(\d+)" height="(\d+)"[^>]*src="data:image/png;base64,([^"]+)"', page):
        out[m.group(1)] = (Image.open(io.BytesIO(base64.b64decode(m.group(4)))).convert("RGB"), int(m.group(2)), int(m.group(3)))
    return out


def test_page_is_self_contained(report):
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page), "the page must not load anything from outside"
    assert page.count("<img ") == len(IMG_IDS)
    imgs = embedded_images(page)
    assert set(imgs) == set(IMG_IDS)
    for name, (im, w, h) in imgs.items():
        assert im.size == (w, h), name  # embedded at the size the page lays out: the browser does not rescale
    assert imgs["curves"][0].size == CURVES_SIZE
    assert "early stop" in page and "patience_exhausted" in page and "loss from" in page


def _chromium(args: list[str], tmp: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=timeout)


def render(html_path: Path, tmp: Path) -> tuple[dict, np.ndarray]:
    """(layout of every <img> as Chromium laid it out, screenshot of the whole page as RGB)."""
    probe = tmp / "probe.html"
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(["--dump-dom", "--window-size=1200,3000", probe.as_uri()], tmp).stdout  # same width as the screenshot
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, f"Chromium did not run the layout probe: {dom[:300]!r}"
    layout = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    shot = tmp / "shot.png"
    height = int(layout["height"]) + 20
    r = _chromium([f"--screenshot={shot}", f"--window-size=1200,{height}", html_path.as_uri()], tmp)
    assert shot.is_file(), r.stderr[-500:]
    return layout, np.asarray(Image.open(shot).convert("RGB"))


def check_drawn(page_html: str, layout: dict, shot: np.ndarray) -> dict[str, str]:
    """Problems per image id: not laid out at its own size, blank, or not the embedded picture."""
    problems = {}
    for name, (im, w, h) in embedded_images(page_html).items():
        box = layout["imgs"].get(name)
        if box is None or not box["ok"] or box["nw"] != w or box["nh"] != h:
            problems[name] = f"not decoded at its size: {box}"
            continue
        if (round(box["w"]), round(box["h"])) != (w, h):
            problems[name] = f"laid out at {box['w']}x{box['h']}, not {w}x{h}"
            continue
        x, y = round(box["x"]), round(box["y"])
        region = shot[y:y + h, x:x + w].astype(np.float32)
        if region.shape[:2] != (h, w):
            problems[name] = f"outside the screenshot ({region.shape})"
            continue
        if region.std() < 10:
            problems[name] = f"blank (pixel std {region.std():.1f})"
            continue
        diff = np.abs(region - np.asarray(im, np.float32)).mean()
        if diff > 6:  # a broken-image icon or another picture differs by far more than PNG-vs-screen rounding
            problems[name] = f"not the embedded image (mean abs diff {diff:.1f})"
    return problems


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_report_renders_in_chromium(report, tmp_path):
    page = report.read_text(encoding="utf-8")
    layout, shot = render(report, tmp_path)
    assert layout["width"] <= 1200, "the page scrolls sideways"
    assert check_drawn(page, layout, shot) == {}
    # plots above grids, best grid above last grid: the reading order the page promises
    ys = [layout["imgs"][i]["y"] for i in IMG_IDS]
    assert ys == sorted(ys)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_render_check_catches_a_broken_image(report, tmp_path):
    """The check above can fail: a corrupt PNG (broken-image icon) and a swapped picture are caught."""
    page = report.read_text(encoding="utf-8")
    m = re.search(r'(<img id="grid-last"[^>]*base64,)([^"]+)', page)
    broken = page.replace(m.group(0), m.group(1) + m.group(2)[:200] + "AAAA" * 50)
    # and the ratio bars replaced by the curves picture at the bars' size: drawn, but the wrong image
    imgs = embedded_images(page)
    w, h = imgs["ratios"][1:]
    buf = io.BytesIO()
    imgs["curves"][0].resize((w, h)).save(buf, format="PNG")
    r = re.search(r'(<img id="ratios"[^>]*base64,)([^"]+)', broken)
    swapped = broken.replace(r.group(0), r.group(1) + base64.b64encode(buf.getvalue()).decode())
    bad = tmp_path / "bad.html"
    bad.write_text(swapped, encoding="utf-8")
    layout, shot = render(bad, tmp_path)
    problems = check_drawn(page, layout, shot)
    assert set(problems) == {"grid-last", "ratios"}, problems


def test_report_of_a_run_without_kohya_ext_finds_its_loss_logs(tmp_path, tadne_tiles, cache_dir):
    """sd-scripts logs to logging_dir/{prefix}{timestamp}/: the session that started before the first sample is the run's."""
    from datetime import timedelta

    from kohya_ext.posthoc.run_info import find_tensorboard_dir, read_scalars
    from posthoc_fixtures import T0, make_sample_run, write_loss_events

    run = make_sample_run(tmp_path, tadne_tiles)
    logs = tmp_path / "logs"
    earlier = logs / f"sks{T0 - timedelta(days=1):%Y%m%d%H%M%S}" / "network_train"
    ours = logs / f"sks{T0 - timedelta(minutes=5):%Y%m%d%H%M%S}" / "network_train"
    later = logs / f"sks{T0 + timedelta(days=1):%Y%m%d%H%M%S}" / "network_train"
    for d, n in ((earlier, 3), (ours, 40), (later, 5)):
        write_loss_events(d, n)
    cfg = run / "config_lora-20240506-070000.toml"
    cfg.write_text(cfg.read_text() + f'logging_dir = "{logs.as_posix()}"\n')
    assert find_tensorboard_dir(run, started=T0) == ours
    assert [s for s, _ in read_scalars(ours)["loss/average"]] == list(range(1, 41))
    out = tmp_path / "r.html"
    write_report(run, out, backend="nvxs", cache_dir=cache_dir, progress=False)
    page = out.read_text(encoding="utf-8")
    assert f"loss from {ours}" in page
    assert set(embedded_images(page)) == set(IMG_IDS)
    assert "epoch 2" in page and "scored from sample/" in page
