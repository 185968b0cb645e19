"""Evaluation prompts when none are given: the training dataset's captions and class tokens,
whatever the reference is, and never a folder name (kohya_ext.training.prompts.default_prompts)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kohya_ext.errors import KohyaExtError
from kohya_ext.training.prompts import default_prompts


def _images(folder: Path, n: int, caption: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i:02d}.png")
        if caption is not None:
            (folder / f"{i:02d}.txt").write_text(caption)
    return folder


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"dataset_config": None, "train_data_dir": None, "caption_extension": ".txt", **kw})


def test_a_reference_folder_never_names_the_prompts(tmp_path):
    ref = _images(tmp_path / "img", 3)
    train = tmp_path / "train"
    _images(train / "10_mio girl", 4)  # no captions: the class token
    got = default_prompts(_args(train_data_dir=str(train)), str(ref), 2)
    assert [(p["prompt"], p["character"]) for p in got] == [("mio girl", "mio girl")] * 2
    _images(train / "10_mio girl", 4, caption="mio girl, red scarf")
    assert [p["prompt"] for p in default_prompts(_args(train_data_dir=str(train)), str(ref), 2)] == ["mio girl, red scarf"] * 2


def test_dataset_config_class_tokens_and_no_training_set(tmp_path):
    _images(tmp_path / "a", 2)
    _images(tmp_path / "reg", 2)
    cfg = tmp_path / "ds.toml"
    cfg.write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nclass_tokens = "sks boy"\n'
                   '[[datasets.subsets]]\nimage_dir = "reg"\nclass_tokens = "boy"\nis_reg = true\n')
    got = default_prompts(_args(dataset_config=str(cfg), train_data_dir=str(tmp_path / "ignored")), str(tmp_path / "a"), 1)
    assert [p["prompt"] for p in got] == ["sks boy"]
    # No training set known: a kohya layout reference still has class tokens ...
    kohya_ref = tmp_path / "kref"
    _images(kohya_ref / "1_rin", 2)
    assert [p["prompt"] for p in default_prompts(_args(), str(kohya_ref), 1)] == ["rin"]
    # ... a plain, uncaptioned folder has nothing to say: an error naming the fix, not "img" as a prompt.
    with pytest.raises(KohyaExtError, match="--consistency_prompts FILE"):
        default_prompts(_args(), str(_images(tmp_path / "img", 2)), 2)
    with pytest.raises(KohyaExtError, match="ref.json"):
        default_prompts(_args(), str(tmp_path / "ref.json"), 2)


def test_derived_prompts_render_like_the_users_own_samples(tmp_path):
    from kohya_ext.training.prompts import inherit_sampler_settings

    user = tmp_path / "prompt.txt"
    user.write_text("mio, smile --w 512 --h 768 --d 3 --s 20 --l 5.5 --n lowres, bad hands\n")
    got = inherit_sampler_settings([{"prompt": "mio girl", "character": "mio girl"}], str(user))
    assert got == [{"prompt": "mio girl", "character": "mio girl", "sample_steps": 20, "scale": 5.5, "negative_prompt": "lowres, bad hands"}]
    user.write_text("")  # what the kohya_ss GUI writes when its sample box is empty
    assert inherit_sampler_settings([{"prompt": "x"}], str(user)) == [{"prompt": "x"}]
    assert inherit_sampler_settings([{"prompt": "x"}], None) == [{"prompt": "x"}]
