"""Batched inference over a folder and accuracy against a folder-per-class layout (`must eval`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from must_cli.checkpoint import load_model, preprocess_of, read_metadata
from must_cli.classnames import read_class_file
from must_cli.config import MustConfig
from must_cli.errors import MustError
from must_cli.images import display_name, scan_images
from must_cli.model import MustModel, Preprocess, build_zero_shot
from must_cli.views import FolderImages


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
    if unknown:
        raise MustError(
            f"{root}: folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} match no class name: "
            "rename them to the names in the class list (case and '_' vs ' ' are ignored)"
        )
    if not folders:
        raise MustError(f"{root}: no class folders: put each class's images in a sub-folder named after the class")
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


def iter_probs(
    model: MustModel, paths: Sequence[Path], pre: Preprocess, device: torch.device, batch_size: int = 256,
    workers: int = 0, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (indices, class probabilities, decoded-ok flags) batch by batch, never holding all images."""
    loader = DataLoader(
        FolderImages(paths, pre), batch_size=batch_size, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    model = model.to(device).eval()
    with torch.inference_mode():
        for images, indices, ok in loader:
            with autocast():
                logits = model(images.to(device, non_blocking=True))
            yield indices, logits.float().softmax(dim=1).cpu(), ok


def predict_labels(model: MustModel, paths: Sequence[Path], pre: Preprocess, device: torch.device, **kw) -> torch.Tensor:
    """Top-1 class per image (-1 where the image could not be decoded)."""
    preds = torch.full((len(paths),), -1, dtype=torch.long)
    for idx, probs, ok in iter_probs(model, paths, pre, device, **kw):
        preds[idx[ok]] = probs[ok].argmax(dim=1)
    return preds


def accuracy_report(preds: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str], top_confusions: int = 5) -> dict:
    """Top-1, mean per-class recall, per-class recall and the most confused (true, predicted) pairs.

    Undecodable images (pred -1) are left out; confusion ties keep class order, so reports are reproducible.
    """
    k = len(classnames)
    valid = preds >= 0
    preds, labels = preds[valid], labels[valid]
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
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


@dataclass
class EvalRequest:
    """What `must eval` measures: an adapted model file, or plain CLIP built from a spec and class names."""

    images: Path
    model: str | None = None  # run folder / .safetensors (default runs/latest); with zero_shot an open_clip spec
    zero_shot: bool = False
    classes: Path | None = None
    pretrained: str | None = None
    templates: Path | None = None
    batch_size: int = 256
    workers: int = -1
    device: str = "auto"


def eval_classnames(req: EvalRequest) -> list[str]:
    """Class names from --classes (zero-shot) or the model file's header: cheap, so a bad folder fails fast."""
    if req.zero_shot:
        if req.classes is None:
            raise MustError("--zero-shot needs --classes FILE (one class name per line)")
        return read_class_file(req.classes)
    if req.classes or req.templates or req.pretrained:
        raise MustError("--classes, --templates and --pretrained only apply with --zero-shot: "
                        "an adapted model carries its own class names")
    return list(read_metadata(Path(req.model or "runs/latest"))["classnames"])


def load_for_eval(req: EvalRequest, classnames: list[str], device: torch.device) -> tuple[MustModel, Preprocess, str]:
    """(model, preprocessing, a description of the model) for either kind of request."""
    if req.zero_shot:
        model, pre = build_zero_shot(req.model, req.pretrained, classnames, req.templates, device)
        defaults = MustConfig()
        spec, tag = req.model or defaults.model, req.pretrained or defaults.pretrained
        local = spec.startswith(("local-dir:", "hf-hub:"))
        return model, pre, f"zero-shot {spec}" + ("" if local else f" ({tag})")
    path = Path(req.model or "runs/latest")
    model, meta = load_model(path)
    return model, preprocess_of(meta), str(path)


def run_eval(req: EvalRequest, warn: Callable[[str], None]) -> dict:
    """Accuracy report of one model on ``images/<class>/...``, plus what was evaluated (JSON-ready)."""
    from must_cli.adapt import autocast_for, default_workers, pick_device  # adapt imports this module

    device = pick_device(req.device)
    classnames = eval_classnames(req)
    paths, labels = labeled_images(req.images, classnames, warn)
    model, pre, described = load_for_eval(req, classnames, device)
    preds = predict_labels(model, paths, pre, device, batch_size=req.batch_size,
                           workers=default_workers(req.workers), autocast=autocast_for(device, "auto"))
    report = accuracy_report(preds, torch.tensor(labels), classnames)
    unreadable = int((preds < 0).sum())
    if unreadable:
        warn(f"{unreadable} image(s) could not be decoded and were left out")
    return {"model": described, "images_dir": str(req.images), "classes": classnames,
            "unreadable": unreadable, **report}
