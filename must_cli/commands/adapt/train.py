"""The training half of `must adapt`, run by every process: build the loader and Trainer, train, then (rank 0)
save both models' labels, let the label-free guard pick the model and write model.safetensors.

adapt.py decides everything before this (inputs, device, processes, starting model, run folder) and hands it
over as a Setup. The loop lives in trainer.py, the method in engine.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from must_cli import __version__
from must_cli.files.cache import ResizedCache
from must_cli.method.model_file import save_model
from must_cli.base.config import MustConfig, to_toml
from must_cli.base.distributed import Dist, decide_once, finish
from must_cli.method.labeled import LabeledSet
from must_cli.method.guard import guard, guard_sample, sample_labels
from must_cli.method.clip_loading import vision_config
from must_cli.method.model import MustModel, Preprocess
from must_cli.method.priors import as_metadata, resolve_prior, zero_shot_probs
from must_cli.base.progress import Reporter
from must_cli.commands.report.build import reported_when_done
from must_cli.files.fingerprint import run_fingerprint
from must_cli.files.run_dir import RunDir, prune_checkpoints
from must_cli.files.runs import point_latest
from must_cli.base.runtime import Autocast, autocast_for, default_workers, thread_budget
from must_cli.training.tensorboard_log import TensorBoardLog, TensorBoardReporter
from must_cli.training.batch_plan import BatchPlan
from must_cli.training.trainer import Trainer
from must_cli.training.builder import Training, build_training
from must_cli.files.verify_data import BothPredictions, ModelLabels, save_both
from must_cli.method.views import EpochSampler, TrainViews


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
class Launch:
    """A run ready for its first step, and what its end compares the trained model with."""

    trainer: Trainer
    zero_shot: MustModel  # the starting model, kept apart: its labels give the changed set that `must verify` checks
    pool: list[Path]  # the guard's sample of the images
    prior: torch.Tensor | None  # the fairness target (--class-prior) as decided on rank 0; None: uniform
    workers: int
    autocast: Autocast


def train_and_ship(setup: Setup, out: Path, resume_from: Path | None) -> AdaptResult:
    """Train in ``out`` (from ``resume_from`` if given), run the guard, write the model; every rank calls this."""
    run = launch(setup, out, resume_from)
    trainer, device, dist = run.trainer, setup.device, setup.dist
    zero_shot_labels = pool_labels(setup, run, run.zero_shot) if dist.is_main else None
    trainer.evaluate_zero_shot(run.zero_shot)
    record = {"images_used": len(setup.paths), "images_skipped": setup.skipped, "must_cli_version": __version__,
              "device": f"{device} x {dist.world} process(es)",
              "runtime": trainer.nets.runtime}  # what only this process knows
    with reported_when_done(out, record, dist.is_main, str(device), run.workers, trainer.reporter.warn,
                            run.zero_shot):
        metrics = trainer.run()
        prior_meta = as_metadata(setup.cfg.class_prior, run.prior, setup.classnames)
        note, changed = (guard_and_ship(setup, out, run, zero_shot_labels, prior_meta) if dist.is_main
                         else (None, None))
    finish(device)
    return AdaptResult(out, RunDir(out).model_file, metrics, setup.skipped, note, prior_meta, changed=changed)


def launch(setup: Setup, out: Path, resume_from: Path | None) -> Launch:
    """Everything before the first step, in the order it must happen: threads before any torch work, the class
    prior and the zero-shot copy from the untrained model, then the networks, the loader and the Trainer."""
    cfg, dist, device, reporter, preprocess = setup.cfg, setup.dist, setup.device, setup.reporter, setup.preprocess
    warn_once = reporter.warn if dist.is_main else (lambda message: None)
    plan = BatchPlan.for_images(len(setup.paths), dist.world, cfg, warn_once, setup.images)
    workers, autocast = default_workers(cfg.workers, device), autocast_for(device, cfg.precision)
    threads = thread_budget(workers)  # once, before the run's first torch work
    pool = guard_sample(setup.paths)
    prior = decide_once(dist.is_main, lambda: resolve_prior(cfg.class_prior, setup.classnames, lambda: zero_shot_probs(
        setup.model, pool, preprocess, device, workers, autocast)))
    zero_shot = copy.deepcopy(setup.model).eval()
    training = training_for(setup)
    training.nets.runtime.update(workers=workers, torch_threads=threads)
    eval_set = (LabeledSet(*setup.labeled, setup.classnames, preprocess, device, autocast, workers)
                if setup.labeled else None)
    fingerprint = run_fingerprint(cfg, setup.classnames, setup.templates,
                                  [p.relative_to(setup.images) for p in setup.paths], plan.global_batch,
                                  plan.steps_per_epoch)
    loader, sampler = data_loader(setup, out, plan, training, workers)
    if setup.tensorboard and dist.is_main:
        reporter = TensorBoardReporter(reporter, TensorBoardLog(setup.tensorboard))
    trainer = Trainer(cfg, plan, training.nets, loader, sampler, setup.paths, out, fingerprint, dist, device,
                      autocast, reporter, eval_set)
    if resume_from is not None:
        trainer.resume(resume_from)
    trainer.state.prior = None if prior is None else prior.to(device)  # also after a resume: on this device
    reporter.info(f"{len(setup.paths)} images, {len(setup.classnames)} classes, {preprocess.image_size}-px views, "
                  f"{dist.world} process(es) x batch {plan.per_process} x accum {cfg.accum_steps} = "
                  f"{plan.global_batch}, lr {trainer.peak_lr:.2e}, {plan.total_steps} steps on {device}, output {out}")
    return Launch(trainer, zero_shot, pool, prior, workers, autocast)


def training_for(setup: Setup) -> Training:
    """training.build_training for this run, saying when the mask squares were fitted to the model's input size."""
    cfg, size = setup.cfg, setup.preprocess.image_size
    training = build_training(setup.model, cfg, setup.device, size, setup.dist)
    if training.mask_size != cfg.mask_patch_size:
        setup.reporter.info(f"mask squares: {cfg.mask_patch_size} px at 224-px input -> {training.mask_size} px "
                            f"for this {size}-px model (same fraction of the image)")
    return training


