"""The optimisation schedule of a run: layer-wise lr decay groups, the cosine lr, the EMA teacher.

Everything here changes with the optimiser step rather than with the batch: which lr scale and
weight decay each parameter gets, the lr at each step, and how fast the teacher follows the student.
engine.train_epoch applies it after each step's gradients; build_training makes the groups.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from must_cli.base.config import MustConfig
from must_cli.base.distributed import distributed
from must_cli.method.model import MustModel


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embedding stem (and [MSK]), i+1 for transformer block i, L+1 for the heads."""
    if name.startswith("visual.transformer.resblocks."):
        return int(name.split(".")[3]) + 1
    stem = ("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre", "mask_token")
    return 0 if name.startswith(stem) else num_layers + 1


def param_groups(model: MustModel, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: lr scale layer_decay^(L+1-layer_id), no weight decay on 1-D tensors.

    [MSK] is decayed although we store it 1-D: the reference keeps it (1, 1, width), which
    its 1-D rule (optim_factory.py:53) does not exempt, and the paper's numbers used that.
    """
    num_layers = len(model.visual.transformer.resblocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, num_layers)
        decay = p.ndim > 1 or name == "mask_token"
        g = groups.setdefault((lid, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (num_layers + 1 - lid),
        })
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The paper's linear scaling rule: lr = base_lr x global batch / 256."""
    return base_lr * global_batch / 256


def cosine_lr(step: int, total: int, peak: float, floor: float) -> float:
    """Per-iteration cosine from peak to floor, no warmup."""
    t = min(step, total) / max(total, 1)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def ema_decay(step: int, mu0: float, mu_final: float, ramp_steps: int, batch_ratio: float = 1.0) -> float:
    """Teacher decay per optimiser step of ``batch_ratio`` = global batch / reference batch.

    mu0, mu_final and ramp_steps are stated at the reference batch; a step of fewer images
    moves the ramp and the average by that fraction of a reference step (mu ** ratio, ramp
    in images), so the teacher remembers the same number of images at any global batch.
    """
    mu = mu0 + (mu_final - mu0) * min(step * batch_ratio / ramp_steps, 1.0)
    return mu**batch_ratio


def ema_batch_ratio(cfg: MustConfig, micro_batch: int) -> float:
    """Global batch over cfg.ema_ref_batch (1 when that is 0: decay and ramp per optimiser step)."""
    if cfg.ema_ref_batch == 0:
        return 1.0
    world = dist.get_world_size() if distributed() else 1
    return micro_batch * world * cfg.accum_steps / cfg.ema_ref_batch


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, as one foreach kernel per dtype."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)
