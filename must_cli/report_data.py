"""What a run report is computed from: the run folder, its models, and a sample of its images.

A run folder always holds ``metrics.jsonl`` and/or checkpoints, and ``model.safetensors`` once
it finished; ``config.toml``'s [meta] names the image and labeled folders. ``run-record.json``
(written by `must adapt` when the run ends, however it ends) adds the few facts the folder
cannot give back: images used and skipped, the device and the outcome. Everything else is
recomputed here, so `must report` also works for older runs (pass --images / --eval-dir then).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from must_cli.checkpoint import MODEL_FILE, atomic_write_text, load_checkpoint, load_model, preprocess_of, read_metadata
from must_cli.config import MustConfig
from must_cli.errors import MustError
from must_cli.estimate import Estimate, ViewPredictions, estimate_accuracy, estimate_gain, predict_views
from must_cli.evaluate import labeled_images
from must_cli.images import discover_images
from must_cli.model import MustModel, Preprocess, build_must_model
from must_cli.runs import METRICS_FILE, list_checkpoints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECORD_FILE = "run-record.json"
IMAGE_SAMPLE = 1000  # adaptation images the report looks at: shares to about +-2.5 points (90%), bounded cost
EVAL_SAMPLE = 10000  # labeled images per model for per-class accuracy and the confusion matrix


@dataclass
class RunFolder:
    """Everything the report reads from a run folder without running a model."""

    root: Path
    metrics: list[dict]
    config: dict[str, Any]
    classnames: list[str]
    templates: list[str]
    record: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)  # the model file's header ({} for a stopped run)
    checkpoint: Path | None = None

    @property
    def finished(self) -> bool:
        return bool(self.meta)


def write_record(run: Path, record: dict[str, Any]) -> None:
    """Store the facts only the running process knows (see the module docstring)."""
    atomic_write_text(run / RECORD_FILE, json.dumps(record, indent=2) + "\n")


def read_run(root: Path) -> RunFolder:
    """Read a run folder; a folder that holds no run is a one-line error."""
    ckpts = list_checkpoints(root / "checkpoints")
    has_model, has_metrics = (root / MODEL_FILE).is_file(), (root / METRICS_FILE).is_file()
    if not root.is_dir() or not (has_model or ckpts):
        raise MustError(f"{root} is not a run folder (no {MODEL_FILE} and no checkpoints/): "
                        "pass the folder that `must adapt --output` wrote")
    record = json.loads((root / RECORD_FILE).read_text()) if (root / RECORD_FILE).is_file() else {}
    if (root / "config.toml").is_file():  # its [meta] table names the run's inputs from the start
        meta = tomllib.loads((root / "config.toml").read_text(encoding="utf-8")).get("meta", {})
        record = {**{k: meta[k] for k in ("images", "eval_dir", "preset") if k in meta}, **record}
    metrics = [json.loads(line) for line in (root / METRICS_FILE).read_text().splitlines() if line.strip()] \
        if has_metrics else []
    if has_model:
        meta = read_metadata(root / MODEL_FILE)
        config = MustConfig(**_toml_config(meta["config"])).model_dump()
        return RunFolder(root, metrics, config, list(meta["classnames"]), list(meta["templates"]), record, meta,
                         ckpts[-1] if ckpts else None)
    ck = load_checkpoint(ckpts[-1])
    return RunFolder(root, metrics or ck["state"]["metrics"], ck["config"], list(ck["fingerprint"]["classes"]),
                     list(ck["fingerprint"]["templates"]), record, {}, ckpts[-1])


def _toml_config(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def load_models(run: RunFolder, device: torch.device, zero_shot: MustModel | None = None,
                ) -> tuple[MustModel, MustModel, Preprocess, str]:
    """(zero-shot, adapted, preprocessing, which adapted model): the zero-shot one is rebuilt from the source CLIP
    unless the caller still holds it (`must adapt` does: rebuilding costs a text-tower pass over every prompt).

    The adapted model is the shipped one, or the newest checkpoint's EMA teacher when the run
    stopped before shipping or the guard shipped zero-shot.
    """
    cfg = run.config

    def build() -> tuple[MustModel, Preprocess]:
        return build_must_model(cfg["model"], cfg["pretrained"], run.classnames, run.templates, device)

    shipped_zero_shot = run.meta.get("chosen", "").startswith("zero-shot")
    if run.finished and not (shipped_zero_shot and run.checkpoint):
        adapted, pre = load_model(run.root / MODEL_FILE)[0], preprocess_of(run.meta)
        which = "the shipped model (zero-shot: kept by the guard)" if shipped_zero_shot else "the shipped EMA teacher"
    else:
        adapted, pre = build()
        adapted.load_state_dict(load_checkpoint(run.checkpoint)["teacher"])
        which = f"the EMA teacher of {run.checkpoint.name}"
    if zero_shot is None:
        zero_shot = build()[0]
    return zero_shot.eval(), adapted.eval(), pre, which


def evenly(items: list, n: int) -> list:
    """At most ``n`` items spread evenly over the list (deterministic, keeps folder order)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


@dataclass
class Labeled:
    """Both models on a labeled folder: the truth and each model's predictions (and estimates)."""

    folder: Path
    labels: np.ndarray
    zero_shot: ViewPredictions
    adapted: ViewPredictions


@dataclass
class ReportData:
    """Every number and image list the report draws."""

    run: RunFolder
    which_adapted: str
    images: Path | None
    paths: list[Path]  # the sampled adaptation images
    found: int  # adaptation images found (before sampling)
    zero_shot: ViewPredictions | None
    adapted: ViewPredictions | None
    estimates: dict[str, Estimate] = field(default_factory=dict)
    labeled: Labeled | None = None
    seconds: float = 0.0


def compute(run: RunFolder, images: Path | None, eval_dir: Path | None, device: torch.device,
            workers: int, warn: Callable[[str], None], zero_shot: MustModel | None = None) -> ReportData:
    """Run the zero-shot and adapted models on a sample of the adaptation images (and the labeled folder).

    Only the adaptation images get augmented views (for the estimate); the labeled folder needs labels only.
    """
    zero_shot, adapted, pre, which = load_models(run, device, zero_shot)
    models = {"zero_shot": zero_shot, "adapted": adapted}
    data = ReportData(run, which, images, [], 0, None, None)
    if images is not None and images.is_dir():
        found = discover_images(images, warn)
        data.paths, data.found = evenly(found, IMAGE_SAMPLE), len(found)
        preds = predict_views(models, data.paths, pre, device, workers=workers)
        data.zero_shot, data.adapted = preds["zero_shot"], preds["adapted"]
        data.estimates = {"zero_shot": estimate_accuracy(data.zero_shot), "adapted": estimate_accuracy(data.adapted),
                          "gain": estimate_gain(data.adapted, data.zero_shot)}
    elif images is not None:
        warn(f"{images}: the adaptation images are gone: the report leaves out what needs them")
    if eval_dir is not None:
        paths, labels = labeled_images(eval_dir, run.classnames, warn)
        keep = evenly(list(range(len(paths))), EVAL_SAMPLE)
        preds = predict_views(models, [paths[i] for i in keep], pre, device, views=0, workers=workers)
        data.labeled = Labeled(eval_dir, np.asarray(labels)[keep], preds["zero_shot"], preds["adapted"])
    return data
