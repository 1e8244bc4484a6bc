"""The three views of an image (weak for the teacher, strong+masked for the student, eval) and their datasets.

Their recipes are MustConfig fields (the "Augmentation" block), so presets can state them.

Every random choice for a sample (crop, flip, RandAugment ops, mask) is seeded from
(run seed, epoch, image index), so a resumed or multi-process run sees exactly the
images, augmentations and masks an uninterrupted single-process run would.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms.functional import pil_modes_mapping

from must_cli.files.cache import ResizedCache
from must_cli.base.config import MustConfig
from must_cli.files.images import ImageReadError, load_rgb
from must_cli.method.masking import MaskGenerator
from must_cli.method.model import Preprocess
from must_cli.method.transforms import interpolation, to_tensor


def _translate(pre: Preprocess, fraction: float) -> list[Callable]:
    """Resize + crop to the input size, shifted by up to ``fraction`` of the side (reflect padding)."""
    interp, size = interpolation(pre.interpolation), pre.image_size
    pad = round(fraction * size)
    crop = T.RandomCrop(size, padding=pad, padding_mode="reflect") if pad else T.RandomCrop(size)
    return [T.Resize(size, interp), crop]


def weak_view(pre: Preprocess, cfg: MustConfig) -> T.Compose:
    """Teacher input: the paper's Resize + RandomCrop, close to the test view so pseudo-labels stay reliable."""
    flip = [T.RandomHorizontalFlip()] if cfg.weak_flip else []
    return T.Compose([*_translate(pre, cfg.weak_translate), *flip, *to_tensor(pre)])


def is_low_res(pre: Preprocess, cfg: MustConfig) -> bool:
    """Whether the low-resolution strong view applies (input side at most ``low_res_max_size``)."""
    return pre.image_size <= cfg.low_res_max_size


class Cutout:
    """FixMatch's Cutout: one square of side uniform in [0, ``max_fraction``] x the image side, mean colour."""

    def __init__(self, max_fraction: float, fill: tuple[int, int, int]):
        self.max_fraction, self.fill = max_fraction, fill

    def __call__(self, image: Image.Image) -> Image.Image:
        side = int(random.uniform(0, self.max_fraction) * min(image.size))
        if side < 1:
            return image
        x, y = random.randrange(image.width), random.randrange(image.height)
        box = (max(0, x - side // 2), max(0, y - side // 2), min(image.width, x + side - side // 2),
               min(image.height, y + side - side // 2))
        image = image.copy()
        image.paste(self.fill, box)
        return image


def strong_view(pre: Preprocess, cfg: MustConfig) -> T.Compose:
    """Student input. The paper's: RandomResizedCrop + flip + RandAugment. At low resolution (the
    rule in ``MustConfig.low_res_*``), FixMatch's CIFAR recipe: flip + translate + RandAugment +
    Cutout, because a 0.3-area crop of a 32-px image keeps ~17 px and upsamples the rest away."""
    interp = interpolation(pre.interpolation)
    mean = tuple(round(255 * m) for m in pre.mean)
    hparams = {
        "translate_const": int(pre.image_size * 0.45),
        "img_mean": mean,
        # At magnitude 10 timm's increasing posterize keeps 0 bits, which Pillow >= 10 rejects;
        # 9.99 keeps 1 bit there and leaves every other op unchanged.
        "magnitude_max": 9.99,
        "interpolation": pil_modes_mapping[interp],  # geometric ops resample as the crop does, as timm's factory sets
    }
    randaugment = [rand_augment_transform(cfg.randaugment, hparams)] if cfg.randaugment else []
    if is_low_res(pre, cfg):
        return T.Compose([*_translate(pre, cfg.low_res_translate), T.RandomHorizontalFlip(), *randaugment,
                          Cutout(cfg.low_res_cutout, mean), *to_tensor(pre)])
    scale = (cfg.strong_crop_min, cfg.strong_crop_max)
    return T.Compose([T.RandomResizedCrop(pre.image_size, scale=scale, interpolation=interp),
                      T.RandomHorizontalFlip(), *randaugment, *to_tensor(pre)])


def sample_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() changes between processes)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the Python, NumPy and torch RNGs (torchvision and timm draw from all three), restore them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class EpochSampler(Sampler):
    """Shuffled indices per epoch, sharded across ranks, resumable mid-epoch.

    Like DistributedSampler (same permutation on every rank, padded to a multiple of the
    world size, rank r takes every world-th index) but it yields ``(index, epoch)`` so the
    dataset can seed per-sample augmentation, and it can skip the first ``start`` items
    of an epoch when a run resumes.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch, self.start = 0, 0
        self.per_rank = -(-size // world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g).tolist()
        order += order[: self.per_rank * self.world - self.size]
        mine = order[self.rank :: self.world]
        return iter([(i, self.epoch) for i in mine[self.start :]])


class TrainViews(Dataset):
    """Unlabeled images -> (weak view, strong view, token mask), deterministic per (seed, epoch, index).

    A file that fails to decode mid-run (e.g. truncated after the header check) is
    replaced by the next image and reported through ``bad`` so the loop can warn once.
    With a ``cache``, large photos are read from their resized copy after the first epoch.
    """

    def __init__(self, paths: Sequence[Path], pre: Preprocess, masks: MaskGenerator | None, cfg: MustConfig,
                 cache: ResizedCache | None = None):
        self.paths, self.masks, self.seed = list(paths), masks, cfg.seed
        self.load = cache.load if cache is not None else load_rgb
        self.weak, self.strong = weak_view(pre, cfg), strong_view(pre, cfg)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = item
        bad = -1
        for offset in range(len(self.paths)):
            i = (index + offset) % len(self.paths)
            try:
                image = self.load(self.paths[i])
                break
            except ImageReadError:
                bad = i if bad < 0 else bad
        else:  # pragma: no cover - scan_images guarantees at least one readable file
            raise RuntimeError("no readable image left")
        seed = sample_seed(self.seed, epoch, index)
        with seeded(seed):
            weak, strong = self.weak(image), self.strong(image)
        out = {"weak": weak, "strong": strong, "bad": torch.tensor(bad)}
        if self.masks is not None:
            out["mask"] = torch.from_numpy(self.masks(np.random.default_rng(seed)))
        return out