def data_loader(setup: Setup, out: Path, plan: BatchPlan, training: Training, workers: int,
                ) -> tuple[DataLoader, EpochSampler]:
    """This process's share of each epoch's shuffled images, as augmented (and masked) views."""
    cfg, device = setup.cfg, setup.device
    sampler = EpochSampler(len(setup.paths), cfg.seed, setup.dist.rank, setup.dist.world)
    views = TrainViews(setup.paths, setup.preprocess, training.masks, cfg, train_cache(cfg, out, setup.preprocess))
    loader = DataLoader(  # workers x 2 batches in flight: enough to absorb slow images, bounded shared memory
        views, batch_size=plan.per_process, sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
    return loader, sampler


def train_cache(cfg: MustConfig, out: Path, preprocess: Preprocess) -> ResizedCache | None:
    """The resized copy of large photos (--cache), in --cache-dir or the run folder."""
    if not cfg.cache:
        return None
    return ResizedCache(Path(cfg.cache_dir) if cfg.cache_dir else RunDir(out).cache, preprocess.image_size)


def pool_labels(setup: Setup, run: Launch, model: MustModel) -> ModelLabels:
    """A model's labels on the guard's sample: what the guard compares and `must verify` checks."""
    return sample_labels(model, run.pool, setup.preprocess, setup.device, run.workers, run.autocast)


def guard_and_ship(setup: Setup, out: Path, run: Launch, zero_shot_labels: ModelLabels, class_prior: dict,
                   ) -> tuple[str | None, tuple[int, int]]:
    """Rank 0 after training: save both models' labels (for `must verify` and the report), let the label-free
    guard pick the model, and ship it. Returns the guard's note (None: the adapted model shipped) and
    (labels changed, images both models labeled)."""
    cfg, teacher = setup.cfg, run.trainer.nets.teacher
    adapted_labels = pool_labels(setup, run, teacher)
    both = save_both(out, BothPredictions.of(setup.images, run.pool, zero_shot_labels, adapted_labels,
                                              len(setup.paths)))
    note = guard(adapted_labels, zero_shot_labels, len(setup.classnames), cfg.guard_min_balance,
                 run.prior) if cfg.guard else None
    if note:
        run.trainer.reporter.warn(note)
    ship(out, run.zero_shot if note else teacher, setup, note, class_prior)
    return note, (len(both.changed()), len(both.predicted()))


def ship(out: Path, final: MustModel, setup: Setup, guard_note: str | None, class_prior: dict) -> None:
    """Write model.safetensors with everything predict needs offline, prune checkpoints, point runs/latest."""
    cfg = setup.cfg
    meta = {
        "vision_config": vision_config(cfg.model, final.visual), "classnames": setup.classnames,
        "templates": setup.templates, "preprocess": setup.preprocess.__dict__, "config": to_toml(cfg),
        "source_model": {"model": cfg.model, "pretrained": cfg.pretrained},
        "chosen": "zero-shot (guard)" if guard_note else "ema-teacher", "class_prior": class_prior,
    }
    save_model(RunDir(out).model_file, final, meta)
    prune_checkpoints(RunDir(out).checkpoints, cfg.keep_checkpoints)
    point_latest(out)
