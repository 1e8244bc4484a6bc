"""The resized cache of large photos: reduced size, EXIF orientation, reuse, invalidation, wiring into adapt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import must_cli.files.cache as cache_module
from must_cli.files.cache import ResizedCache, cached_side
from must_cli.files.images import load_rgb
from must_cli.method.masking import MaskGenerator
from must_cli.method.model import Preprocess
from must_cli.base.config import MustConfig
from must_cli.method.views import TrainViews

INPUT = 64  # model input side: cached side 96, images with a shorter side >= 192 are cached


def photo(path: Path, width: int, height: int, seed: int = 0, **save: object) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90, **save)
    return path


@pytest.fixture
def counted_decodes(monkeypatch) -> list[Path]:
    """Every path the cache module decodes, in order."""
    seen: list[Path] = []

    def counting(path: Path, draft: int | None = None) -> Image.Image:
        seen.append(Path(path))
        return load_rgb(path, draft)

    monkeypatch.setattr(cache_module, "load_rgb", counting)
    return seen


def test_draft_decodes_a_large_jpeg_at_reduced_scale_keeping_the_shorter_side(tmp_path):
    src = photo(tmp_path / "big.jpg", 1000, 700)
    reduced = load_rgb(src, draft=96)
    assert min(reduced.size) >= 96 and reduced.width < 1000
    assert load_rgb(src).size == (1000, 700)


def test_large_image_is_reduced_stored_and_reused_without_a_second_decode(tmp_path, counted_decodes):
    src = photo(tmp_path / "big.jpg", 1000, 700)
    cache = ResizedCache(tmp_path / "cache", INPUT)
    first = cache.load(src)
    assert first.size == (round(1000 * 96 / 700), 96) and min(first.size) == cached_side(INPUT)
    assert counted_decodes == [src]
    second = cache.load(src)
    assert counted_decodes == [src, cache.entry(src)]  # the stored copy, not the photo
    assert np.array_equal(np.asarray(first), np.asarray(second))  # a miss and a hit give the same pixels
    direct = np.asarray(load_rgb(src).resize(first.size, Image.Resampling.BICUBIC), dtype=np.float32)
    assert np.abs(direct - np.asarray(second, dtype=np.float32)).mean() < 3.0


def test_small_image_is_read_directly_and_nothing_is_stored(tmp_path):
    src = photo(tmp_path / "small.jpg", 180, 150)
    cache = ResizedCache(tmp_path / "cache", INPUT)
    assert np.array_equal(np.asarray(cache.load(src)), np.asarray(load_rgb(src)))
    assert not (tmp_path / "cache").exists()


def test_exif_orientation_is_applied_before_storing(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    src = photo(tmp_path / "rotated.jpg", 1000, 700, exif=exif.tobytes())
    cache = ResizedCache(tmp_path / "cache", INPUT)
    assert cache.load(src).size == (96, round(1000 * 96 / 700))  # portrait, as load_rgb shows it
    assert cache.load(src).size == (96, round(1000 * 96 / 700))


def test_changed_file_is_decoded_afresh(tmp_path, counted_decodes):
    src = photo(tmp_path / "big.jpg", 1000, 700)
    cache = ResizedCache(tmp_path / "cache", INPUT)
    old = np.asarray(cache.load(src))
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    cache.load(src)
    assert counted_decodes.count(src) == 2
    photo(src, 1000, 700, seed=1)  # replaced by another photo
    new = np.asarray(cache.load(src))
    assert counted_decodes.count(src) == 3 and not np.array_equal(old, new)


def test_unwritable_cache_only_costs_speed(tmp_path):
    src = photo(tmp_path / "big.jpg", 1000, 700)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert min(ResizedCache(blocker, INPUT).load(src).size) == 96


def test_train_views_give_the_same_sample_from_a_cold_and_a_warm_cache(tmp_path):
    paths = [photo(tmp_path / f"{i}.jpg", 800, 600, seed=i) for i in range(2)]
    pre = Preprocess(INPUT, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    views = TrainViews(paths, pre, MaskGenerator(INPUT, 8, 16, 0.3), MustConfig(), cache=ResizedCache(tmp_path / "c", INPUT))
    cold, warm = views[(1, 0)], views[(1, 0)]
    assert len(list((tmp_path / "c").rglob("*.jpg"))) == 1
    assert all(torch.equal(cold[k], warm[k]) for k in cold) and cold["weak"].shape == (3, INPUT, INPUT)


def test_adapt_fills_the_cache_in_the_run_folder_with_grad_checkpointing(tmp_path, tiny_spec, classes_file):
    from must_cli.cli import app

    images = tmp_path / "photos"
    images.mkdir()
    for i in range(8):  # tiny model: 32-px input, so 48-px copies of anything with a shorter side >= 96
        photo(images / f"{i}.jpg", 160, 120, seed=i)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "adapt", str(images), "--classes", str(classes_file), "--model", tiny_spec, "--epochs", "2",
        "--batch-size", "4", "--workers", "0", "--output", str(out), "--no-guard", "--grad-checkpointing",
    ])
    assert result.exit_code == 0, result.output
    assert len(list((out / "cache").rglob("*.jpg"))) == 8
