"""`must predict`: label a folder of images with an adapted (or, to compare, a zero-shot) model.

Images stream through a DataLoader; only one small row per image (path + top-k) is kept,
so 100k-image folders fit in memory. Predictions can be written to CSV/JSONL (atomically,
but row by row) and images copied or linked into one folder per class.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import torch

from must_cli.files.atomic import atomic_write
from must_cli.method.model_file import load_model, preprocess_of
from must_cli.files.classnames import read_class_file
from must_cli.base.config import PIXEL_CEILING
from must_cli.base.errors import MustError
from must_cli.files.images import DEFAULT_MAX_PIXELS, ImageReadError, display_name, load_rgb, scan_images
from must_cli.method.inference import iter_probs
from must_cli.method.model import MustModel, Preprocess, build_zero_shot
from must_cli.commands.model_request import ModelRequest
from must_cli.files.runs import model_path
from must_cli.base.runtime import autocast_for, default_workers, pick_device
from must_cli.commands.sorting import Sorter

OUTPUT_FORMATS = (".csv", ".jsonl")


@dataclass(frozen=True)
class PredictRequest(ModelRequest):
    """Everything `must predict` was asked to do; validated by run_predict before any work."""

    output: Path | None = None
    top_k: int = 1
    sort_into: Path | None = None
    link: str | None = None  # None: copy; "hard" or "sym"
    min_confidence: float | None = None
    max_pixels: int | None = None  # None: MustConfig's default


@dataclass
class Prediction:
    """One image's row: its path relative to IMAGES and its top-k labels, most likely first."""

    path: str
    labels: list[str]
    probabilities: list[float]


@dataclass
class PredictResult:
    """What the CLI prints: the rows plus everything the summary line needs."""

    predictions: list[Prediction]
    top_k: int
    skipped: int  # unreadable at scan time
    failed: int  # passed the scan but failed to decode
    seconds: float
    device: str
    output: Path | None = None
    sort_into: Path | None = None
    sorted_counts: dict[str, int] = field(default_factory=dict)  # images per class folder, placed or already there
    already_sorted: int = 0  # of those, identical copies already in place (a rerun): skipped
    renamed: dict[str, str] = field(default_factory=dict)  # class name -> folder, where they differ
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return len(self.predictions) / max(self.seconds, 1e-9)


def output_format(path: Path | None) -> str | None:
    """'.csv' or '.jsonl' from the file name; checked before the model loads so a typo costs nothing."""
    if path is None:
        return None
    fmt = path.suffix.lower()
    if fmt not in OUTPUT_FORMATS:
        raise MustError(f"--output {display_name(path)}: unknown format {fmt or '(no extension)'!r}: use a .csv or .jsonl file name")
    if path.is_dir():
        raise MustError(f"--output {display_name(path)} is a folder: pass a file name ending in .csv or .jsonl")
    return fmt


def _row_writer(f: TextIO, fmt: str, k: int) -> Callable[[Prediction], None]:
    if fmt == ".csv":
        writer = csv.writer(f)
        writer.writerow(["path", *(f"{col}_{i}" for i in range(1, k + 1) for col in ("label", "probability"))])
        return lambda p: writer.writerow(
            [p.path, *(v for pair in zip(p.labels, (f"{q:.6f}" for q in p.probabilities)) for v in pair)]
        )
    return lambda p: f.write(json.dumps(
        {"path": p.path, "labels": p.labels, "probabilities": [round(q, 6) for q in p.probabilities]},
        ensure_ascii=False) + "\n")


def _validate(req: PredictRequest) -> None:
    if req.batch_size < 1:
        raise MustError(f"--batch-size {req.batch_size}: must be at least 1")
    if req.top_k < 1:
        raise MustError(f"--top-k {req.top_k}: must be at least 1")
    if req.link not in (None, "hard", "sym"):
        raise MustError(f"--link {req.link}: use hard or sym (or leave it out to copy)")
    if req.min_confidence is not None and not 0.0 <= req.min_confidence <= 1.0:
        raise MustError(f"--min-confidence {req.min_confidence}: must be a probability between 0 and 1")
    if (req.link or req.min_confidence is not None) and req.sort_into is None:
        raise MustError("--link and --min-confidence only apply with --sort-into DIR")
    req.check_zero_shot_options()
    if req.sort_into is not None and req.sort_into.resolve() == req.images.resolve():
        raise MustError(f"--sort-into {display_name(req.sort_into)} is the image folder itself: "
                        "pick a new folder (a sub-folder is fine: it is left out of the scan)")
    if req.max_pixels is not None and not 1 <= req.max_pixels <= PIXEL_CEILING:
        raise MustError(f"--max-pixels {req.max_pixels}: must be between 1 and {PIXEL_CEILING:,}")


