"""What a run report is computed from: the run folder, its models, and a sample of its images.

A run folder always holds ``metrics.jsonl`` and/or checkpoints, and ``model.safetensors`` once
it finished; ``config.toml``'s [meta] names the image and labeled folders. ``run-record.json``
(written by `must adapt` when the run ends, however it ends) adds the few facts the folder
cannot give back: images used and skipped, the device and the outcome. Both models' labels on
the run's images come from ``predictions-both.json`` (written by adapt); for older runs they are
predicted here once and saved, so `must report` also works for them (pass --images / --eval-dir then).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from must_cli.files.checkpoint import last_trained, load_checkpoint
from must_cli.method.model_file import load_model, preprocess_of, read_metadata
from must_cli.base.config import MustConfig
from must_cli.base.errors import MustError
from must_cli.method.labeled import labeled_images
from must_cli.method.guard import guard_sample, sample_labels
from must_cli.files.images import discover_images
from must_cli.method.model import MustModel, Preprocess, build_must_model
from must_cli.files.record import read_record
from must_cli.files.run_dir import ADAPTED_MODEL_FILE, CHECKPOINTS, MODEL_FILE, RunDir
from must_cli.files.verify_data import BothPredictions, ModelLabels, load_both, save_both
from must_cli.commands.verify.log import read_answers
from must_cli.commands.verify.stats import GainEstimate, estimate_gain

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EVAL_SAMPLE = 10000  # labeled images per model for per-class accuracy and the confusion matrix


@dataclass
class RunFacts:
    """Everything the report and verify read from a run folder without running a model."""

    dir: RunDir
    metrics: list[dict]
    config: dict[str, Any]
    classnames: list[str]
    templates: list[str]
    record: dict[str, Any]  # run-record.json over the inputs config.toml's [meta] names
    meta: dict[str, Any] = field(default_factory=dict)  # the model file's header ({} for a stopped run)
    checkpoint: Path | None = None

    @property
    def root(self) -> Path:
        """The run folder, as pages and messages name it."""
        return self.dir.path

    @property
    def finished(self) -> bool:
        return bool(self.meta)


def recorded_inputs(run: RunDir) -> dict[str, str]:
    """The folders and preset config.toml's [meta] names from the start, so report and verify find them unasked.

    {} for a run without a readable one: its [meta] only documents, and --images/--eval-dir say the same.
    """
    if not run.config_file.is_file():
        return {}
    try:
        inputs = read_record(run.path)
    except MustError:
        return {}
    named = {"images": inputs.images, "eval_dir": inputs.eval_dir, "preset": inputs.preset}
    return {key: str(value) for key, value in named.items() if value is not None}


def read_run(root: Path) -> RunFacts:
    """Read a run folder; a folder that holds no run is a one-line error."""
    run = RunDir(root)
    trained = None if run.finished else last_trained(run)  # a stopped run: its newest checkpoint says what it is
    if not run.finished and trained is None:
        raise MustError(f"{root} is not a run folder (no {MODEL_FILE} and no {CHECKPOINTS}/): "
                        "pass the folder that `must adapt --output` wrote")
    record, metrics = {**recorded_inputs(run), **run.record()}, run.metrics()
    if trained is not None:
        return RunFacts(run, metrics or trained.metrics, trained.config, trained.classnames, trained.templates,
                        record, {}, trained.checkpoint)
    meta = read_metadata(run.model_file)
    config = MustConfig(**tomllib.loads(meta["config"])).model_dump()
    return RunFacts(run, metrics, config, list(meta["classnames"]), list(meta["templates"]), record, meta,
                    run.latest_checkpoint())


def load_models(run: RunFacts, device: torch.device, zero_shot: MustModel | None = None,
                ) -> tuple[MustModel, MustModel, Preprocess, str]:
    """(zero-shot, adapted, preprocessing, which adapted model): the zero-shot one is rebuilt from the source CLIP
    unless the caller still holds it (`must adapt` does: rebuilding costs a text-tower pass over every prompt).

    The adapted model is the shipped one; the one kept beside it when `must verify --choose zero-shot`
    shipped zero-shot; or the newest checkpoint's EMA teacher when the run stopped before shipping or
    the guard shipped zero-shot.
    """
    cfg = run.config

    def build() -> tuple[MustModel, Preprocess]:
        return build_must_model(cfg["model"], cfg["pretrained"], run.classnames, run.templates, device)

    shipped_zero_shot = run.meta.get("chosen", "").startswith("zero-shot")
    if run.dir.adapted_model_file.is_file() and shipped_zero_shot:
        adapted, pre = load_model(run.dir.adapted_model_file)[0], preprocess_of(run.meta)
        which = f"the EMA teacher kept in {ADAPTED_MODEL_FILE} (zero-shot is shipped: chosen after `must verify`)"
    elif run.finished and not (shipped_zero_shot and run.checkpoint):
        adapted, pre = load_model(run.dir.model_file)[0], preprocess_of(run.meta)
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
class Preds:
    """One model on a set of images: top-1 class (-1: undecodable) and its probability, as arrays."""

    labels: np.ndarray
    confidence: np.ndarray

    @classmethod
    def of(cls, m: ModelLabels) -> "Preds":
        return cls(np.asarray(m.labels, dtype=np.int64), np.asarray(m.confidence, dtype=np.float32))

    def valid(self) -> np.ndarray:
        return self.labels >= 0


@dataclass
class Labeled:
    """Both models on a labeled folder: the truth and each model's predictions."""

    folder: Path
    labels: np.ndarray
    zero_shot: Preds
    adapted: Preds


