"""The three views of an image (weak for the teacher, strong+masked for the student, test) and their datasets.

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
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import pil_modes_mapping

from must_cli.cache import ResizedCache
from must_cli.images import ImageReadError, load_rgb
from must_cli.masking import MaskGenerator
from must_cli.model import Preprocess


def _interp(name: str) -> InterpolationMode:
    return InterpolationMode(name) if name in {m.value for m in InterpolationMode} else InterpolationMode.BICUBIC


def _to_tensor(pre: Preprocess) -> list[Callable]:
    return [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def eval_view(pre: Preprocess) -> T.Compose:
    """Resize the shorter side to the input size, centre crop: CLIP's evaluation transform."""
    interp = _interp(pre.interpolation)
    return T.Compose([T.Resize(pre.image_size, interp), T.CenterCrop(pre.image_size), *_to_tensor(pre)])


def weak_view(pre: Preprocess) -> T.Compose:
    """Teacher input: Resize + RandomCrop, close to the test view so pseudo-labels stay reliable."""
    interp = _interp(pre.interpolation)
    return T.Compose([T.Resize(pre.image_size, interp), T.RandomCrop(pre.image_size), *_to_tensor(pre)])


def strong_view(pre: Preprocess) -> T.Compose:
    """Student input: RandomResizedCrop(0.3-1) + flip + RandAugment(2 ops, m9, mstd 0.5, increasing)."""
    interp = _interp(pre.interpolation)
    hparams = {
        "translate_const": int(pre.image_size * 0.45),
        "img_mean": tuple(round(255 * m) for m in pre.mean),
        # At magnitude 10 timm's increasing posterize keeps 0 bits, which Pillow >= 10 rejects;
        # 9.99 keeps 1 bit there and leaves every other op unchanged.
        "magnitude_max": 9.99,
        "interpolation": pil_modes_mapping[interp],  # geometric ops resample as the crop does, as timm's factory sets
    }
    return T.Compose([
        T.RandomResizedCrop(pre.image_size, scale=(0.3, 1.0), interpolation=interp),
        T.RandomHorizontalFlip(),
        rand_augment_transform("rand-n2-m9-mstd0.5-inc1", hparams),
        *_to_tensor(pre),
    ])


def sample_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() changes between processes)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
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

    def __init__(self, paths: Sequence[Path], pre: Preprocess, masks: MaskGenerator | None, seed: int,
                 cache: ResizedCache | None = None):
        self.paths, self.masks, self.seed = list(paths), masks, seed
        self.load = cache.load if cache is not None else load_rgb
        self.weak, self.strong = weak_view(pre), strong_view(pre)

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
        with _seeded(seed):
            weak, strong = self.weak(image), self.strong(image)
        out = {"weak": weak, "strong": strong, "bad": torch.tensor(bad)}
        if self.masks is not None:
            out["mask"] = torch.from_numpy(self.masks(np.random.default_rng(seed)))
        return out


class FolderImages(Dataset):
    """Test-view images for zero-shot checks, evaluation and prediction; never holds all images."""

    def __init__(self, paths: Sequence[Path], pre: Preprocess):
        self.paths, self.view = list(paths), eval_view(pre)
        self.size = pre.image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        try:
            return self.view(load_rgb(self.paths[index])), index, True
        except ImageReadError:
            return torch.zeros(3, self.size, self.size), index, False

