"""`must adapt`: from a folder of unlabeled images and class names to a shipped, adapted classifier.

Reads the inputs, builds the model and views (what trains: training.py), hands them to the Trainer, applies
the label-free guard and writes model.safetensors. The run folder lives in runs.py, the loop
in trainer.py, the method in engine.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from must_cli import __version__
from must_cli.files.cache import ResizedCache
from must_cli.files.atomic import atomic_write_text
from must_cli.method.model_file import save_model
from must_cli.files.classnames import read_class_file, resolve_templates
from must_cli.base.config import MustConfig, to_toml
from must_cli.base.distributed import Dist, decide_once, finish, init_distributed
from must_cli.method.labeled import labeled_images, LabeledSet
from must_cli.method.guard import guard, guard_sample, sample_labels
from must_cli.files.images import scan_images
from must_cli.method.clip_loading import vision_config
from must_cli.method.model import MustModel, Preprocess, build_must_model
from must_cli.method.priors import as_metadata, resolve_prior, zero_shot_probs
from must_cli.base.progress import Reporter, SilentReporter
from must_cli.commands.report import reported_when_done
from must_cli.files.record import RunInputs, absolute_model, record_text
from must_cli.files.runs import (
    CONFIG_FILE, MODEL_FILE, RunFolder, checkpoints_of, plan_run, point_latest, prune_checkpoints, run_fingerprint,
)
from must_cli.base.runtime import autocast_for, default_workers, pick_device, thread_budget
from must_cli.training.tensorboard_log import TensorBoardLog, TensorBoardReporter
from must_cli.training.batch_plan import BatchPlan
from must_cli.training.trainer import Trainer
from must_cli.training.builder import Training, build_training
from must_cli.files.verify_data import ModelLabels, save_both
from must_cli.method.views import EpochSampler, TrainViews
from must_cli.method.warmstart import load_warm_start

PREDICTIONS_FILE = "predictions.csv"


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


@dataclass
class AdaptResult:
    """What the command reports when the run is done."""

    run_dir: Path
    model_file: Path
    metrics: list[dict]  # metrics.jsonl's records
    skipped: int  # files unreadable at scan time
    guard_note: str | None  # why the zero-shot model was shipped, if it was
    class_prior: dict | None = None  # priors.as_metadata: where the fairness target came from, and its shares
    predictions: Path | None = None  # with --predict
    changed: tuple[int, int] | None = None  # (labels changed, images both models labeled): what `must verify` checks


@dataclass
class Setup:
    """Everything a run needs that is decided before training: inputs, device, processes, model."""

    cfg: MustConfig
    images: Path
    classnames: list[str]
    templates: list[str]
    paths: list[Path]
    skipped: int
    labeled: tuple[list[Path], list[int]] | None
    device: torch.device
    dist: Dist
    reporter: Reporter
    model: MustModel
    preprocess: Preprocess
    tensorboard: Path | None = None  # --tensorboard DIR


def run_adapt(req: AdaptRequest, cfg: MustConfig, reporter: Reporter | None = None) -> AdaptResult:
    """Adapt CLIP to the images with MUST and write model.safetensors into the run folder.

    The folder is created (and locked) only once the model has loaded, so a bad model spec
    or a missing network leaves nothing behind.
    """
    inputs = req.inputs
    classnames = read_class_file(inputs.classes)
    templates = resolve_templates(inputs.templates, cfg.template_set)
    cfg = cfg.model_copy(update={"model": absolute_model(cfg.model)})
    device = pick_device(cfg.device)
    dist = init_distributed(device.type == "cuda")
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    reporter = reporter or Reporter()
    if not dist.is_main:
        reporter = SilentReporter(reporter.console)
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


def train_and_ship(setup: Setup, out: Path, resume_from: Path | None) -> AdaptResult:
    """Train in ``out`` (from ``resume_from`` if given), run the guard, write the model; every rank calls this."""
    cfg, dist, device, reporter, preprocess = setup.cfg, setup.dist, setup.device, setup.reporter, setup.preprocess
    warn_once = reporter.warn if dist.is_main else (lambda message: None)
    plan = BatchPlan.for_images(len(setup.paths), dist.world, cfg, warn_once, setup.images)
    workers, autocast = default_workers(cfg.workers, device), autocast_for(device, cfg.precision)
    threads = thread_budget(workers)  # once, before the run's first torch work
    pool = guard_sample(setup.paths)
    prior = decide_once(dist.is_main, lambda: resolve_prior(cfg.class_prior, setup.classnames, lambda: zero_shot_probs(
        setup.model, pool, preprocess, device, workers, autocast)))
    zero_shot = copy.deepcopy(setup.model).eval()  # its labels give the changed set that `must verify` checks
    training = training_for(setup)
    nets = training.nets
    nets.runtime.update(workers=workers, torch_threads=threads)
    eval_set = (LabeledSet(*setup.labeled, setup.classnames, preprocess, device, autocast, workers)
                if setup.labeled else None)
    fingerprint = run_fingerprint(cfg, setup.classnames, setup.templates,
                                  [p.relative_to(setup.images) for p in setup.paths], plan.global_batch,
                                  plan.steps_per_epoch)
    sampler = EpochSampler(len(setup.paths), cfg.seed, dist.rank, dist.world)
    views = TrainViews(setup.paths, preprocess, training.masks, cfg, train_cache(cfg, out, preprocess))
    loader = DataLoader(  # workers x 2 batches in flight: enough to absorb slow images, bounded shared memory
        views, batch_size=plan.per_process, sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
    if setup.tensorboard and dist.is_main:
        reporter = TensorBoardReporter(reporter, TensorBoardLog(setup.tensorboard))
    trainer = Trainer(cfg, plan, nets, loader, sampler, setup.paths, out, fingerprint, dist, device, autocast,
                      reporter, eval_set)
    if resume_from is not None:
        trainer.resume(resume_from)
    trainer.state.prior = None if prior is None else prior.to(device)  # also after a resume: on this device
    reporter.info(f"{len(setup.paths)} images, {len(setup.classnames)} classes, {preprocess.image_size}-px views, "
                  f"{dist.world} process(es) x batch {plan.per_process} x accum {cfg.accum_steps} = "
                  f"{plan.global_batch}, lr {trainer.peak_lr:.2e}, {plan.total_steps} steps on {device}, output {out}")

    def predict(model: MustModel) -> ModelLabels:
        return sample_labels(model, pool, preprocess, device, workers, autocast)

    zero_shot_labels = predict(zero_shot) if dist.is_main else None
    trainer.evaluate_zero_shot(zero_shot)
    record = {"images_used": len(setup.paths), "images_skipped": setup.skipped, "must_cli_version": __version__,
              "device": f"{device} x {dist.world} process(es)", "runtime": nets.runtime}  # what only this process knows
    with reported_when_done(out, record, dist.is_main, str(device), workers, reporter.warn, zero_shot):
        metrics = trainer.run()
        note, changed = None, None
        if dist.is_main:
            adapted_labels = predict(nets.teacher)
            both = save_both(out, setup.images, pool, zero_shot_labels, adapted_labels, len(setup.paths))
            changed = (len(both.changed()), len(both.predicted()))
            note = guard(adapted_labels, zero_shot_labels, len(setup.classnames), cfg.guard_min_balance,
                         prior) if cfg.guard else None
            if note:
                reporter.warn(note)
        prior_meta = as_metadata(cfg.class_prior, prior, setup.classnames)
        if dist.is_main:
            ship(out, zero_shot if note else nets.teacher, setup, note, prior_meta)
    finish(device)
    return AdaptResult(out, out / MODEL_FILE, metrics, setup.skipped, note, prior_meta, changed=changed)


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


def training_for(setup: Setup) -> Training:
    """training.build_training for this run, saying when the mask squares were fitted to the model's input size."""
    cfg, size = setup.cfg, setup.preprocess.image_size
    training = build_training(setup.model, cfg, setup.device, size, setup.dist)
    if training.mask_size != cfg.mask_patch_size:
        setup.reporter.info(f"mask squares: {cfg.mask_patch_size} px at 224-px input -> {training.mask_size} px "
                            f"for this {size}-px model (same fraction of the image)")
    return training


