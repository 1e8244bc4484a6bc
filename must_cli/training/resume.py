"""What a training checkpoint holds, and resuming from one exactly.

Weights of student and teacher, the optimiser, the TrainState (step, epoch, position in the
epoch, running fairness mean, the epoch's metric sums so far) and every RNG stream, so a resumed
run continues as if it had never stopped. The files themselves are files/checkpoint.py's.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from must_cli import __version__
from must_cli.base.config import MustConfig
from must_cli.files.checkpoint import load_checkpoint, save_checkpoint
from must_cli.files.fingerprint import check_fingerprint
from must_cli.files.run_dir import RunDir
from must_cli.method.engine import TrainState
from must_cli.training.builder import Nets

KEEP_WHILE_RUNNING = 2  # checkpoints kept mid-run, so one damaged after writing still leaves one to resume


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(run_dir: Path, nets: Nets, state: TrainState, fingerprint: dict, cfg: MustConfig) -> None:
    """Save everything a resumed run needs under the run's checkpoints/ (rank 0 only calls this)."""
    payload = {
        "student": nets.student.state_dict(), "teacher": nets.teacher.state_dict(),
        "optimizer": nets.optimizer.state_dict(), "state": state.__dict__, "rng": rng_state(),
        "fingerprint": fingerprint, "config": cfg.model_dump(), "must_cli_version": __version__,
    }
    keep = max(cfg.keep_checkpoints, KEEP_WHILE_RUNNING)
    save_checkpoint(RunDir(run_dir).checkpoints, state.step, payload, keep)


def restore_checkpoint(path: Path, nets: Nets, fingerprint: dict, accum_steps: int) -> TrainState:
    """Load a checkpoint into the fresh nets after checking it is this run's; returns the state to go on from."""
    saved = load_checkpoint(path)
    check_fingerprint(path, saved.get("fingerprint", {}), fingerprint)
    nets.student.load_state_dict(saved["student"])
    nets.teacher.load_state_dict(saved["teacher"])
    nets.optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    state = TrainState(**saved["state"])
    # Same global batch, maybe another split into processes x accumulation: keep the optimiser-step position.
    state.batches_done = state.batches_done // saved["config"]["accum_steps"] * accum_steps
    return state
