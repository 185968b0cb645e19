"""One evaluation job in the scoring worker: score the images, write report.json and the
landmark-overlay grid next to them, return plain numbers for the trainer."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from PIL import Image

from ..backends import BackendSpec
from ..characters import combine_characters
from ..errors import KohyaExtError
from ..images import load_image
from ..io_utils import atomic_save_image, atomic_write_text, dumps_json, slug
from ..overlay import draw_overlay, overlay_grid
from ..scorer import Scorer, load_references


def build_scorer(cfg: dict) -> Any:
    """The scorer for ``cfg``: ours, or ``cfg["scorer"]`` = "MODULE:CALLABLE" called with cfg.
    With ``cfg["characters"]`` (several class tokens), a dict {character: scorer}, each
    against that character's own reference."""
    if cfg.get("scorer"):
        mod, _, fn = cfg["scorer"].partition(":")
        return getattr(importlib.import_module(mod), fn)(cfg)
    spec = BackendSpec(cfg.get("backend", "auto"), device=cfg.get("device", "auto"), threads=cfg.get("threads"))
    if cfg.get("characters"):
        refs = {r.name: r for r in load_references(cfg["reference"], spec, by_class=True, progress=False)}
        missing = [c for c in cfg["characters"] if c not in refs]
        if missing:
            raise KohyaExtError(f"{cfg['reference']}: no reference images for character(s) {', '.join(missing)} "
                                f"(class tokens found: {', '.join(refs)})")
        return {c: Scorer(refs[c], backend=spec, progress=False) for c in cfg["characters"]}
    return Scorer(cfg["reference"], backend=spec, progress=False)


def evaluate(scorer: Any, job: dict) -> dict:
    """Score the job's images; write report.json and the landmark-overlay grid next to them.
    A dict scorer scores each character's images against its own reference; the combined
    values are the per-character ones weighted by their number of images."""
    if isinstance(scorer, dict):
        return _evaluate_characters(scorer, job)
    paths = [Path(p) for p in job["paths"]]
    images = [load_image(p) for p in paths]
    report = scorer.score_images(images, [p.name for p in paths])
    return _result(report, images, Path(job["out_dir"]))


def _evaluate_characters(scorers: dict, job: dict) -> dict:
    chars = job.get("characters") or []
    if len(chars) != len(job["paths"]):
        raise ValueError(f"{len(job['paths'])} images but {len(chars)} character labels")
    per: dict[str, dict] = {}
    for c in sorted(set(chars)):
        paths = [Path(p) for p, pc in zip(job["paths"], chars) if pc == c]
        images = [load_image(p) for p in paths]
        sub = Path(job["out_dir"]) / f"character-{slug(c)}"
        sub.mkdir(parents=True, exist_ok=True)
        r = _result(scorers[c].score_images(images, [p.name for p in paths]), images, sub)
        r["images"] = len(paths)
        per[c] = r
    result = combine_characters(per, slug)
    grids = [r["grid"] for r in per.values() if r.get("grid")]
    if grids:
        ims = [Image.open(g).convert("RGB") for g in grids]
        canvas = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)))
        y = 0
        for im in ims:
            canvas.paste(im, (0, y))
            y += im.height
        atomic_save_image(canvas, Path(job["out_dir"]) / "overlay_grid.png")
        result["grid"] = str(Path(job["out_dir"]) / "overlay_grid.png")
    return result


def _result(report: Any, images: list, out: Path) -> dict:
    result: dict[str, Any] = {
        "score": float(report.score),
        "scalars": {k: float(v) for k, v in report.scalars().items()},
        "detection_rate": float(report.detection_rate),
        "memorization": None if report.memorization is None else float(report.memorization),
        "score_version": str(report.score_version),
        "backend": (report.backend or {}).get("name") or (report.backend or {}).get("backend"),
        "ratios": {k: {"diff_pct": v.diff_pct, "z": v.z} for k, v in getattr(report, "ratios", {}).items()},
    }
    try:
        atomic_write_text(out / "report.json", dumps_json(report.to_dict(), indent=1, ensure_ascii=False, default=str))
    except Exception as e:  # the report file is a convenience; the numbers are what counts
        result["report_error"] = str(e)
    samples = getattr(report, "samples", None)
    if samples:
        grid = overlay_grid([draw_overlay(img, m) for img, m in zip(images, samples)], columns=min(4, len(images)))
        atomic_save_image(grid, out / "overlay_grid.png")
        result["grid"] = str(out / "overlay_grid.png")
    return result