def predict_pool(images: Path, out: Path, cfg: MustConfig, reporter: Reporter) -> Path:
    """--predict: label the adapted images with the shipped model through `must predict`'s own code."""
    from must_cli.commands.predict import PredictRequest, run_predict  # predict's UI pieces are not needed to train

    result = run_predict(PredictRequest(images, model=str(out), output=out / PREDICTIONS_FILE, device=cfg.device,
                                        workers=cfg.workers), reporter)
    return result.output


def train_cache(cfg: MustConfig, out: Path, preprocess: Preprocess) -> ResizedCache | None:
    """The resized copy of large photos (--cache), in --cache-dir or the run folder."""
    if not cfg.cache:
        return None
    return ResizedCache(Path(cfg.cache_dir) if cfg.cache_dir else out / "cache", preprocess.image_size)


def ship(out: Path, final: MustModel, setup: Setup, guard_note: str | None, class_prior: dict) -> None:
    """Write model.safetensors with everything predict needs offline, prune checkpoints, point runs/latest."""
    cfg = setup.cfg
    meta = {
        "vision_config": vision_config(cfg.model, final.visual), "classnames": setup.classnames,
        "templates": setup.templates, "preprocess": setup.preprocess.__dict__, "config": to_toml(cfg),
        "source_model": {"model": cfg.model, "pretrained": cfg.pretrained},
        "chosen": "zero-shot (guard)" if guard_note else "ema-teacher", "class_prior": class_prior,
    }
    save_model(out / MODEL_FILE, final, meta)
    prune_checkpoints(checkpoints_of(out), cfg.keep_checkpoints)
    point_latest(out)
