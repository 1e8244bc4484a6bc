"""The training engine: one MUST step (eq. 6) and one epoch of them.

Written so that the same code runs on one process or under torchrun: the student may
be wrapped in DistributedDataParallel, the fairness average is all-gathered with
gradient, and metrics are summed across ranks before anyone reads them. The parameter
groups, lr schedule and EMA teacher applied after each step live in schedule.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from must_cli.base.config import MustConfig
from must_cli.base.distributed import distributed, global_mean
from must_cli.method.losses import alignment_loss, fairness_loss, mim_loss, self_training_loss
from must_cli.method.model import MustModel
from must_cli.method.schedule import cosine_lr, ema_batch_ratio, ema_decay, ema_update

METRIC_NAMES = ("loss", "loss_cls", "loss_fair", "loss_mim", "loss_align", "kept", "agree", "nonfinite", "images")


@dataclass
class TrainState:
    """Everything besides weights and optimiser that a resumed run needs to continue exactly."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (0-based)
    batches_done: int = 0  # micro-batches of the current epoch already trained on
    fair_running: torch.Tensor | None = None  # running p_bar of this epoch when classes are many
    prior: torch.Tensor | None = None  # class shares the fairness term aims at (None: uniform); see priors.py
    metrics: list[dict] = field(default_factory=list)
    epoch_sums: torch.Tensor | None = None  # metric sums of the current epoch so far, over all ranks
    epoch_hist: torch.Tensor | None = None  # and its label histogram, so a resumed epoch logs like an uninterrupted one


def global_batch(cfg: MustConfig, micro_batch: int) -> int:
    """Images per optimiser step, over every process and accumulation step."""
    return micro_batch * (dist.get_world_size() if distributed() else 1) * cfg.accum_steps


def reference_batch_mean(cfg: MustConfig, micro_batch: int) -> bool:
    """Whether p_bar must cover more than this micro-batch: the step spans several micro-batches,
    or the global batch is below fair_ref_batch. False at the authors' shape, so there the term
    is theirs to the bit (engine_self_training.py:77-79)."""
    ref = cfg.fair_ref_batch
    return ref > 0 and (cfg.accum_steps > 1 or global_batch(cfg, micro_batch) < ref)


