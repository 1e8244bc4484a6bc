"""A compiled run's first optimiser step, guarded: a compile failure there costs one warning, not the run.

Compilation happens inside that step (the forward graphs at the first call, the backward graph
at the first backward), and so do compiled code's first runs. If any of it raises before the
optimiser steps, one line says so, the run's record notes it, and the step is rerun eager on the
same micro-batches from the same state and RNG, so the run trains exactly as with --no-compile.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterable, Iterator

import torch

from must_cli.base.errors import MustError
from must_cli.base.runtime import error_line
from must_cli.method.engine import TrainState
from must_cli.training.builder import Nets
from must_cli.training.resume import rng_state, set_rng_state


def guard_first_step(train: Callable[[Iterable[dict]], None], batches: Iterator[dict], nets: Nets,
                     state: TrainState, accum_steps: int, world: int, warn: Callable[[str], None]) -> None:
    """``train`` over ``batches`` (its first ``accum_steps`` micro-batches are the first step), guarded.

    ``train`` must read ``nets``' modules when called, so the rerun after ``fall_back_to_eager``
    trains the uncompiled ones. Errors after the first optimiser step, MustError and CUDA
    out-of-memory are the run's own and are raised as they are.
    """
    first = list(itertools.islice(batches, accum_steps))  # the first step's micro-batches
    saved, rng = dataclasses.replace(state), rng_state()
    stepped: list[bool] = []

    def first_step(*_: Any) -> None:  # from here on an error is the step's own, not compilation's
        stepped.append(True)
        hook.remove()

    hook = nets.optimizer.register_step_pre_hook(first_step)
    try:
        train(itertools.chain(first, batches))
        return
    except (MustError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever compiled code raised; the eager rerun re-raises real errors
        if stepped:
            raise
        reason = error_line(e)
    finally:
        hook.remove()
    if world > 1:  # ranks would disagree on which modules run: stop all with the cure
        raise MustError(f"torch.compile failed at the first step ({reason}): rerun with --no-compile")
    warn(f"torch.compile failed at the first step ({reason}): continuing eager (--no-compile skips compiling)")
    nets.fall_back_to_eager(reason)
    state.__dict__.update(saved.__dict__)
    set_rng_state(rng)
    train(itertools.chain(first, batches))