@dataclass
class ReportData:
    """Every number and image list the report draws."""

    run: RunFacts
    which_adapted: str
    images: Path | None
    paths: list[Path]  # the adaptation images both models labeled (all of them, or an even sample)
    found: int  # adaptation images in the folder
    zero_shot: Preds | None
    adapted: Preds | None
    verified: GainEstimate | None = None  # from RUN/verify.csv, once someone verified
    labeled: Labeled | None = None


def both_predictions(run: RunFacts, images: Path, models: Callable[[], tuple], warn: Callable[[str], None],
                     device: torch.device, workers: int) -> BothPredictions:
    """The run's saved labels of both models, or (older runs) predicted here on the guard's sample and saved."""
    both = load_both(run.root, images)
    if both is not None:
        return both
    zero_shot, adapted, pre, which = models()
    found = discover_images(images, warn)
    pool = guard_sample(found)
    both = BothPredictions.of(images, pool, sample_labels(zero_shot, pool, pre, device, workers),
                              sample_labels(adapted, pool, pre, device, workers), len(found))
    if run.finished and "checkpoint" not in which:  # the shipped or kept adapted model: what verify checks too
        save_both(run.root, both)
    return both


def verified_gain(run: Path, both: BothPredictions, warn: Callable[[str], None]) -> GainEstimate | None:
    """The gain `must verify`'s answers give, or None before any; a damaged verify.csv is a warning here."""
    try:
        answers = read_answers(run, both)
    except MustError as e:
        warn(f"{e} (the report leaves the verified gain out)")
        return None
    tally = answers.tally()
    return estimate_gain(tally, len(both.changed()), len(both.predicted()), both.found) if tally.labels else None


def compute(run: RunFacts, images: Path | None, eval_dir: Path | None, device: torch.device,
            workers: int, warn: Callable[[str], None], zero_shot: MustModel | None = None) -> ReportData:
    """Both models' labels on the adaptation images (saved by adapt, else predicted), and on the labeled folder.

    The models are loaded only when something must be predicted.
    """
    loaded: list[tuple] = []

    def models() -> tuple[MustModel, MustModel, Preprocess, str]:
        if not loaded:
            loaded.append(load_models(run, device, zero_shot))
        return loaded[0]

    data = ReportData(run, "", images, [], 0, None, None)
    if images is not None and images.is_dir():
        both = both_predictions(run, images, models, warn, device, workers)
        data.paths, data.found = [both.path(i) for i in range(len(both.paths))], both.found
        data.zero_shot, data.adapted = Preds.of(both.zero_shot), Preds.of(both.adapted)
        data.verified = verified_gain(run.root, both, warn)
    elif images is not None:
        warn(f"{images}: the adaptation images are gone: the report leaves out what needs them")
    if eval_dir is not None:
        paths, labels = labeled_images(eval_dir, run.classnames, warn)
        keep = evenly(list(range(len(paths))), EVAL_SAMPLE)
        zs, ad, pre, _ = models()
        sample = [paths[i] for i in keep]
        data.labeled = Labeled(eval_dir, np.asarray(labels)[keep], Preds.of(sample_labels(zs, sample, pre, device, workers)),
                               Preds.of(sample_labels(ad, sample, pre, device, workers)))
    data.which_adapted = models()[3] if loaded or not run.finished else _which(run)
    return data


def _which(run: RunFacts) -> str:
    """Which weights "adapted" means when adapt saved their labels (see load_models), without loading them."""
    chosen = run.meta.get("chosen", "ema-teacher")
    return "the EMA teacher at the end of training" + ("" if chosen == "ema-teacher" else f" (shipped: {chosen})")
