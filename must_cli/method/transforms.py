"""CLIP's evaluation view and the test-view dataset: all that inference needs from image preprocessing.

Kept apart from views.py (the training views: RandAugment, masks, seeded samplers) so that
predict, eval and export load no training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from must_cli.files.images import ImageReadError, load_rgb
from must_cli.method.model import Preprocess


def interpolation(name: str) -> InterpolationMode:
    """The torchvision mode named in the model's preprocessing (bicubic when unknown)."""
    return InterpolationMode(name) if name in {m.value for m in InterpolationMode} else InterpolationMode.BICUBIC


def to_tensor(pre: Preprocess) -> list[Callable]:
    """To a tensor normalised with the model's mean and std."""
    return [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def eval_view(pre: Preprocess) -> T.Compose:
    """Resize the shorter side to the input size, centre crop: CLIP's evaluation transform."""
    interp = interpolation(pre.interpolation)
    return T.Compose([T.Resize(pre.image_size, interp), T.CenterCrop(pre.image_size), *to_tensor(pre)])


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
