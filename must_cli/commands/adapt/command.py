"""`must adapt`: from a folder of unlabeled images and class names to a shipped, adapted classifier.

Reads the inputs, decides the device, processes and starting model, opens the run folder, then hands over
to train.py (loader, Trainer, guard, model.safetensors). The run folder lives in runs.py, the loop
in trainer.py, the method in engine.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from must_cli.files.atomic import atomic_write_text
from must_cli.files.classnames import read_class_file, resolve_templates
from must_cli.base.config import MustConfig
from must_cli.base.distributed import Dist, decide_once, init_distributed
from must_cli.method.labeled import labeled_images
from must_cli.files.images import scan_images
from must_cli.method.model import MustModel, Preprocess, build_must_model
from must_cli.base.progress import Reporter, SilentReporter
from must_cli.commands.adapt.train import AdaptResult, Setup, train_and_ship
from must_cli.files.record import RunInputs, absolute_model, record_text
from must_cli.files.run_dir import CONFIG_FILE, PREDICTIONS_FILE
from must_cli.files.runs import RunFolder, plan_run
from must_cli.base.runtime import pick_device
from must_cli.method.warmstart import load_warm_start


@dataclass
class AdaptRequest:
    """The inputs of one run besides hyperparameters, and where it writes."""

    inputs: RunInputs
    output: Path | None = None
    resume: bool = False  # continue a stopped run instead of starting one
    resume_from: Path | None = None  # with resume: a run folder or checkpoint file (default: the output's newest)
    overwrite: bool = False  # a fresh run may replace a finished or stopped run in the output folder
    tensorboard: Path | None = None  # also write each epoch's scalars here as TensorBoard events
    init_from: Path | None = None  # warm start from this adapted run (image tower, [MSK], decoder)
    predict: bool = False  # also write RUN/predictions.csv for the adapted images, as `must predict` does


def run_adapt(req: AdaptRequest, cfg: MustConfig, reporter: Reporter | None = None) -> AdaptResult:
    """Adapt CLIP to the images with MUST and write model.safetensors into the run folder.

    The folder is created (and locked) only once the model has loaded, so a bad model spec
    or a missing network leaves nothing behind.
    """
    inputs = req.inputs
    classnames = read_class_file(inputs.classes)
    templates = resolve_templates(inputs.templates, cfg.template_set)
    cfg = cfg.model_copy(update={"model": absolute_model(cfg.model)})
    device, dist, reporter = processes(cfg, reporter)
    warn_once = reporter.warn if dist.is_main else (lambda message: None)  # input warnings: not once per process
    paths, skipped = scan_images(inputs.images, warn_once, cfg.max_pixels)
    labeled = labeled_images(inputs.eval_dir, classnames, warn_once) if inputs.eval_dir else None
    plan = decide_once(dist.is_main, lambda: plan_run(req.output, req.resume, req.resume_from, req.overwrite,
                                                      epochs=cfg.epochs))
    torch.manual_seed(cfg.seed)  # [MSK], ln_patch and decoder initialisation
    model, preprocess, cfg = starting_model(req.init_from, cfg, classnames, templates, device, reporter)
    setup = Setup(cfg, inputs.images, classnames, templates, paths, len(skipped), labeled, device, dist, reporter,
                  model, preprocess, req.tensorboard)
    held: list[RunFolder] = []  # rank 0's open, locked folder

    def open_folder() -> Path:
        held.append(RunFolder(plan))
        if plan.checkpoint is None or plan.finished is not None or not (held[0].path / CONFIG_FILE).exists():
            atomic_write_text(held[0].path / CONFIG_FILE, record_text(held[0].path, cfg, inputs))
        return held[0].path

    out = decide_once(dist.is_main, open_folder)
    try:
        result = train_and_ship(setup, out, plan.checkpoint)
        if req.predict and dist.is_main:
            result.predictions = predict_pool(inputs.images, out, cfg, reporter)
        return result
    finally:
        for folder in held:
            folder.close()


def processes(cfg: MustConfig, reporter: Reporter | None) -> tuple[torch.device, Dist, Reporter]:
    """This process's device and place among the processes (one per GPU under torchrun); only rank 0 talks."""
    device = pick_device(cfg.device)
    dist = init_distributed(device.type == "cuda")
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    reporter = reporter or Reporter()
    return device, dist, reporter if dist.is_main else SilentReporter(reporter.console)


def starting_model(init_from: Path | None, cfg: MustConfig, classnames: list[str], templates: list[str],
                   device: torch.device, reporter: Reporter) -> tuple[MustModel, Preprocess, MustConfig]:
    """CLIP with a text-built head, or (--init-from) an adapted run's tower with a new text-built head.

    A warm start trains on the run's base CLIP, so the config records that model and tag.
    """
    if init_from is None:
        return (*build_must_model(cfg.model, cfg.pretrained, classnames, templates, device), cfg)
    warm = load_warm_start(init_from, classnames, templates, device)
    reporter.info(f"warm start from {init_from} (base {warm.base_model}); classifier rebuilt from text for "
                  f"{len(classnames)} classes" + ("" if warm.heads_restored else
                                                  "; [MSK] and decoder start fresh (older model file)"))
    return warm.model, warm.preprocess, cfg.model_copy(update={"model": warm.base_model,
                                                               "pretrained": warm.base_pretrained})


def predict_pool(images: Path, out: Path, cfg: MustConfig, reporter: Reporter) -> Path:
    """--predict: label the adapted images with the shipped model through `must predict`'s own code.

    The folder is scanned again under the run's --max-pixels, so the rows are the images the run adapted to.
    """
    from must_cli.commands.predict import PredictRequest, run_predict  # predict's UI pieces are not needed to train

    result = run_predict(PredictRequest(images, model=str(out), output=out / PREDICTIONS_FILE, device=cfg.device,
                                        workers=cfg.workers, max_pixels=cfg.max_pixels), reporter.warn)
    return result.output
