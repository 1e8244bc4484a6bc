"""The label-free safety net: if self-training collapsed onto a few classes, ship zero-shot instead.

No labels are needed: a collapsed model predicts far fewer classes than zero-shot CLIP did on
the same images, which shows as a drop in the entropy of its prediction histogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from must_cli.model import MustModel
from must_cli.priors import label_balance

GUARD_SAMPLE = 2000  # pool images the guard looks at: enough for a stable histogram, cheap to predict


def guard_sample(paths: Sequence[Path]) -> list[Path]:
    """An evenly spread subset of the pool, the same before and after training."""
    return list(paths[:: max(1, len(paths) // GUARD_SAMPLE)])


def prediction_balance(preds: torch.Tensor, num_classes: int, prior: torch.Tensor | None = None) -> float:
    """label_balance (against the class prior) of top-1 predictions, leaving out undecodable images (-1)."""
    return label_balance(torch.bincount(preds[preds >= 0], minlength=num_classes), prior)


@dataclass(frozen=True)
class GuardVerdict:
    """Which model to ship, and why (``note`` is None when the adapted model is kept)."""

    model: MustModel
    note: str | None


def guard(adapted: MustModel, zero_shot: MustModel, zero_shot_preds: torch.Tensor,
          predict: Callable[[MustModel], torch.Tensor], min_balance: float,
          prior: torch.Tensor | None = None) -> GuardVerdict:
    """Keep ``zero_shot`` when the adapted model's prediction balance fell below ``min_balance`` x zero-shot's.

    ``predict(model)`` gives top-1 labels on the same images ``zero_shot_preds`` came from.
    """
    k = adapted.num_classes
    before = prediction_balance(zero_shot_preds, k, prior)
    after = prediction_balance(predict(adapted), k, prior)
    if after < min_balance * before:
        return GuardVerdict(zero_shot, f"adapted model collapsed (prediction balance {after:.2f} vs {before:.2f} "
                                       "zero-shot): kept the zero-shot model; try a lower --lr or a preset with a "
                                       "lower threshold")
    return GuardVerdict(adapted, None)
