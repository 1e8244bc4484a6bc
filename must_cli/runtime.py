"""Where and how fast a run computes: device, precision (autocast), data-loading workers, compile.

Shared by adapt, eval and predict; none of it changes what is computed beyond rounding,
which is why these settings may change when a run is resumed.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch

from must_cli.config import AUTO_DEVICE
from must_cli.errors import MustError

Autocast = Callable[[], contextlib.AbstractContextManager]


def pick_device(name: str) -> torch.device:
    """The torch device for --device: AUTO_DEVICE picks CUDA when a GPU is visible."""
    if name == AUTO_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MustError(f"--device {name}: no CUDA GPU is visible here: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MustError(f"--device {name}: not a device: use auto, cpu, cuda or cuda:N") from None


def autocast_for(device: torch.device, precision: str) -> Autocast:
    """bf16 autocast on CUDA (student and teacher), plain fp32 elsewhere."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def default_workers(requested: int) -> int:
    """A negative request: the cores this process may use, shared among this machine's processes, one left for the main loop.

    Decoding and augmenting both views is CPU-bound (~100 img/s per core), so a fast GPU needs them all.
    """
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(32, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


def compile_for_training(student: torch.nn.Module, teacher: torch.nn.Module, device: torch.device,
                         enabled: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torch.compile the student (around DDP, so DDP still overlaps its all-reduce) and the teacher, on CUDA.

    The wrappers share the modules' parameters, so the optimiser, EMA update and checkpoints
    use the plain modules. A graph that fails to compile runs eager instead of ending the run
    (suppress_errors). CPU runs stay eager: inductor needs a C++ toolchain there and gains little.
    """
    if not enabled or device.type != "cuda":
        return student, teacher
    torch._dynamo.config.suppress_errors = True
    return torch.compile(student), torch.compile(teacher)
