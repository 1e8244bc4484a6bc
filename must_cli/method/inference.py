"""Batched class probabilities and labels for a list of images: what adapt (zero-shot check, guard,
--eval-dir), eval and predict all run. Streams through a DataLoader, never holding all images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from must_cli.base.config import INFERENCE_BATCH
from must_cli.method.model import MustModel, Preprocess
from must_cli.base.runtime import Autocast
from must_cli.method.transforms import FolderImages


def iter_probs(
    model: MustModel, paths: Sequence[Path], pre: Preprocess, device: torch.device,
    batch_size: int = INFERENCE_BATCH, workers: int = 0, autocast: Autocast = contextlib.nullcontext,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (indices, class probabilities, decoded-ok flags) batch by batch.

    Inference mode is entered per batch and left before each yield: a generator that held it
    across yields would leave it on in the caller's thread if the caller stopped early.
    """
    loader = DataLoader(
        FolderImages(paths, pre), batch_size=batch_size, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    model = model.to(device).eval()
    for images, indices, ok in loader:
        with torch.inference_mode(), autocast():
            logits = model(images.to(device, non_blocking=True))
        yield indices, logits.float().softmax(dim=1).cpu(), ok


def predict_labels(model: MustModel, paths: Sequence[Path], pre: Preprocess, device: torch.device,
                   batch_size: int = INFERENCE_BATCH, workers: int = 0,
                   autocast: Autocast = contextlib.nullcontext) -> torch.Tensor:
    """Top-1 class per image (-1 where the image could not be decoded); leaves the model's train/eval mode as it was."""
    was_training = model.training
    preds = torch.full((len(paths),), -1, dtype=torch.long)
    for idx, probs, ok in iter_probs(model, paths, pre, device, batch_size, workers, autocast):
        preds[idx[ok]] = probs[ok].argmax(dim=1)
    model.train(was_training)
    return preds
