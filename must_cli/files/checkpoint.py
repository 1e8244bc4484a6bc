"""Resumable training checkpoints: model, teacher, optimiser, RNG and loop state, one file per step.

Written atomically (atomic.py) and pruned to the newest few; read back by `--resume`, by the
report (the adapted model of a run whose guard shipped zero-shot) and by `must verify --choose`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from must_cli.files.atomic import atomic_write
from must_cli.base.errors import MustError
from must_cli.files.runs import checkpoint_path, prune_checkpoints


def save_checkpoint(folder: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Atomically write a training checkpoint, then prune to the newest ``keep`` and drop temp files a kill left."""
    path = checkpoint_path(folder, step)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object, so a full disk raises OSError(ENOSPC), not an opaque RuntimeError
            torch.save(payload, f)

    atomic_write(path, write, retry="resume with --resume")
    prune_checkpoints(folder, keep)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint this tool wrote (it holds RNG states and optimiser state, hence full pickle)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which and what to do
        raise MustError(
            f"{path}: cannot read this checkpoint ({' '.join(str(e).split())[:120]}): delete it to resume from "
            "the previous one"
        ) from None
