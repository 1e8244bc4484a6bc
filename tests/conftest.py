"""Shared fixtures: a tiny random open_clip CLIP in local-dir: format, tiny image folders, an adapted model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

CLASSES = ["red", "green", "blue"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}

TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a random tiny CLIP that open_clip loads with `local-dir:` (no network)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_MODEL_CFG)
    config = {
        "model_cfg": TINY_MODEL_CFG,
        "preprocess_cfg": {"size": 32, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                           "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def make_color_images(folder: Path, per_class: int = 8, size: int = 40, seed: int = 0, by_class: bool = False) -> Path:
    """Noisy solid-colour images, flat (unlabeled) or one sub-folder per class."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLORS.items():
        target = folder / name if by_class else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(target / f"{name}_{i:03d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_clip) -> str:
    return f"local-dir:{tiny_clip}"


@pytest.fixture(scope="session")
def classes_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "classes.txt"
    path.write_text("# colours\n" + "\n".join(CLASSES) + "\n")
    return path


@pytest.fixture(scope="session")
def unlabeled_images(tmp_path_factory) -> Path:
    return make_color_images(tmp_path_factory.mktemp("unlabeled"))


@pytest.fixture(scope="session")
def labeled_images(tmp_path_factory) -> Path:
    return make_color_images(tmp_path_factory.mktemp("labeled"), per_class=4, seed=1, by_class=True)


@pytest.fixture(scope="session")
def adapted_run(tmp_path_factory, tiny_spec, classes_file, unlabeled_images) -> Path:
    """One real `must adapt` run (2 epochs, CPU) shared by the tests that need an adapted model."""
    from typer.testing import CliRunner

    from must_cli.cli import app

    out = tmp_path_factory.mktemp("run") / "run"
    result = CliRunner().invoke(app, [
        "adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec,
        "--epochs", "2", "--batch-size", "8", "--workers", "0", "--output", str(out), "--lr", "1e-3",
        "--no-guard",
    ])
    assert result.exit_code == 0, result.output
    return out
