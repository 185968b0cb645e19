"""The copy gate's training decision on the stand-in loop with real nvxs scoring: samples that
are new portraits on a plain white canvas (the usual character-sheet framing, the same as the
reference's) are crowned best; samples that are copies of training images are logged as
memorised and never crowned."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("standin_harness", Path(__file__).parent / "standin" / "harness.py")
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)


def _on_white(tile, size: int = 512, face: float = 0.6):
    from PIL import Image

    side = int(size * face)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(Image.fromarray(tile).resize((side, side)), ((size - side) // 2, (size - side) // 3))
    return canvas


def _run(root: Path, tiles, ref_idx, sample_paths) -> tuple[list[dict], Path]:
    ref = root / "reference"
    ref.mkdir(parents=True)
    for i in ref_idx:
        _on_white(tiles[i]).save(ref / f"{i:02d}.png")
    faces = root / "faces"
    faces.mkdir()
    for j, src in enumerate(sample_paths(ref)):
        src.save(faces / f"{j:02d}.png") if hasattr(src, "save") else (faces / f"{j:02d}.png").write_bytes(src.read_bytes())
    h.make_dataset(root, 4)
    args = h.base_args(root, steps=4, save_every=2) + [
        "--standin_faces", str(faces), "--consistency", "--consistency_backend", "nvxs", "--consistency_reference", str(ref),
        "--consistency_size", "512", "--consistency_num_prompts", "4", "--consistency_prompts", str(_prompts(root))]
    proc = h.run_trainer(root, args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    board = json.loads((root / "out" / "consistency" / "leaderboard.json").read_text())["evaluations"]
    return board, root / "out" / "tiny-best.safetensors"


def _prompts(root: Path) -> Path:
    p = root / "prompts.txt"
    p.write_text("".join(f"sks, portrait --d {i} --w 512 --h 512\n" for i in range(4)))
    return p


def test_new_portraits_on_white_are_crowned_copies_are_not(tmp_path, tadne_tiles):
    board, best = _run(tmp_path / "new", tadne_tiles, range(0, 12), lambda ref: [_on_white(tadne_tiles[i]) for i in range(20, 24)])
    assert all(r["status"] == "ok" for r in board), board
    assert [r["memorized"] for r in board] == [False, False], [r["memorization"] for r in board]
    assert any(r["is_best"] for r in board) and best.is_file()

    board, best = _run(tmp_path / "copies", tadne_tiles, range(0, 12), lambda ref: sorted(ref.glob("*.png"))[:4])
    assert [r["memorized"] for r in board] == [True, True], [r["memorization"] for r in board]
    assert not any(r["is_best"] for r in board) and not best.exists()
