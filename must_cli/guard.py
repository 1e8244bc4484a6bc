"""The label-free safety net: if self-training collapsed onto a few classes, ship zero-shot instead.

No labels are needed: a collapsed model predicts far fewer classes than zero-shot CLIP did on
the same images, which shows as a drop in the entropy of its prediction histogram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from must_cli.model import MustModel

GUARD_SAMPLE = 2000  # pool images the guard looks at: enough for a stable histogram, cheap to predict


def label_balance(hist: torch.Tensor) -> float:
    """Normalised entropy of a class histogram: 1 when every class is predicted equally, 0 for one class."""
    p = hist.float() / hist.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy / math.log(len(hist))) + 0.0  # + 0.0 turns -0.0 (nothing kept) into 0.0


def guard_sample(paths: Sequence[Path]) -> list[Path]:
    """An evenly spread subset of the pool, the same before and after training."""
    return list(paths[:: max(1, len(paths) // GUARD_SAMPLE)])


def prediction_balance(preds: torch.Tensor, num_classes: int) -> float:
    """label_balance of top-1 predictions, leaving out undecodable images (-1)."""
    return label_balance(torch.bincount(preds[preds >= 0], minlength=num_classes))


@dataclass(frozen=True)
class GuardVerdict:
    """Which model to ship, and why (``note`` is None when the adapted model is kept)."""

    model: MustModel
    note: str | None


def guard(adapted: MustModel, zero_shot: MustModel, zero_shot_preds: torch.Tensor,
          predict: Callable[[MustModel], torch.Tensor], min_balance: float) -> GuardVerdict:
    """Keep ``zero_shot`` when the adapted model's prediction balance fell below ``min_balance`` x zero-shot's.

    ``predict(model)`` gives top-1 labels on the same images ``zero_shot_preds`` came from.
    """
    k = adapted.num_classes
    before = prediction_balance(zero_shot_preds, k)
    after = prediction_balance(predict(adapted), k)
    if after < min_balance * before:
        return GuardVerdict(zero_shot, f"adapted model collapsed (prediction balance {after:.2f} vs {before:.2f} "
                                       "zero-shot): kept the zero-shot model; try a lower --lr or a preset with a "
                                       "lower threshold")
    return GuardVerdict(adapted, None)
