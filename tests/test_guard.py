"""The label-free guard: ship zero-shot when adaptation collapses onto few classes, never otherwise."""

import copy
import math

import torch

from must_cli.guard import guard, guard_sample, label_balance
from must_cli.inference import predict_labels
from must_cli.model import build_must_model

from helpers import CLASSES


def test_label_balance_is_normalised_entropy():
    assert label_balance(torch.tensor([5, 5, 5, 5])) == 1.0
    assert label_balance(torch.tensor([9, 0, 0])) == 0.0
    assert math.isclose(label_balance(torch.tensor([1, 1, 0, 0])), 0.5)


def test_guard_sample_spreads_over_the_pool():
    paths = [f"{i}.jpg" for i in range(5000)]
    sample = guard_sample(paths)
    assert sample == paths[::2] and guard_sample(paths[:10]) == paths[:10]


def guard_inputs(tiny_spec, unlabeled_images):
    model, pre = build_must_model(tiny_spec, None, CLASSES, ["a photo of {}"], torch.device("cpu"))
    paths = sorted(unlabeled_images.iterdir())
    zs_preds = torch.arange(len(paths)) % len(CLASSES)  # zero-shot spread its predictions evenly
    predict = lambda m: predict_labels(m, paths, pre, torch.device("cpu"))  # noqa: E731
    return model, copy.deepcopy(model), zs_preds, predict


def test_guard_keeps_zero_shot_when_the_adapted_model_collapses(tiny_spec, unlabeled_images):
    zero_shot, adapted, zs_preds, predict = guard_inputs(tiny_spec, unlabeled_images)
    with torch.no_grad():  # every class column the same: argmax is always class 0
        adapted.classifier.copy_(adapted.classifier[:, :1].expand_as(adapted.classifier))
    verdict = guard(adapted, zero_shot, zs_preds, predict, min_balance=0.5)
    assert verdict.model is zero_shot and "collapsed (prediction balance 0.00 vs 1.00" in verdict.note


def test_guard_keeps_a_healthy_adapted_model(tiny_spec, unlabeled_images):
    zero_shot, adapted, _, predict = guard_inputs(tiny_spec, unlabeled_images)
    zs_preds = predict(adapted)  # the adapted model predicts exactly as zero-shot did: nothing collapsed
    verdict = guard(adapted, zero_shot, zs_preds, predict, min_balance=0.5)
    assert verdict.model is adapted and verdict.note is None


def test_guard_threshold_comes_from_the_config(tiny_spec, unlabeled_images):
    zero_shot, adapted, zs_preds, predict = guard_inputs(tiny_spec, unlabeled_images)
    balance = label_balance(torch.bincount(predict(adapted), minlength=len(CLASSES)))
    assert 0 < balance < 1
    assert guard(adapted, zero_shot, zs_preds, predict, min_balance=balance * 0.99).model is adapted
    assert guard(adapted, zero_shot, zs_preds, predict, min_balance=min(1.0, balance * 1.01)).model is zero_shot
