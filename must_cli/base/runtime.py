"""Where and how fast a run computes: device, precision (autocast), data-loading workers, threads, AdamW, compile.

Shared by adapt, eval and predict; none of it changes what is computed beyond rounding,
which is why these settings may change when a run is resumed.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch

from must_cli.base.config import AUTO_DEVICE
from must_cli.base.errors import MustError

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
    """bf16 autocast (student and teacher) when asked, on any device, or by default on CUDA; else plain fp32."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def process_cores() -> int:
    """This process's share of the cores it may use (its affinity mask), split among the node's processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_workers(requested: int, device: torch.device | None = None) -> int:
    """A negative request: data-loading processes for this process's share of the cores.

    Feeding a GPU: all the cores but one for the main loop (decoding and augmenting both views
    is CPU-bound, ~100 img/s per core at 224 px). Training on the CPU (``device``): a quarter of
    them, at least one, since there the step costs several times the views per image and the
    torch threads need the rest (docs/benchmarks.md, "Throughput and the GPU path").
    """
    if requested >= 0:
        return requested
    cores = process_cores()
    if device is not None and device.type == "cpu":
        return max(1, cores // 4)
    return max(1, min(32, cores - 1))


def thread_budget(workers: int) -> int:
    """Set torch's intra-op threads to the cores the loader workers leave, never above the current setting.

    torch defaults to one thread per core; with loader workers on the same cores that oversubscribes
    them, and a step waits for its slowest thread (measured 0.46x the wall time of the whole command
    on 2 shared cores). Never raising the count keeps OMP_NUM_THREADS or a caller's
    torch.set_num_threads. Called once, by adapt; the count is recorded in the run's record.
    """
    threads = max(1, min(torch.get_num_threads(), process_cores() - workers))
    torch.set_num_threads(threads)
    return threads


def adamw_kind(device: torch.device) -> str:
    """The fastest AdamW implementation torch has for ``device``: fused, else foreach (GPU), else plain.

    fused is one kernel over all tensors (on CPU too: 2.8x faster per step than the per-tensor loop,
    docs/benchmarks.md); foreach batches tensors into few kernel launches, which pays only where
    launches cost (GPU). torch checks fused support only at the first step, so ask its device list.
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the list: fused where it has always been, on CUDA
        fused = device.type == "cuda"
    else:
        fused = device.type in _get_fused_kernels_supported_devices()
    return "fused" if fused else "plain" if device.type == "cpu" else "foreach"


def adamw(groups: list[dict], device: torch.device, betas: tuple[float, float],
          kind: str | None = None) -> tuple[torch.optim.Optimizer, str]:
    """AdamW over ``groups`` with ``kind`` (fused / foreach / plain; None: adamw_kind's), and its name for the record."""
    kind = kind or adamw_kind(device)
    options = {"fused": True} if kind == "fused" else {"foreach": kind == "foreach"}
    return torch.optim.AdamW(groups, betas=betas, **options), kind  # lr is set per step by the schedule


def compile_wanted(setting: bool | str, device: torch.device) -> bool:
    """The compile setting: True or False as given, "auto" on CUDA only (on CPU inductor measured no faster)."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def compile_for_training(student: torch.nn.Module, teacher: torch.nn.Module, device: torch.device,
                         setting: bool | str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torch.compile the student (around DDP, so DDP still overlaps its all-reduce) and the teacher, when wanted.

    The wrappers share the modules' parameters, so the optimiser, EMA update and checkpoints use
    the plain modules. Compilation happens lazily at the first step (the backward graph at the
    first backward); errors are not suppressed, so the trainer sees them and falls back to
    ``eager_module`` of each, saying so once.
    """
    if not compile_wanted(setting, device):
        return student, teacher
    return torch.compile(student), torch.compile(teacher)


def eager_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module a torch.compile wrapper runs (itself when not compiled)."""
    return getattr(module, "_orig_mod", module)


def memory_advice(batch: int, accum: int, world: int, grad_checkpointing: bool) -> str:
    """What to say when a step runs out of GPU memory: half the batch at twice the accumulation keeps the
    global batch (so --resume accepts it), and gradient checkpointing keeps fewer activations."""
    fixes = [f"--batch-size {batch // 2} --accum-steps {accum * 2} (global batch {batch // 2 * accum * 2 * world})"
             ] if batch >= 4 else []
    fixes += [] if grad_checkpointing else ["--grad-checkpointing"]
    return f"out of GPU memory at batch size {batch} per process (accum {accum}): use {' or '.join(fixes) or 'a smaller --model'}"


def error_line(error: BaseException) -> str:
    """The first line of the innermost error (torch.compile wraps a backend's error in its own), for one line."""
    while (inner := getattr(error, "inner_exception", None) or error.__cause__) is not None:
        error = inner
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
