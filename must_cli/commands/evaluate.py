"""`must eval`: one model (an adapted run or zero-shot CLIP) scored on a folder-per-class layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from must_cli.method.model_file import load_model, preprocess_of, read_metadata
from must_cli.files.classnames import read_class_file
from must_cli.base.config import MustConfig
from must_cli.method.inference import predict_labels
from must_cli.method.labeled import accuracy_report, labeled_images
from must_cli.method.model import MustModel, Preprocess, build_zero_shot
from must_cli.commands.model_request import ModelRequest
from must_cli.files.runs import model_path
from must_cli.base.runtime import autocast_for, default_workers, pick_device


@dataclass(frozen=True)
class EvalRequest(ModelRequest):
    """What `must eval` measures: an adapted model file, or plain CLIP built from a spec and class names."""


def eval_classnames(req: EvalRequest) -> list[str]:
    """Class names from --classes (zero-shot) or the model file's header: cheap, so a bad folder fails fast."""
    req.check_zero_shot_options()
    if req.zero_shot:
        return read_class_file(req.classes)
    return list(read_metadata(model_path(req.model))["classnames"])


def load_for_eval(req: EvalRequest, classnames: list[str], device: torch.device) -> tuple[MustModel, Preprocess, str]:
    """(model, preprocessing, a description of the model) for either kind of request."""
    if req.zero_shot:
        model, pre = build_zero_shot(req.model, req.pretrained, classnames, req.templates, device)
        spec, tag = req.model or MustConfig.default("model"), req.pretrained or MustConfig.default("pretrained")
        local = spec.startswith(("local-dir:", "hf-hub:"))
        return model, pre, f"zero-shot {spec}" + ("" if local else f" ({tag})")
    path = model_path(req.model)
    model, meta = load_model(path)
    return model, preprocess_of(meta), str(path)


def run_eval(req: EvalRequest, warn: Callable[[str], None]) -> dict:
    """Accuracy report of one model on ``images/<class>/...``, plus what was evaluated (JSON-ready)."""
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
