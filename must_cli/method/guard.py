"""The label-free safety net, and both models' labels on the run's images.

The fairness term pulls the model's predictions towards the class prior, so an adapted model whose
predictions are *less* balanced than zero-shot CLIP's on the same images has drifted against it:
pseudo-labels feeding on their own errors for a few classes, up to a collapse onto few classes.
On the preset grid (docs/presets.md, validation files of three stand-ins) 10 of the 11 runs that
lost more than a point showed such a drop (to 0.992 or below), and shipping zero-shot whenever
balance fell below 0.993 of zero-shot's (midway between the chosen preset's closest losing and
gaining in-domain runs, 0.990 and 0.996) cut its worst cell from -3.3 to -0.5 points while
raising its mean. Then zero-shot is shipped instead, and the adapted model stays in the run's
last checkpoint, so labels can overrule this (`must verify RUN`, then `--choose adapted`).
It errs towards zero-shot: on test files it caught every losing cell but one (a model scored on
the distribution it was trained on with labels, which drifts evenly), and on pools of 4,000 and
10,000 images it also brakes the stand-in's gaining runs (docs/benchmarks.md, issue 19).
The labels the guard compares are saved (verify_data.save_both), since they also give the set of
images whose label changed, which `must verify` and the report need.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import torch

from must_cli.base.config import INFERENCE_BATCH
from must_cli.method.inference import iter_probs
from must_cli.method.model import MustModel, Preprocess
from must_cli.method.priors import label_balance
from must_cli.base.runtime import Autocast
from must_cli.files.verify_data import ModelLabels

GUARD_SAMPLE = 2000  # pool images the guard looks at: enough for a stable histogram, cheap to predict


def guard_sample(paths: Sequence[Path]) -> list[Path]:
    """An evenly spread subset of the pool, the same before and after training."""
    return list(paths[:: max(1, len(paths) // GUARD_SAMPLE)])


def sample_labels(model: MustModel, paths: Sequence[Path], pre: Preprocess, device: torch.device,
                  workers: int = 0, autocast: Autocast = contextlib.nullcontext,
                  batch_size: int = INFERENCE_BATCH) -> ModelLabels:
    """Top-1 class (-1: undecodable) and its probability per image; leaves the model's train/eval mode as it was."""
    was_training = model.training
    labels, confidence = [-1] * len(paths), [0.0] * len(paths)
    for idx, probs, ok in iter_probs(model, paths, pre, device, batch_size, workers, autocast):
        conf, top = probs.max(dim=1)
        for i, good, c, t in zip(idx.tolist(), ok.tolist(), conf.tolist(), top.tolist()):
            if good:
                labels[i], confidence[i] = t, round(c, 4)
    model.train(was_training)
    return ModelLabels(labels, confidence)


def prediction_balance(labels: Sequence[int], num_classes: int, prior: torch.Tensor | None = None) -> float:
    """label_balance (against the class prior) of top-1 predictions, leaving out undecodable images (-1)."""
    preds = torch.as_tensor(list(labels), dtype=torch.long)
    return label_balance(torch.bincount(preds[preds >= 0], minlength=num_classes), prior)


def guard(adapted: ModelLabels, zero_shot: ModelLabels, num_classes: int, min_balance: float,
          prior: torch.Tensor | None = None) -> str | None:
    """Why zero-shot must be shipped (the adapted model's prediction balance fell below ``min_balance`` x
    zero-shot's on the same images), or None to ship the adapted model."""
    before = prediction_balance(zero_shot.labels, num_classes, prior)
    after = prediction_balance(adapted.labels, num_classes, prior)
    if after >= min_balance * before:
        return None
    if after < 0.5 * before:
        return (f"adapted model collapsed (prediction balance {after:.2f} vs {before:.2f} zero-shot): kept the "
                "zero-shot model; try a lower --lr or a preset with a lower threshold")
    return (f"adapted model's predictions grew less balanced than zero-shot's ({after:.3f} vs {before:.3f}), "
            "which came with accuracy losses in our tests: kept the zero-shot model; labels decide: "
            "`must verify RUN`, then `--choose adapted` if it helped")
