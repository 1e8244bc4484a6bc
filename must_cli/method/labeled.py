"""Labeled folders (one sub-folder per class) and accuracy on them.

What `must eval`, the report and adapt's --eval-dir tracking share: matching folder names to
class names, top-1 / per-class recall / confusions, and a labeled set to score models on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from must_cli.base.errors import MustError
from must_cli.files.images import IMAGE_EXTENSIONS, display_name, scan_images
from must_cli.method.inference import predict_labels
from must_cli.method.model import MustModel, Preprocess
from must_cli.base.runtime import Autocast


def normalize_name(name: str) -> str:
    """Folder names match class names ignoring case, '_' vs ' ', and repeated spaces."""
    return " ".join(name.replace("_", " ").lower().split())


def labeled_images(root: Path, classnames: Sequence[str], warn: Callable[[str], None]) -> tuple[list[Path], list[int]]:
    """Images of ``root/<class>/...`` with class indices; any folder that names no class is an error."""
    if not root.is_dir():
        raise MustError(f"{root} is not a folder: pass a folder with one sub-folder per class")
    index = {normalize_name(c): i for i, c in enumerate(classnames)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [display_name(f.name) for f in folders if normalize_name(f.name) not in index]
    if len(unknown) == len(folders):  # nothing here is labeled: say what eval needs, and what it found
        raise MustError(f"{root}: {not_labeled(root, unknown, classnames)}")
    if unknown:
        raise MustError(
            f"{root}: folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} match no class name: "
            "rename them to the names in the class list (case and '_' vs ' ' are ignored)"
        )
    present = {normalize_name(f.name) for f in folders}
    missing = [c for c in classnames if normalize_name(c) not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        warn(f"{root}: no folder for {len(missing)} class(es) ({shown}): their accuracy is not measured")
    found, _ = scan_images(root, warn)
    paths = [p for p in found if len(p.relative_to(root).parts) > 1]
    if not paths:
        raise MustError(f"{root}: no readable image in any class folder")
    return paths, [index[normalize_name(p.relative_to(root).parts[0])] for p in paths]


def not_labeled(root: Path, unknown: list[str], classnames: Sequence[str]) -> str:
    """Why a folder with no class sub-folder cannot be evaluated: the layout eval needs, and what is there."""
    loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    names = ", ".join(classnames[:3]) + (", ..." if len(classnames) > 3 else "")
    shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
    folders = (f"{len(unknown)} sub-folder{'s' if len(unknown) > 1 else ''} ({shown}) that "
               f"name{'' if len(unknown) > 1 else 's'} no class" if unknown else "no sub-folder")
    return (f"eval needs labeled images: one sub-folder per class, named like the classes ({names}); found "
            f"{loose} image(s) directly in it and {folders}: sort a sample into class folders, or label "
            "unlabeled photos with `must predict`")


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Images per (true class, predicted class); undecodable images (pred -1) are left out."""
    valid = preds >= 0
    preds, labels = preds[valid], labels[valid]
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    return confusion


def accuracy_report(preds: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str], top_confusions: int = 5) -> dict:
    """Top-1, mean per-class recall, per-class recall and the most confused (true, predicted) pairs.

    Undecodable images (pred -1) are left out; confusion ties keep class order, so reports are reproducible.
    """
    k = len(classnames)
    confusion = confusion_matrix(preds, labels, k)
    valid = preds >= 0
    preds, labels = preds[valid], labels[valid]
    support = confusion.sum(1)
    recall = confusion.diag().float() / support.clamp_min(1)
    present = support > 0
    off = confusion.clone()
    off.fill_diagonal_(0)
    order = off.flatten().argsort(descending=True, stable=True)
    pairs = [
        {"true": classnames[i], "predicted": classnames[j], "count": int(off[i, j])}
        for i, j in zip(*torch.unravel_index(order[:top_confusions], off.shape))
        if off[i, j] > 0
    ]
    return {
        "images": int(labels.numel()),
        "top1": float((preds == labels).float().mean()) if labels.numel() else 0.0,
        "mean_per_class": float(recall[present].mean()) if present.any() else 0.0,
        "per_class_recall": {classnames[i]: float(recall[i]) for i in range(k) if present[i]},
        "confusions": pairs,
    }


@dataclass(frozen=True)
class LabeledSet:
    """A labeled folder to track accuracy on while adapting (--eval-dir), with how to run inference on it."""

    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    pre: Preprocess
    device: torch.device
    autocast: Autocast
    workers: int

    def accuracy(self, models: dict[str, MustModel]) -> dict[str, dict[str, float]]:
        """Top-1 and mean per-class recall of each named model."""
        labels = torch.tensor(self.labels)
        out = {}
        for name, model in models.items():
            preds = predict_labels(model, self.paths, self.pre, self.device, workers=self.workers,
                                   autocast=self.autocast)
            report = accuracy_report(preds, labels, self.classnames)
            out[name] = {"top1": report["top1"], "mean_per_class": report["mean_per_class"]}
        return out
