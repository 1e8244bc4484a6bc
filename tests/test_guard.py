"""The label-free guard: ship zero-shot when adaptation collapses onto few classes, never otherwise;
and the labels it compares, which verify and the report reuse."""

import math

import torch

from must_cli.base.config import MustConfig
from must_cli.method.guard import guard, guard_sample, label_balance, prediction_balance, sample_labels
from must_cli.method.inference import predict_labels
from must_cli.method.model import build_must_model
from must_cli.files.verify_data import ModelLabels

from helpers import CLASSES

SPREAD = ModelLabels([i % len(CLASSES) for i in range(30)], [0.5] * 30)  # zero-shot spread its labels evenly


def test_label_balance_is_normalised_entropy():
    assert label_balance(torch.tensor([5, 5, 5, 5])) == 1.0
    assert label_balance(torch.tensor([9, 0, 0])) == 0.0
    assert math.isclose(label_balance(torch.tensor([1, 1, 0, 0])), 0.5)


def test_guard_sample_spreads_over_the_pool():
    paths = [f"{i}.jpg" for i in range(5000)]
    sample = guard_sample(paths)
    assert sample == paths[::2] and guard_sample(paths[:10]) == paths[:10]


def test_guard_keeps_zero_shot_when_the_adapted_model_collapses():
    collapsed = ModelLabels([0] * 30, [0.9] * 30)
    note = guard(collapsed, SPREAD, len(CLASSES), min_balance=0.5)
    assert note is not None and "collapsed (prediction balance 0.00 vs 1.00" in note


def test_guard_keeps_a_healthy_adapted_model_and_ignores_undecodable_images():
    same = ModelLabels(SPREAD.labels[:-3] + [-1, -1, -1], SPREAD.confidence)
    assert guard(same, SPREAD, len(CLASSES), min_balance=0.5) is None


def test_guard_threshold_comes_from_the_config():
    skewed = ModelLabels([0] * 20 + [1] * 10, [0.9] * 30)
    balance = label_balance(torch.bincount(torch.tensor(skewed.labels), minlength=len(CLASSES)))
    assert 0 < balance < 1
    assert guard(skewed, SPREAD, len(CLASSES), min_balance=balance * 0.99) is None
    assert guard(skewed, SPREAD, len(CLASSES), min_balance=min(1.0, balance * 1.01)) is not None


def test_by_default_a_small_drop_in_balance_ships_zero_shot_and_says_labels_decide():
    """The preset grid's brake: any measurable drop below zero-shot's balance (docs/presets.md)."""
    min_balance = MustConfig().guard_min_balance
    k, per = len(CLASSES), 100
    zero_shot = ModelLabels([c for c in range(k) for _ in range(per)], [0.9] * (k * per))
    drifted = ModelLabels([0] * (per + 16) + [1] * (per - 16) + [2] * per, [0.9] * (k * per))
    more_balanced = zero_shot  # as balanced as zero-shot: never braked
    drop = 1 - prediction_balance(drifted.labels, k) / prediction_balance(zero_shot.labels, k)
    assert 0 < drop < 0.01  # a drift, far from a collapse
    note = guard(drifted, zero_shot, k, min_balance)
    assert note is not None and "less balanced than zero-shot's" in note and "must verify RUN" in note
    assert "collapsed" not in note
    assert guard(more_balanced, zero_shot, k, min_balance) is None
    slightly = ModelLabels([0] * (per + 2) + [1] * (per - 2) + [2] * per, [0.9] * (k * per))
    assert guard(slightly, zero_shot, k, min_balance) is None  # a drop far under 0.7% is not one


def test_sample_labels_match_predict_labels_and_mark_unreadable_files(tiny_spec, unlabeled_images, tmp_path):
    model, pre = build_must_model(tiny_spec, None, CLASSES, ["a photo of {}"], torch.device("cpu"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths = [*sorted(unlabeled_images.iterdir())[:6], broken]
    got = sample_labels(model, paths, pre, torch.device("cpu"))
    assert got.labels == predict_labels(model, paths, pre, torch.device("cpu")).tolist()
    assert got.labels[-1] == -1 and got.confidence[-1] == 0.0
    assert all(1 / len(CLASSES) <= c <= 1 for c in got.confidence[:-1])