def _load(req: PredictRequest, device: torch.device) -> tuple[MustModel, list[str], Preprocess]:
    """The adapted model from its file alone, or plain CLIP with a text-built head for --zero-shot."""
    if req.zero_shot:
        classnames = read_class_file(req.classes)
        model, pre = build_zero_shot(req.model, req.pretrained, classnames, req.templates, device)
        return model, classnames, pre
    model, meta = load_model(model_path(req.model))
    return model, list(meta["classnames"]), preprocess_of(meta)


Progress = Callable[[int, int], None]  # (images done, images in all), after each batch


@dataclass
class _Job:
    """What run_predict works from once the request is checked: the model, the images, and the rows so far."""

    model: MustModel
    classnames: list[str]
    pre: Preprocess
    device: torch.device
    k: int  # top-k, at most the number of classes
    paths: list[Path]
    skipped: int  # unreadable at scan time
    sorter: Sorter | None
    notes: list[str]
    predictions: list[Prediction] = field(default_factory=list)
    failed: int = 0  # passed the scan but failed to decode


def _prepare(req: PredictRequest, warn: Callable[[str], None]) -> _Job:
    """Check the request, load the model and scan the folder: everything before the first image is classified."""
    _validate(req)
    device = pick_device(req.device)
    model, classnames, pre = _load(req, device)
    k = min(req.top_k, len(classnames))
    notes = [f"--top-k {req.top_k} lowered to {k}, the number of classes"] if k < req.top_k else []
    paths, skipped = scan_images(req.images, warn, req.max_pixels or DEFAULT_MAX_PIXELS, exclude=req.sort_into)
    if req.sort_into and req.sort_into.resolve().is_relative_to(req.images.resolve()):
        notes.append(f"--sort-into {display_name(req.sort_into)} is inside {display_name(req.images)}: "
                     "left out of the scan, so its copies are never sorted again")
    sorter = Sorter(req.sort_into, classnames, req.link, req.min_confidence) if req.sort_into else None
    return _Job(model, classnames, pre, device, k, paths, len(skipped), sorter, notes)


def _classify(job: _Job, req: PredictRequest, warn: Callable[[str], None], progress: Progress | None,
              write: Callable[[Prediction], None] | None) -> None:
    """Stream the images through the model; each row goes to ``write`` and the sorter as soon as it is known."""
    batches = iter_probs(job.model, job.paths, job.pre, job.device, batch_size=req.batch_size,
                         workers=default_workers(req.workers), autocast=autocast_for(job.device, "auto"))
    done = 0
    for indices, probs, ok in batches:
        top_p, top_i = probs.topk(job.k, dim=1)
        for j, index in enumerate(indices.tolist()):
            path = job.paths[index]
            if not ok[j]:
                job.failed += 1
                warn(f"skipping {display_name(path)}: {_decode_error(path)}")
                continue
            row = Prediction(display_name(path.relative_to(req.images).as_posix()),
                             [job.classnames[c] for c in top_i[j].tolist()], top_p[j].tolist())
            job.predictions.append(row)
            if write:
                write(row)
            if job.sorter:
                job.sorter.place(path, int(top_i[j, 0]), row.probabilities[0])
        done += len(indices)
        if progress:
            progress(done, len(job.paths))


def run_predict(req: PredictRequest, warn: Callable[[str], None], progress: Progress | None = None) -> PredictResult:
    """Classify every image under ``req.images``; write/sort as asked; return the rows and a summary."""
    fmt = output_format(req.output)
    job = _prepare(req, warn)

    def to_file(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            _classify(job, req, warn, progress, _row_writer(f, fmt, job.k))

    start = time.perf_counter()
    if req.output is not None:
        atomic_write(req.output, to_file)
    else:
        _classify(job, req, warn, progress, None)
    sorter = job.sorter
    return PredictResult(
        predictions=job.predictions, top_k=job.k, skipped=job.skipped, failed=job.failed,
        seconds=time.perf_counter() - start, device=str(job.device), output=req.output, sort_into=req.sort_into,
        sorted_counts=dict(sorter.counts) if sorter else {}, already_sorted=sorter.already_there if sorter else 0,
        renamed=sorter.renamed if sorter else {},
        notes=job.notes + (sorter.notes if sorter else []),
    )


def _decode_error(path: Path) -> str:
    """Why a file that passed the header scan failed to decode (re-read once: only bad files pay)."""
    try:
        load_rgb(path)
    except ImageReadError as e:
        return e.reason
    return "could not be decoded"
