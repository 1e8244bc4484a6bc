"""benchmarks/make_standin.py on a synthetic 10-class folder: a loadable stand-in, honest file ranges."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from benchmarks import make_standin


def _cifar(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for i, c in enumerate(make_standin.CLASSES):
        (root / "train" / c).mkdir(parents=True)
        for j in range(per_class):  # a class-coloured square on noise: learnable in a few steps
            img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            img[8:24, 8:24] = (25 * i, 255 - 25 * i, 120)
            Image.fromarray(img).save(root / "train" / c / f"{j:04d}.jpg")
    return root


@pytest.mark.slow
def test_build_writes_a_loadable_clip_with_its_file_ranges(tmp_path):
    cifar, out = _cifar(tmp_path / "cifar10", 8), tmp_path / "standin"
    make_standin.main(["--cifar", str(cifar), "--out", str(out), "--image-files", "0:4", "--caption-files", "0:2",
                       "--pool-files", "4:6", "--val-files", "6:8", "--image-steps", "3", "--text-steps", "3",
                       "--batch-size", "16", "--context-length", "16", "--threads", "1"])
    info = json.loads((out / "open_clip_config.json").read_text())["proxy_info"]
    assert info["pool_files"] == [4, 6] and info["val_files"] == [6, 8] and info["classes"] == make_standin.CLASSES
    assert info["caption_files"] == "train [0:2) of each class" and 0 <= info["zero_shot_validation_top1"] <= 1
    model = open_clip.create_model(f"local-dir:{out}").eval()
    tokens = open_clip.get_tokenizer(f"local-dir:{out}")(["a photo of a cat."])
    assert tokens.shape == (1, 16)  # the recorded context length is the one the weights were built with
    with torch.no_grad():
        emb = model.encode_image(torch.zeros(2, 3, 32, 32))
    assert emb.shape == (2, 128) and torch.isfinite(emb).all()
    assert abs(model.logit_scale.exp().item() - info["logit_scale"]) < 0.1


@pytest.mark.parametrize("flags", [["--pool-files", "0:10"], ["--val-files", "50:150"],
                                   ["--image-files", "0:3600"]])
def test_pool_and_validation_files_may_never_be_seen(flags, tmp_path):
    with pytest.raises(SystemExit):
        make_standin.parse_args(["--out", str(tmp_path), *flags])


def test_unseen_ranges_may_touch_the_seen_ones(tmp_path):
    args = make_standin.parse_args(["--out", str(tmp_path), "--image-files", "0:3500", "--pool-files", "3500:4500"])
    assert args.image_files == (0, 3500) and args.caption_files == (0, 4)
    # a text-only rebuild of an existing tower does not claim the image slice
    make_standin.parse_args(["--out", str(tmp_path), "--image-steps", "0", "--image-files", "0:5000"])


def test_captions_name_the_class_at_the_chosen_rate():
    rng = random.Random(0)
    named = [make_standin.caption(3, rng, 0.3) for _ in range(2000)]
    share = sum("cat" in c for c in named) / len(named)
    assert 0.25 < share < 0.35
    assert all("cat" not in make_standin.caption(3, rng, 0.0) for _ in range(200))
    assert all("cat" in make_standin.caption(3, rng, 1.0) for _ in range(200))
