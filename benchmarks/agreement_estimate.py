"""The label-free accuracy estimate the run report used to show (agreement between augmented views).

Kept here, out of the package, so that benchmarks/estimator_check.py still reproduces the numbers
that showed why the report dropped it: MUST trains the student to keep its label under crops and
flips, so this agreement rises with training whether accuracy rises or falls (docs/method.md).

Jiang et al. (ICLR 2022) showed that the rate at which two stochastic copies of a classifier
disagree on unlabeled data tracks its test error; here the randomness is a random augmentation
of the input (Deng et al., NeurIPS 2022, measured how such invariance tracks accuracy under
shift). Estimated accuracy = the share of (image, pair of views) on which the predicted label
is the same. docs/method.md says why this one, and benchmarks/estimator_check.py how well it does.

The same pass also gives each model's label and confidence on the plain test view, which the
run report shows, so the images are decoded once for both models and every view.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from must_cli.files.images import ImageReadError, load_rgb
from must_cli.method.model import MustModel, Preprocess
from must_cli.method.transforms import eval_view, interpolation, to_tensor
from must_cli.method.views import sample_seed, seeded

AUGMENTED_VIEWS = 2  # random views per image: one pair, the least that measures disagreement
BOOTSTRAP_DRAWS = 1000
CONFIDENCE_LEVEL = 0.9  # the interval shown: 5th to 95th percentile of the bootstrap


def estimate_view(pre: Preprocess) -> T.Compose:
    """The estimator's augmentation: a random crop of half the image or more, then a random flip.

    Geometry only, so it keeps the class of nearly any photo (colour names classes in birds,
    flowers, cars): a right prediction should survive it, a guess often does not.
    """
    return T.Compose([
        T.RandomResizedCrop(pre.image_size, scale=(0.5, 1.0), interpolation=interpolation(pre.interpolation)),
        T.RandomHorizontalFlip(), *to_tensor(pre),
    ])


class ViewImages(Dataset):
    """Each image as (test view, augmented views, index, ok); views seeded by image index, so reruns agree."""

    def __init__(self, paths: Sequence[Path], pre: Preprocess, views: int, seed: int = 0):
        self.paths, self.views, self.seed, self.size = list(paths), views, seed, pre.image_size
        self.plain, self.augment = eval_view(pre), estimate_view(pre)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        try:
            image = load_rgb(self.paths[index])
        except ImageReadError:
            blank = torch.zeros(3, self.size, self.size)
            return blank, blank.expand(self.views, -1, -1, -1).clone(), index, False
        if not self.views:  # labels only
            return self.plain(image), torch.empty(0, 3, self.size, self.size), index, True
        with seeded(sample_seed(self.seed, index)):
            views = torch.stack([self.augment(image) for _ in range(self.views)])
        return self.plain(image), views, index, True


@dataclass
class ViewPredictions:
    """One model on a set of images: label and confidence on the test view, labels on each augmented view."""

    labels: np.ndarray  # (N,) int, -1 where the image could not be decoded
    confidence: np.ndarray  # (N,) float, top-1 probability on the test view
    view_labels: np.ndarray  # (N, V) int

    def valid(self) -> np.ndarray:
        return self.labels >= 0


def predict_views(models: Mapping[str, MustModel], paths: Sequence[Path], pre: Preprocess, device: torch.device,
                  views: int = AUGMENTED_VIEWS, batch_size: int = 128, workers: int = 0,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  ) -> dict[str, ViewPredictions]:
    """Run every model on the test view and ``views`` augmented views (0: none) of each image, batch by batch."""
    n = len(paths)
    out = {name: ViewPredictions(np.full(n, -1), np.zeros(n, np.float32), np.full((n, views), -1))
           for name in models}
    loader = DataLoader(ViewImages(paths, pre, views), batch_size=batch_size, num_workers=workers)
    for m in models.values():
        m.to(device).eval()
    with torch.inference_mode():
        for plain, augmented, index, ok in loader:
            index = index[ok].numpy()
            if not len(index):
                continue
            batch = torch.cat([plain[ok].unsqueeze(1), augmented[ok]], dim=1).flatten(0, 1).to(device)
            for name, m in models.items():
                with autocast():
                    probs = m(batch).float().softmax(dim=1).reshape(len(index), views + 1, -1).cpu()
                conf, top = probs.max(dim=2)
                out[name].labels[index] = top[:, 0].numpy()
                out[name].confidence[index] = conf[:, 0].numpy()
                out[name].view_labels[index] = top[:, 1:].numpy()
    return out


def agreement(view_labels: np.ndarray) -> np.ndarray:
    """Per image: the share of pairs of augmented views that get the same label (1 = always the same)."""
    pairs = list(itertools.combinations(range(view_labels.shape[1]), 2))
    if not pairs:
        raise ValueError("agreement needs at least two augmented views")
    return np.mean([view_labels[:, i] == view_labels[:, j] for i, j in pairs], axis=0)


@dataclass(frozen=True)
class Estimate:
    """A label-free estimate (a share in 0..1, or a difference of shares) and its bootstrap interval."""

    value: float
    low: float
    high: float
    images: int

    @property
    def margin(self) -> float:
        """Half the interval's width: what "more than its own uncertainty" is measured against."""
        return (self.high - self.low) / 2


def _bootstrap(per_image: np.ndarray, seed: int = 0) -> Estimate:
    """Mean of per-image values with a percentile bootstrap interval over images."""
    n = len(per_image)
    if n == 0:
        raise ValueError("no decodable image to estimate on")
    rng = np.random.default_rng(seed)
    means = per_image[rng.integers(0, n, size=(BOOTSTRAP_DRAWS, n))].mean(axis=1)
    tail = (1 - CONFIDENCE_LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(per_image.mean()), float(low), float(high), n)


def estimate_accuracy(pred: ViewPredictions) -> Estimate:
    """Estimated top-1 accuracy of one model on these images."""
    return _bootstrap(agreement(pred.view_labels[pred.valid()]))


def estimate_gain(adapted: ViewPredictions, zero_shot: ViewPredictions) -> Estimate:
    """Estimated accuracy of ``adapted`` minus that of ``zero_shot``, paired image by image (a tighter interval)."""
    ok = adapted.valid() & zero_shot.valid()
    return _bootstrap(agreement(adapted.view_labels[ok]) - agreement(zero_shot.view_labels[ok]))
