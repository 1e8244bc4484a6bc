"""The label-free accuracy estimate: exact on constructed predictions, right about a right and a guessing model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import CLASSES
from must_cli.estimate import ViewPredictions, agreement, estimate_accuracy, estimate_gain, predict_views
from must_cli.images import discover_images
from must_cli.model import Preprocess

PRE = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class ColourModel(nn.Module):
    """Right on the colour images: the class is the brightest channel, which no crop or flip changes."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 20 * images.mean(dim=(2, 3))


class PixelModel(nn.Module):
    """Guesses from three single pixels near a corner, which a crop or a flip moves: right about 1 time in 3."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 20 * images[:, 0, :3, 1] - 20 * images[:, 1:, 0, 0].mean(1, keepdim=True)


def views(labels: list[list[int]]) -> ViewPredictions:
    v = np.array(labels)
    return ViewPredictions(v[:, 0].copy(), np.ones(len(v), np.float32), v)


def test_agreement_counts_pairs_of_views():
    v = np.array([[0, 0, 0], [0, 0, 1], [2, 1, 0]])
    assert agreement(v).tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    with pytest.raises(ValueError):
        agreement(v[:, :1])


def test_estimate_and_interval_on_constructed_predictions():
    stable = views([[1, 1]] * 75 + [[1, 2]] * 25)
    est = estimate_accuracy(stable)
    assert est.value == pytest.approx(0.75)
    assert est.low < 0.75 < est.high
    assert est.margin == pytest.approx(1.645 * np.sqrt(0.75 * 0.25 / 100), rel=0.25)  # binomial 90% half-width
    unstable = views([[1, 1]] * 40 + [[1, 2]] * 60)
    gain = estimate_gain(stable, unstable)
    assert gain.value == pytest.approx(0.35)
    assert gain.low > 0.2
    assert estimate_gain(unstable, stable).high < -0.2


def test_a_right_model_and_a_guessing_model_are_told_apart(labeled_images):
    paths = discover_images(labeled_images)
    truth = np.array([CLASSES.index(p.parent.name) for p in paths])
    preds = predict_views({"right": ColourModel(), "guess": PixelModel()}, paths, PRE, torch.device("cpu"), views=4)
    right, guess = preds["right"], preds["guess"]
    assert (right.labels == truth).mean() == 1.0  # the constructed models are what they claim
    assert (guess.labels == truth).mean() < 0.6
    assert estimate_accuracy(right).value > 0.95
    assert estimate_accuracy(guess).value < 0.75
    assert estimate_gain(right, guess).low > 0.1  # "adapting" from guess to right: the estimate sees the gain
    assert estimate_gain(guess, right).high < -0.1
