"""Resumable training checkpoints: model, teacher, optimiser, RNG and loop state, one file per step.

Written atomically (atomic.py) and pruned to the newest few; read back by `--resume`, by the
report (the adapted model of a run whose guard shipped zero-shot; what a stopped run is) and by
`must verify --choose`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from must_cli.files.atomic import atomic_write
from must_cli.base.errors import MustError
from must_cli.files.fingerprint import fingerprint_names
from must_cli.files.run_dir import CHECKPOINTS, RunDir, checkpoint_path, prune_checkpoints


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


@dataclass(frozen=True)
class Trained:
    """What a run's newest checkpoint says about it: all the report needs when no model was shipped yet."""

    checkpoint: Path
    config: dict[str, Any]  # MustConfig.model_dump() of the run
    metrics: list[dict]  # the epochs' records up to the checkpoint
    fingerprint: dict[str, Any]  # what a resume must match (fingerprint.py)

    @property
    def classnames(self) -> list[str]:
        return fingerprint_names(self.fingerprint)[0]

    @property
    def templates(self) -> list[str]:
        return fingerprint_names(self.fingerprint)[1]


def last_trained(run: RunDir) -> Trained | None:
    """The newest checkpoint's config, metrics and fingerprint, or None before the first checkpoint."""
    latest = run.latest_checkpoint()
    if latest is None:
        return None
    ck = load_checkpoint(latest)
    try:
        trained = Trained(latest, ck["config"], ck["state"]["metrics"], ck["fingerprint"])
        fingerprint_names(trained.fingerprint)  # the report reads them: fail here, naming the file
        return trained
    except (KeyError, TypeError):
        raise MustError(f"{latest}: not a checkpoint of `must adapt`: move it out of {CHECKPOINTS}/") from None
