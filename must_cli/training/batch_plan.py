"""How a run's images split into micro-batches, optimiser steps and epochs across processes.

Decided once, before training starts: the data loader's batch, the lr scaling, the schedule's
length and the resume fingerprint all come from it, and too few images fail here with a line
that says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from must_cli.base.config import MustConfig
from must_cli.base.errors import MustError


@dataclass(frozen=True)
class BatchPlan:
    """How the images split into micro-batches, optimiser steps and epochs across processes."""

    per_process: int  # images per micro-batch per process
    accum_steps: int
    world: int
    batches_per_epoch: int  # micro-batches per process per epoch, a multiple of accum_steps
    epochs: int

    @classmethod
    def for_images(cls, n_images: int, world: int, cfg: MustConfig, warn: Callable[[str], None],
                   where: Path) -> "BatchPlan":
        """The configured batch, lowered (with a warning) when the images are too few for it."""
        batch = min(cfg.batch_size, n_images // world)
        if batch < cfg.batch_size:
            warn(f"only {n_images} images: batch size lowered from {cfg.batch_size} to {batch}")
        if batch < 2:
            raise MustError(f"{where}: {n_images} readable image(s) are too few to adapt on: add more images")
        batches = (-(-n_images // world) // batch) // cfg.accum_steps * cfg.accum_steps
        if batches == 0:
            raise MustError(f"{n_images} images are fewer than one optimiser step of "
                            f"{batch * world * cfg.accum_steps}: lower --batch-size")
        return cls(batch, cfg.accum_steps, world, batches, cfg.epochs)

    @property
    def global_batch(self) -> int:
        return self.per_process * self.world * self.accum_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch // self.accum_steps

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs
