"""Helpers shared by the test modules (fixtures are in conftest.py): tiny models, images, error checks."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.model import _build_vision_tower
from PIL import Image
from safetensors.torch import save_file

from must_cli.method.model import MustModel

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


def tiny_model(k: int = 3) -> MustModel:
    """A MustModel on the tiny random tower, with a random unit-norm head of ``k`` classes."""
    torch.manual_seed(0)
    visual = _build_vision_tower(TINY_MODEL_CFG["embed_dim"], TINY_MODEL_CFG["vision_cfg"])
    classifier = torch.nn.functional.normalize(torch.randn(TINY_MODEL_CFG["embed_dim"], k), dim=0)
    return MustModel(visual, classifier, logit_scale=14.0)


def bomb_png(path: Path, side: int = 40000) -> Path:
    """A valid 1x1 PNG whose IHDR claims side x side pixels (CRC fixed so PIL trusts it): 1.6 GP by default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1), (200, 40, 10)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def one_line_error(result, *needles: str) -> str:
    """The command failed with exit code 1 and exactly one error line, last, holding every needle; no traceback.

    Info or warning lines may come first (e.g. the mask size); the error itself is one line.
    """
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), result.output
    assert sum(line.startswith("error:") for line in lines) == 1, result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


CHANGED = 12  # with_changed_labels: of the 24 images, the first 12 (in folder order) change label


def truth_of(path: str) -> int:
    """The class of a make_color_images file, from its name."""
    return CLASSES.index(Path(path).name.split("_")[0])


def with_changed_labels(run: Path, images: Path, tmp_path: Path) -> Path:
    """A copy of a finished run and its images whose saved labels (predictions-both.json) changed on 12 images:
    6 now right, 3 were right, 3 right neither before nor after; for `must verify` and report tests."""
    import shutil

    from must_cli.files.run_dir import BOTH_FILE

    run = Path(shutil.copytree(run, tmp_path / "run"))
    images = Path(shutil.copytree(images, tmp_path / "images"))
    doc = json.loads((run / BOTH_FILE).read_text())
    doc["images"] = str(images)
    truth = [truth_of(p) for p in doc["paths"]]
    shift = [1] * 6 + [0] * 3 + [1] * 3 + [0] * (len(truth) - CHANGED)  # zero-shot's label, off the truth by
    moved = [0] * 6 + [1] * 3 + [2] * 3 + [0] * (len(truth) - CHANGED)  # the adapted label, off the truth by
    doc["zero_shot"]["labels"] = [(t + s) % 3 for t, s in zip(truth, shift)]
    doc["adapted"]["labels"] = [(t + m) % 3 for t, m in zip(truth, moved)]
    (run / BOTH_FILE).write_text(json.dumps(doc))
    (run / "run-record.json").write_text(json.dumps({"images": str(images)}))
    return run
