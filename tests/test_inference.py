"""Batched inference: probabilities per image, and no global state left behind."""

from __future__ import annotations

import torch

from must_cli.method.model_file import load_model, preprocess_of
from must_cli.files.images import scan_images
from must_cli.method.inference import iter_probs


def test_stopping_early_leaves_inference_mode_off(adapted_run, unlabeled_images):
    """A caller that breaks out of the stream (an error mid-predict) must get autograd back."""
    model, meta = load_model(adapted_run)
    paths, _ = scan_images(unlabeled_images, lambda m: None)
    batches = iter_probs(model, paths, preprocess_of(meta), torch.device("cpu"), batch_size=2)
    idx, probs, ok = next(batches)
    assert not torch.is_inference_mode_enabled()
    assert probs.shape == (2, len(meta["classnames"]))
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-5)
    x = torch.ones(2, requires_grad=True)
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]
