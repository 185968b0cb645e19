"""`kohya-ext report RUN_DIR -o report.html`: one self-contained page about a run.

Consistency and loss curves over steps (the leaderboard + the TensorBoard event files),
the best evaluation and the early-stop point marked on them, per-ratio bars for the best
vs the last evaluation, and the landmark-overlay grids of both. Plots are matplotlib PNGs
and every image is embedded as base64, so the file can be mailed or attached alone.
Images are embedded at exactly the size the page lays them out (width/height attributes
equal to the PNG's own size), so nothing is rescaled by the browser.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import KohyaExtError, require
from ..io_utils import atomic_write_text
from ..ratios import RATIO_NAMES
from ..training.leaderboard import FOLDER, Leaderboard
from ..training.messages import measured
from . import run_info
from .compare_runs import ranked
from .rank import MIN_STEADY_IMAGES, images_in, point_label, rank_key

logger = logging.getLogger(__name__)

PAGE_WIDTH = 1040  # px, the content column; plots span it
CURVES_SIZE = (PAGE_WIDTH, 560)
BARS_SIZE = (PAGE_WIDTH, 440)
GRID_WIDTH = PAGE_WIDTH  # px at most: kohya-ext grids are 4 tiles of 256 px, shown unscaled
_DPI = 100


@dataclass
class ReportData:
    run_dir: Path
    rows: list[dict[str, Any]]  # chronological
    source: str
    images_root: Path
    warnings: list[str] = field(default_factory=list)
    reference: str | None = None
    stop: dict[str, Any] | None = None
    loss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tb_dir: Path | None = None
    tb_note: str | None = None

    @property
    def by_step(self) -> bool:
        """Plot against steps when every evaluation's step is known, else in evaluation order."""
        return all(r.get("cum_step") is not None for r in self.rows)

    def x(self, row: dict[str, Any]) -> float:
        return float(row["cum_step"]) if self.by_step else float(row.get("eval") or 0)

    @property
    def best(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("is_best")), None)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.rows[-1] if self.rows else None


