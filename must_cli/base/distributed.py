"""Data-parallel plumbing: which process this is, and the few collectives the run needs.

Everything here is a no-op on a single process, so the trainer and the method call it
unconditionally and the same code runs under torchrun (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from must_cli.base.errors import MustError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> Dist:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU).

    Each process binds its GPU (LOCAL_RANK) before joining, so NCCL never guesses a device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank, so decisions such as the run folder are taken once."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward gives each rank the sum of every rank's gradient for its rows.

    Every rank's loss uses all rows, so a row's true gradient is that sum; DDP then averages
    the parameter gradients as for any other loss term. (torch.distributed.nn's version is deprecated.)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of every rank, keeping the gradient (equal batch sizes per rank)."""
    if distributed():
        x = _GatherWithGrad.apply(x)
    return x.mean(dim=0)


def reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over all ranks (a copy; ``x`` itself is left alone)."""
    if distributed():
        x = x.clone()
        dist.all_reduce(x)
    return x


def agreed_error(is_main: bool, message: str) -> BaseException:
    """An error all ranks reach together: rank 0 says it in one line, the others exit with the same code quietly."""
    return MustError(message) if is_main else SystemExit(1)


def decide_once(is_main: bool, decide: Any) -> Any:
    """Run ``decide()`` on rank 0 and give every rank its answer; a MustError there stops every rank together."""
    answer: Any = None
    if is_main:
        try:
            answer = ("ok", decide())
        except MustError as e:
            answer = ("error", str(e))
    kind, value = broadcast_object(answer)
    if kind == "error":
        raise agreed_error(is_main, value)
    return value


def finish(device: torch.device) -> None:
    """The other ranks wait while rank 0 runs the guard and writes the model, then the group closes."""
    if distributed():
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
        dist.destroy_process_group()