def fairness_mean(p_batch: torch.Tensor, state: TrainState, cfg: MustConfig, micro_batch: int,
                  step_mean: torch.Tensor | None) -> torch.Tensor:
    """p_bar over the reference batch's worth of recent images, with this micro-batch's gradient.

    The paper averages the prediction over its global batch of 1,024 images; one GPU at 64 sees
    64, and the term's gradient then grows several-fold and is noisy (docs/method.md). The
    estimate mixes this step's mean (over all its micro-batches and processes) into a running
    mean with weight G / min(R, images seen this epoch + G): the plain mean of the epoch until R
    images, then an exponential average over about R images. Its value is that estimate; its
    gradient is the step's own, as if the step were one batch of G images (the role of the
    reference's "/ 0.5", engine_self_training.py:75). So 1 x 64 x accum 8, 2 x 64 x accum 4
    and 1 x 512 give the same loss and gradients (tests/test_engine.py). Like the reference's
    running average it restarts each epoch and is checkpointed (state.fair_running).
    """
    accum = cfg.accum_steps
    if state.batches_done % accum == 0:  # the first micro-batch of an optimiser step
        g = global_batch(cfg, micro_batch)
        current = p_batch.detach() if step_mean is None else step_mean
        weight = g / min(cfg.fair_ref_batch, state.batches_done // accum * g + g)
        previous = state.fair_running
        state.fair_running = current if previous is None or weight >= 1 else (
            (1 - weight) * previous + weight * current)
    return state.fair_running + (p_batch - p_batch.detach())


@torch.no_grad()
def step_mean_prediction(student: nn.Module, micro_batches: list[dict[str, torch.Tensor]],
                         autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """Mean student softmax over every micro-batch of one optimiser step, on every process.

    A gradient-free forward of the step's strong views before the step trains on them, so each
    micro-batch's fairness term can use the whole step's mean (the model is the same for all of
    them within a step, and the forward is deterministic given the batch's views and masks).
    """
    core: MustModel = student.module if hasattr(student, "module") else student
    means = []
    for batch in micro_batches:
        with autocast():
            logits = core(batch["strong"], batch.get("mask"))
        means.append(global_mean(logits.float().softmax(dim=1)))
    return torch.stack(means).mean(0)


def pixel_mask(mask: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """(B, N) token mask -> (B, 1, H, W) pixel mask, 1 where a pixel's patch was masked."""
    m = mask.reshape(-1, 1, grid, grid).to(torch.float32)
    return m.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def fairness_term(logits: torch.Tensor, state: TrainState, cfg: MustConfig, num_classes: int,
                  step_mean: torch.Tensor | None) -> torch.Tensor:
    """L_reg (eq. 3) of one micro-batch, with p_bar averaged as the class count and batch call for.

    Many classes: the reference's running average over the epoch; a step below the reference
    batch: fairness_mean; otherwise this micro-batch's mean over all processes.
    """
    p_bar = global_mean(logits.float().softmax(dim=1))
    scale = 1.0
    if num_classes >= cfg.fair_running_classes:
        # As engine_self_training.py:69-75: the average restarts with each epoch (a resumed
        # run restores it from the checkpoint), and /0.5 restores the batch's gradient weight.
        if state.fair_running is not None and state.batches_done > 0:
            p_bar = 0.5 * (state.fair_running + p_bar)
        state.fair_running = p_bar.detach()
        scale = 2.0
    elif reference_batch_mean(cfg, logits.shape[0]):
        p_bar = fairness_mean(p_bar, state, cfg, logits.shape[0], step_mean)
    return scale * fairness_loss(p_bar, state.prior)


def must_step(
    student: nn.Module, teacher: MustModel, batch: dict[str, torch.Tensor], cfg: MustConfig,
    state: TrainState, autocast: Callable[[], contextlib.AbstractContextManager],
    step_mean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of teacher and student and the MUST loss (eq. 6).

    ``step_mean`` is the mean student prediction over the whole optimiser step when it spans
    several micro-batches (``step_mean_prediction``). Returns (loss, metric sums aligned with
    METRIC_NAMES, histogram of kept pseudo-labels).
    """
    core: MustModel = student.module if hasattr(student, "module") else student
    weak, strong = batch["weak"], batch["strong"]
    mask = batch.get("mask")
    with torch.no_grad(), autocast():
        teacher_logits = teacher(weak)
    with autocast():
        out = student(strong, mask, features=True, reconstruct=cfg.mim, embed_patches=cfg.align)
    teacher_probs = teacher_logits.float().softmax(dim=1)
    loss_cls, keep = self_training_loss(out.logits, teacher_probs, cfg.threshold)
    loss = loss_cls
    zero = loss_cls.new_zeros(())
    loss_fair = loss_mim = loss_align = zero
    if cfg.fairness:
        loss_fair = fairness_term(out.logits, state, cfg, core.num_classes, step_mean)
        loss = loss + cfg.w_fair * loss_fair
    if cfg.mim:
        target_mask = pixel_mask(mask, core.grid_size, core.patch_size)
        loss_mim = mim_loss(out.reconstruction, strong, target_mask)
        loss = loss + loss_mim
    if cfg.align:
        loss_align = alignment_loss(out.cls_embedding, out.patch_embeddings, mask)
        loss = loss + cfg.w_align * loss_align
    pseudo = teacher_probs.argmax(dim=1)
    agree = (out.logits.detach().argmax(dim=1) == pseudo).sum()
    # No host->device copies (torch.tensor) or data-dependent shapes (pseudo[keep], bincount) here:
    # each would make the CPU wait for the GPU every step.
    b = weak.shape[0]
    losses = torch.stack([loss, loss_cls, loss_fair, loss_mim, loss_align]).detach().float() * b
    counts = torch.stack([keep.sum().float(), agree.float(), (~torch.isfinite(loss.detach())).float(),
                          loss.new_full((), float(b))]).float()
    metrics = torch.cat([losses, counts])
    hist = torch.zeros(core.num_classes, device=pseudo.device).index_add_(0, pseudo, keep.float())
    return loss, metrics, hist


def train_epoch(
    student: nn.Module, teacher: MustModel, optimizer: torch.optim.Optimizer, batches: Iterable[dict],
    cfg: MustConfig, state: TrainState, total_steps: int, peak_lr: float, floor_lr: float,
    device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager],
    on_step: Callable[[TrainState, torch.Tensor, torch.Tensor, float], bool],
) -> None:
    """Train over ``batches`` (the rest of this epoch); ``on_step`` may return True to stop early.

    ``on_step(state, metric sums, pseudo-label histogram, lr)`` runs after each optimiser
    step; it owns logging, checkpoints and signals, so this loop stays the method itself.
    """
    core: MustModel = student.module if hasattr(student, "module") else student
    student.train()
    optimizer.zero_grad(set_to_none=True)
    for group in step_groups(batches, cfg.accum_steps, device):
        metrics, hist = accumulate(student, teacher, group, cfg, state, autocast)
        if len(group) < cfg.accum_steps:
            return  # an epoch's incomplete last step: no optimiser step, as before
        lr = cosine_lr(state.step, total_steps, peak_lr, floor_lr)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ratio = ema_batch_ratio(cfg, group[-1]["weak"].shape[0])
        ema_update(teacher, core, ema_decay(state.step, cfg.ema_mu0, cfg.ema_mu_final, cfg.ema_mu_steps, ratio))
        state.step += 1
        if on_step(state, metrics, hist, lr):
            return


def step_groups(batches: Iterable[dict], accum: int, device: torch.device) -> Iterator[list[dict]]:
    """The micro-batches of each optimiser step, on ``device`` (the last group may be short)."""
    group: list[dict] = []
    for batch in batches:
        group.append({k: v.to(device, non_blocking=True) for k, v in batch.items()})
        if len(group) == accum:
            yield group
            group = []
    if group:
        yield group


def accumulate(
    student: nn.Module, teacher: MustModel, group: list[dict], cfg: MustConfig, state: TrainState,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward every micro-batch of one optimiser step; returns summed metrics and histogram.

    Gradients are synchronised across processes on the last micro-batch only (DDP no_sync).
    """
    core: MustModel = student.module if hasattr(student, "module") else student
    step_mean = None
    if (cfg.fairness and len(group) > 1 and core.num_classes < cfg.fair_running_classes
            and reference_batch_mean(cfg, group[0]["weak"].shape[0])):
        step_mean = step_mean_prediction(student, group, autocast)
    metrics = hist = None
    for i, batch in enumerate(group):
        last = i == len(group) - 1
        sync = contextlib.nullcontext() if last or not hasattr(student, "no_sync") else student.no_sync()
        with sync:
            loss, m, h = must_step(student, teacher, batch, cfg, state, autocast, step_mean)
            (loss / cfg.accum_steps).backward()
        metrics = m if metrics is None else metrics + m
        hist = h if hist is None else hist + h
        state.batches_done += 1
    return metrics, hist