def collect(run_dir: str | Path, logging_dir: str | Path | None = None, reference: str | None = None, **rank_kw: Any) -> ReportData:
    """Everything the page shows. A run without a kohya-ext leaderboard is ranked first (see `rank`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KohyaExtError(f"{run_dir}: no such run folder")
    consistency = run_dir / FOLDER
    if (consistency / "leaderboard.json").exists():
        try:
            board = Leaderboard.load(consistency)
        except (OSError, ValueError) as e:
            raise KohyaExtError(f"{consistency / 'leaderboard.json'}: cannot read the training leaderboard ({e})") from e
        data = ReportData(run_dir, list(board.rows), "leaderboard", consistency,
                          reference=(board.meta.get("options") or {}).get("consistency_reference"))
        data.warnings = _leaderboard_warnings(board.rows, consistency)
    else:
        res = ranked(run_dir, reference, False, **rank_kw)
        data = ReportData(run_dir, list(res.rows), res.source, res.images_root, list(res.warnings), res.reference)
    if not data.rows:
        raise KohyaExtError(f"{run_dir}: no evaluations to report")
    data.rows.sort(key=lambda r: r.get("eval") or 0)
    stopped = next((r for r in data.rows if r.get("stop")), None)
    record = {} if stopped is not None else run_info.load_run_record(run_dir).get("stopped") or {}
    if stopped is not None:
        data.stop = {"row": stopped, "reason": stopped.get("stop_reason"), "message": stopped.get("message")}
    elif isinstance(record, dict) and record.get("cum_step") is not None:  # stopped at a validation (monitor both)
        row = {"cum_step": record["cum_step"], "kohya_step": record.get("kohya_step"), "eval": len(data.rows) + 1}
        data.stop = {"row": row, "reason": record.get("reason"), "message": record.get("message")}
    times = [float(r["time"]) for r in data.rows if r.get("time")]
    started = datetime.fromtimestamp(min(times)) if times else None
    data.tb_dir = run_info.find_tensorboard_dir(run_dir, logging_dir, started)
    if data.tb_dir is None:
        data.tb_note = ("no TensorBoard logs found (train with --log_with tensorboard --logging_dir DIR, "
                        "or pass --logging-dir): loss curve left out")
    else:
        try:
            data.loss = run_info.read_scalars(data.tb_dir, "loss/")
        except ImportError:
            data.tb_note = "tensorboard is not installed (pip install tensorboard): loss curve left out"
        if not data.loss and data.tb_note is None:
            data.tb_note = f"{data.tb_dir}: no loss/* scalars in the event files"
    return data


def _leaderboard_warnings(rows: list[dict[str, Any]], folder: Path) -> list[str]:
    counts = [images_in(folder / r["images_dir"]) for r in rows if r.get("images_dir")]
    n = min((c for c in counts if c), default=None)
    out = []
    if n is not None and n < MIN_STEADY_IMAGES:
        out.append(f"only {n} image(s) per evaluation: too few for a steady verdict, close scores are a tie")
    failed = sum(1 for r in rows if r.get("status") != "ok")
    if failed:
        out.append(f"{failed} evaluation(s) failed (see the leaderboard's error column)")
    memorised = [point_label(r) for r in rows if r.get("memorized")]
    if memorised:
        out.append(f"memorised (near-copies of training images, never crowned best): {', '.join(memorised)}")
    return out


# -- plots ---------------------------------------------------------------------------------------

def _figure(size: tuple[int, int], rows: int = 1):
    matplotlib = require("matplotlib", "matplotlib", "kohya-ext report (its plots)")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, squeeze=False)
    return fig, [a for a in axes[:, 0]]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)  # no bbox_inches="tight": the pixel size stays exactly the layout size
    plt.close(fig)
    return buf.getvalue()


def plot_curves(d: ReportData) -> bytes:
    """Score and detection rate per evaluation (top), the training loss (bottom), best and stop marked."""
    fig, (ax, lx) = _figure(CURVES_SIZE, 2)
    ok = [r for r in d.rows if r.get("status") == "ok" and r.get("score") is not None]
    xs = [d.x(r) for r in ok]
    ax.plot(xs, [r["score"] for r in ok], "o-", color="#1f5fbf", lw=2, label="consistency score")
    ax.plot(xs, [r.get("detection_rate") or 0 for r in ok], "s--", color="#888", lw=1, ms=4, label="detection rate")
    mem = [r for r in ok if r.get("memorized")]
    if mem:
        ax.plot([d.x(r) for r in mem], [r["score"] for r in mem], "o", mfc="none", mec="#e07000", ms=14, mew=2, label="memorised")
    failed = [r for r in d.rows if r not in ok]
    if failed:
        ax.plot([d.x(r) for r in failed], [0.0] * len(failed), "x", color="#c00", ms=10, mew=2, label="failed")
    best = d.best
    marks = []
    if best is not None and best.get("score") is None:  # crowned on the validation loss (bottom panel)
        marks.append((d.x(best), "#f0b000", f"best: {measured(best)}"))
    elif best is not None:
        ax.plot([d.x(best)], [best["score"]], "*", color="#f0b000", mec="#805000", ms=22, zorder=5, label="best")
        right = bool(xs) and d.x(best) > (min(xs) + max(xs)) / 2  # keep the label inside the axes
        ax.annotate(f"best {best['score']:.3f} ({point_label(best)})", (d.x(best), best["score"]), xytext=(-12 if right else 12, -18),
                    textcoords="offset points", fontsize=10, ha="right" if right else "left")
        marks.append((d.x(best), "#f0b000", ""))  # labelled by the annotation above
    if d.stop is not None:
        marks.append((d.x(d.stop["row"]), "#c00000", f"early stop: {d.stop.get('reason') or ''}"))
    mid = (min(xs) + max(xs)) / 2 if xs else 0.0
    ax.set_ylim(-0.05, 1.08)
    ax.set_ylabel("score / rate")
    ax.set_title("consistency over training" + ("" if d.by_step else " (evaluation order: some steps unknown)"))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9, ncol=4)
    if not d.by_step:
        ax.set_xticks(xs or [0], [point_label(r) for r in ok] or [""], rotation=30, fontsize=8)
    for tag, color, lw, alpha in _loss_styles(d.loss):
        pts = d.loss[tag]
        lx.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=lw, alpha=alpha, label=tag)
    if d.loss:
        lx.legend(loc="upper right", fontsize=9)
        lx.set_ylabel("loss")
    else:
        lx.text(0.5, 0.5, d.tb_note or "no loss curve", ha="center", va="center", transform=lx.transAxes, fontsize=10, wrap=True)
        lx.set_yticks([])
        lx.set_xticks([])
    lx.set_xlabel("step" if d.by_step else "TensorBoard step")
    lx.grid(alpha=0.3)
    if d.by_step and xs:
        lo = min(xs + [p[0] for v in d.loss.values() for p in v])
        hi = max(xs + [p[0] for v in d.loss.values() for p in v])
        pad = 0.02 * (hi - lo or 1)
        ax.set_xlim(lo - pad, hi + pad)
        lx.set_xlim(lo - pad, hi + pad)
    for x, color, label in marks:
        for a in ([ax, lx] if d.by_step else [ax]):
            a.axvline(x, color=color, ls="--", lw=1.5, alpha=0.9)
        if label:
            ax.text(x, 1.04, f" {label} " if x <= mid else f"{label} ", color=color, fontsize=9, va="center",
                    ha="left" if x <= mid else "right")
    fig.tight_layout()
    return _png(fig)


def _loss_styles(loss: dict) -> list[tuple[str, str, float, float]]:
    styles = {"loss/current": ("#999", 0.8, 0.6), "loss/average": ("#d05000", 2.0, 1.0), "loss/epoch": ("#207020", 1.5, 1.0)}
    palette = ["#7040a0", "#208080", "#a02060"]
    out = []
    for i, tag in enumerate(sorted(loss)):
        c, lw, a = styles.get(tag, (palette[i % len(palette)], 1.2, 0.9))
        out.append((tag, c, lw, a))
    return out


def plot_ratio_bars(d: ReportData) -> bytes:
    """Per-ratio difference from the reference mean (%), best vs last evaluation."""
    import numpy as np

    fig, (ax,) = _figure(BARS_SIZE)
    best, last = d.best, d.last
    pairs = [(f"best ({point_label(best)})", best, "#f0b000")] if best is not None else []
    if last is not None and last is not best:
        pairs.append((f"last ({point_label(last)})", last, "#1f5fbf"))
    y = np.arange(len(RATIO_NAMES))
    h = 0.8 / max(1, len(pairs))
    for k, (label, row, color) in enumerate(pairs):
        vals = [row.get(f"{n}_diff_pct") for n in RATIO_NAMES]
        pos = y - 0.4 + h * (k + 0.5)
        ax.barh(pos, [v if v is not None else 0.0 for v in vals], height=h * 0.9, color=color, label=label)
        for p, v in zip(pos, vals):
            ax.text(0 if v is None else v, p, " n/a" if v is None else f" {v:+.1f}", va="center", fontsize=8,
                    ha="left" if v is None or v >= 0 else "right")
    ax.axvline(0, color="#333", lw=1)
    ax.margins(x=0.12)  # room for the value labels
    ax.set_yticks(y, RATIO_NAMES)
    ax.invert_yaxis()
    ax.set_xlabel("difference from the reference mean (%)")
    same = " (the last evaluation is the best)" if best is not None and best is last else ""
    ax.set_title("facial proportions: best vs last" + same)
    ax.grid(axis="x", alpha=0.3)
    if pairs:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)  # beside the bars, never over them
    else:
        ax.text(0.5, 0.5, "no scored evaluation", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return _png(fig)


def grid_png(d: ReportData, row: dict[str, Any] | None) -> bytes | None:
    """The evaluation's landmark-overlay grid, scaled to GRID_WIDTH, or None when it has none."""
    if row is None or not row.get("images_dir"):
        return None
    p = d.images_root / str(row["images_dir"]) / "overlay_grid.png"
    if not p.is_file():
        return None
    from PIL import Image

    try:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.width > GRID_WIDTH:
                im = im.resize((GRID_WIDTH, max(1, round(im.height * GRID_WIDTH / im.width))), Image.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except OSError as e:
        logger.warning("cannot read %s: %s", p, e)
        return None


# -- page ----------------------------------------------------------------------------------------

def _img(id_: str, png: bytes, alt: str) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        w, h = im.size
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<img id="{id_}" width="{w}" height="{h}" style="width:{w}px;height:{h}px" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{b64}">')


_CSS = f"""
body{{margin:0;background:#f6f6f4;color:#222;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}}
main{{width:{PAGE_WIDTH}px;margin:0 auto;padding:16px 24px 40px}}
h1{{font-size:22px;margin:8px 0}} h2{{font-size:17px;margin:22px 0 8px}}
img{{display:block;background:#fff}}
.cards{{display:flex;gap:12px;margin:10px 0}}
.card{{flex:1;background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px}}
.card b{{display:block;font-size:20px}}
.warn{{background:#fff3cd;border:1px solid #e0c060;border-radius:4px;padding:6px 10px;margin:6px 0}}
.grids figure{{margin:0 0 14px 0}} figcaption{{margin:4px 0;font-weight:600}}
.missing{{width:{GRID_WIDTH}px;height:120px;border:1px dashed #aaa;display:flex;align-items:center;justify-content:center;color:#777}}
table{{border-collapse:collapse;font-size:12px;background:#fff}}
th,td{{padding:3px 7px;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}}
th{{background:#eee}} td:nth-child(2){{text-align:left}} tr.best td{{background:#fff5d0}}
.scroll{{overflow-x:auto;max-width:{PAGE_WIDTH}px}}
footer{{margin-top:24px;color:#777;font-size:12px}}
"""


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None or v == "" else format(v, spec)


def _table(d: ReportData) -> str:
    heads = ["#", "checkpoint", "score", "val loss", "det %", "mem %"] + [n.replace("_ratio", "").replace("_to_", "-") for n in RATIO_NAMES] + ["file"]
    out = ['<div class="scroll"><table><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"]
    for i, r in enumerate(sorted(d.rows, key=rank_key), start=1):
        ok = r.get("status") == "ok" and (r.get("score") is not None or r.get("val_loss") is not None)
        label = point_label(r) + (" (memorised)" if r.get("memorized") else "") + ("" if ok else " (failed)")
        cells = [str(i), label, _fmt(r.get("score")) if ok else "failed", _fmt(r.get("val_loss")),
                 _fmt(None if r.get("detection_rate") is None else 100 * r["detection_rate"], ".0f"),
                 _fmt(None if r.get("memorization") is None else 100 * r["memorization"], ".0f")]
        cells += [_fmt(r.get(f"{n}_diff_pct"), "+.1f") for n in RATIO_NAMES] + [str(r.get("checkpoint") or "-")]
        cls = ' class="best"' if r.get("is_best") else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</table></div><p>ratio columns: difference from the reference mean, %.</p>")
    return "\n".join(out)


def render_html(d: ReportData) -> str:
    best, last = d.best, d.last
    title = f"kohya-ext report: {d.run_dir.resolve().name}"
    cards = [("best", "-" if best is None else measured(best), "none" if best is None else
              f"{point_label(best)}" + (f" · {best['checkpoint']}" if best.get("checkpoint") else "")),
             ("last", "-" if last is None or last.get("score") is None else f"{last['score']:.4f}",
              "" if last is None else point_label(last)),
             ("early stop", "no" if d.stop is None else point_label(d.stop["row"]),
              "" if d.stop is None else " · ".join(str(v) for v in (d.stop.get("reason"), d.stop.get("message")) if v)),
             ("evaluations", str(len(d.rows)), "from the training leaderboard" if d.source == "leaderboard" else "scored from sample/")]
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><main>", f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(str(d.run_dir.resolve()))}" + (f" · reference {html.escape(str(d.reference))}" if d.reference else "") + "</p>",
             '<div class="cards">' + "".join(f'<div class="card">{html.escape(k)}<b>{html.escape(v)}</b>{html.escape(s)}</div>' for k, v, s in cards) + "</div>"]
    parts += [f'<div class="warn">{html.escape(w)}</div>' for w in d.warnings]
    parts += ["<h2>Consistency and loss</h2>", _img("curves", plot_curves(d), "consistency score and loss over steps")]
    if d.tb_dir is not None:
        parts.append(f"<p>loss from {html.escape(str(d.tb_dir))}</p>")
    parts += ["<h2>Facial proportions, best vs last</h2>", _img("ratios", plot_ratio_bars(d), "per-ratio difference, best vs last")]
    parts.append('<h2>Landmarks</h2><div class="grids">')
    for key, row in (("best", best), ("last", last)):
        cap = f"{key}: " + ("none" if row is None else point_label(row) + ("" if row.get("score") is None else f", score {row['score']:.4f}"))
        png = grid_png(d, row)
        body = _img(f"grid-{key}", png, f"landmark overlays, {key} evaluation") if png else '<div class="missing">no overlay grid</div>'
        parts.append(f"<figure><figcaption>{html.escape(cap)}</figcaption>{body}</figure>")
    parts.append("</div>")
    parts += ["<h2>Leaderboard (best first)</h2>", _table(d)]
    parts.append(f"<footer>kohya-ext {__version__} · {time.strftime('%Y-%m-%d %H:%M')} · "
                 "green box: face used, red: excluded, yellow dots: low-confidence landmarks</footer></main></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, output: str | Path = "report.html", logging_dir: str | Path | None = None,
                 reference: str | None = None, **rank_kw: Any) -> Path:
    data = collect(run_dir, logging_dir, reference, **rank_kw)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_html(data))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # a page to share: not the temporary file's private mode
    return out
