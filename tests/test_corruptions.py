"""Tests for benchmarks/corruptions.py: shape, dtype, determinism and severity ordering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import corruptions

REQUIRED = [
    "gaussian_noise",
    "defocus_blur",
    "contrast",
    "jpeg_compression",
    "pixelate",
    "fog",
    "brightness",
    "impulse_noise",
]


def _image(seed: int = 0) -> np.ndarray:
    """A 32x32 RGB test image with smooth structure and texture, like a CIFAR photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 6, yy * 6, (xx + yy) * 3], axis=-1) + 20
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_required_corruptions_present() -> None:
    assert set(REQUIRED) <= set(corruptions.CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 5])
def test_shape_dtype_determinism_change(name: str, severity: int) -> None:
    img = _image()
    fn = corruptions.CORRUPTIONS[name]
    out = fn(img.copy(), severity, np.random.default_rng(7))
    again = fn(img.copy(), severity, np.random.default_rng(7))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, again)
    assert _mad(out, img) > 0


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "contrast", "defocus_blur", "fog"])
def test_severity_5_changes_more_than_1(name: str) -> None:
    img = _image()
    fn = corruptions.CORRUPTIONS[name]
    mild = fn(img.copy(), 1, np.random.default_rng(3))
    strong = fn(img.copy(), 5, np.random.default_rng(3))
    assert _mad(strong, img) > _mad(mild, img)


def test_input_not_modified() -> None:
    img = _image()
    for name, fn in corruptions.CORRUPTIONS.items():
        fn(img, 5, np.random.default_rng(0))
        np.testing.assert_array_equal(img, _image(), err_msg=name)


def test_bad_severity_raises() -> None:
    with pytest.raises(ValueError):
        corruptions.gaussian_noise(_image(), 6, np.random.default_rng(0))


def test_hsv_roundtrip() -> None:
    rgb = np.random.default_rng(1).random((16, 16, 3))
    rgb[0, 0] = 0.0
    rgb[0, 1] = 0.5
    back = corruptions._hsv_to_rgb(corruptions._rgb_to_hsv(rgb))
    np.testing.assert_allclose(back, rgb, atol=1e-12)


def test_corrupt_folder_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls, seed in [("cat", 1), ("dog", 2)]:
        (src / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_image(seed * 10 + i)).save(src / cls / f"{i:04d}.jpg", quality=95)
    outs = []
    for run in ("a", "b"):
        dst = tmp_path / run
        assert corruptions.corrupt_folder(src, dst, "gaussian_noise", 3, seed=0) == 4
        outs.append(sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png")))
        assert outs[-1] == ["cat/0000.png", "cat/0001.png", "dog/0000.png", "dog/0001.png"]
    for rel in outs[0]:
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "a" / rel)), np.asarray(Image.open(tmp_path / "b" / rel))
        )
    # A different seed gives different noise; different images get different noise.
    corruptions.corrupt_folder(src, tmp_path / "c", "gaussian_noise", 3, seed=1)
    a0 = np.asarray(Image.open(tmp_path / "a" / "cat/0000.png"))
    assert not np.array_equal(a0, np.asarray(Image.open(tmp_path / "c" / "cat/0000.png")))
    assert corruptions.image_seed(0, "fog", "cat/0000.jpg") != corruptions.image_seed(0, "fog", "cat/0001.jpg")


def test_corrupt_folder_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        corruptions.corrupt_folder(tmp_path, tmp_path / "out", "snow", 1)
