"""The one builder of what a run trains: which layers, the [MSK] masks, the EMA teacher, AdamW, compile.

`must adapt` and every benchmark that trains call ``build_training``, so a benchmark measures the
setup a run really has. Which layers train is decided in one named step, ``trainable_parts``,
from the enabled objectives, instead of as a side effect of asking for the mask sampler.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from must_cli.base.config import MustConfig
from must_cli.base.distributed import Dist
from must_cli.method.schedule import param_groups
from must_cli.method.masking import MaskGenerator, resolve_mask_patch_size
from must_cli.method.model import MustModel
from must_cli.base.runtime import adamw, compile_for_training, eager_module


@dataclass
class Nets:
    """The networks and optimiser of a run; checkpoints, EMA and the optimiser use the plain modules."""

    student: MustModel
    teacher: MustModel
    optimizer: torch.optim.Optimizer
    train_student: nn.Module  # the student as trained: wrapped in DDP and/or compiled
    train_teacher: nn.Module
    runtime: dict[str, Any] = field(default_factory=dict)  # how they run (AdamW kind, compile...), for the run's record

    @property
    def compiled(self) -> bool:
        return eager_module(self.train_student) is not self.train_student

    def fall_back_to_eager(self, reason: str) -> None:
        """Train with the uncompiled modules from now on (same parameters: nothing is lost)."""
        self.train_student, self.train_teacher = eager_module(self.train_student), eager_module(self.train_teacher)
        self.runtime["compile"] = f"failed at the first step, ran eager: {reason}"
        torch._dynamo.reset()  # drop the failed graphs and their caches


@dataclass
class Training:
    """What ``build_training`` made: the networks and optimiser, the mask sampler, and what trains."""

    nets: Nets
    masks: MaskGenerator | None  # None when neither MIM nor alignment is on: the views carry no masks
    mask_size: int  # the mask square in pixels for this model (cfg.mask_patch_size is at 224-px input)
    trainable: dict[str, bool]  # trainable_parts: the optional parts and whether each trains


def trainable_parts(cfg: MustConfig) -> dict[str, bool]:
    """Which optional parts of MustModel train: the heads an enabled objective uses, the classifier unless frozen.

    A part no objective uses is frozen, so it stays out of the optimiser and of DDP's reducer
    (DDP fails on parameters that get no gradient).
    """
    use_masks = cfg.mim or cfg.align
    return {"decoder": cfg.mim, "ln_patch": use_masks, "mask_token": use_masks,
            "classifier": not cfg.freeze_classifier}  # --freeze-classifier: the text-built head stays


def choose_trainable(model: MustModel, cfg: MustConfig) -> dict[str, bool]:
    """Set requires_grad of each part trainable_parts names, and return that choice (the rest of the model trains)."""
    parts = trainable_parts(cfg)
    for name, trains in parts.items():
        getattr(model, name).requires_grad_(trains)
    return parts


def mask_generator(cfg: MustConfig, image_size: int, patch_size: int) -> tuple[MaskGenerator | None, int]:
    """The [MSK] mask sampler when MIM or alignment is on (else None), and its square size in pixels for this model."""
    mask_size = resolve_mask_patch_size(cfg.mask_patch_size, image_size, patch_size)
    if not (cfg.mim or cfg.align):
        return None, mask_size
    return MaskGenerator(image_size, patch_size, mask_size, cfg.mask_ratio), mask_size


def build_training(model: MustModel, cfg: MustConfig, device: torch.device, image_size: int,
                   dist: Dist | None = None, optimizer_kind: str | None = None) -> Training:
    """Choose what trains, then the EMA teacher, the student (DDP across processes), AdamW, compile.

    ``optimizer_kind`` None takes runtime's fastest AdamW for the device; a benchmark may name one.
    The teacher is copied after the choice, so it never takes gradients either way.
    """
    dist = dist or Dist()
    trainable = choose_trainable(model, cfg)
    masks, mask_size = mask_generator(cfg, image_size, model.patch_size)
    teacher = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    model.to(device)
    model.visual.set_grad_checkpointing(cfg.grad_checkpointing)  # student only: the teacher keeps no activations
    student: torch.nn.Module = model
    if dist.world > 1:
        student = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer, kind = adamw(param_groups(model, cfg.weight_decay, cfg.layer_decay), device,
                            (cfg.adam_beta1, cfg.adam_beta2), optimizer_kind)
    train_student, train_teacher = compile_for_training(student, teacher, device, cfg.compile)
    nets = Nets(model, teacher, optimizer, train_student, train_teacher, {"adamw": kind, "precision": cfg.precision})
    nets.runtime["compile"] = "on" if nets.compiled else "off"
    return Training(nets, masks, mask_size, trainable)
