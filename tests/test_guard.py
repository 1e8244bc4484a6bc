"""The label-free guard: ship zero-shot when adaptation collapses onto few classes, never otherwise."""

import copy
import math

import torch

from must_cli.adapt import _guard, label_balance
from must_cli.evaluate import predict_labels
from must_cli.model import build_must_model
from must_cli.progress import SilentReporter

from conftest import CLASSES


def test_label_balance_is_normalised_entropy():
    assert label_balance(torch.tensor([5, 5, 5, 5])) == 1.0
    assert label_balance(torch.tensor([9, 0, 0])) == 0.0
    assert math.isclose(label_balance(torch.tensor([1, 1, 0, 0])), 0.5)


def guard_inputs(tiny_spec, unlabeled_images):
    model, pre = build_must_model(tiny_spec, None, CLASSES, ["a photo of {}"], torch.device("cpu"))
    paths = sorted(unlabeled_images.iterdir())
    zs_preds = torch.arange(len(paths)) % len(CLASSES)  # zero-shot spread its predictions evenly
    return model, copy.deepcopy(model), zs_preds, paths, pre


def test_guard_keeps_zero_shot_when_the_adapted_model_collapses(tiny_spec, unlabeled_images):
    zero_shot, adapted, zs_preds, paths, pre = guard_inputs(tiny_spec, unlabeled_images)
    with torch.no_grad():  # every class column the same: argmax is always class 0
        adapted.classifier.copy_(adapted.classifier[:, :1].expand_as(adapted.classifier))
    chosen, note = _guard(adapted, zero_shot, zs_preds, paths, pre, torch.device("cpu"), lambda: torch.no_grad(), 0,
                          SilentReporter())
    assert chosen is zero_shot and "collapsed" in note


def test_guard_keeps_a_healthy_adapted_model(tiny_spec, unlabeled_images):
    zero_shot, adapted, zs_preds, paths, pre = guard_inputs(tiny_spec, unlabeled_images)
    preds = predict_labels(adapted, paths, pre, torch.device("cpu"))
    zs_preds = preds.clone()  # the adapted model predicts exactly as zero-shot did: nothing collapsed
    chosen, note = _guard(adapted, zero_shot, zs_preds, paths, pre, torch.device("cpu"), lambda: torch.no_grad(), 0,
                          SilentReporter())
    assert chosen is adapted and note is None
