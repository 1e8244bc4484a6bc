"""A run's fingerprint: what must match for a checkpoint to be resumed, kept in every checkpoint.

Anything else would silently change the run, so `--resume` refuses a checkpoint whose fingerprint
differs, naming what differs. The report reads the classes and templates back from it for a run
that stopped before shipping its model. Imports no torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

from must_cli.base.config import MustConfig
from must_cli.base.errors import MustError

# Settings that may change on resume: they do not change what is computed (beyond rounding).
RUNTIME_KEYS = frozenset({"device", "workers", "precision", "compile", "grad_checkpointing", "eval_every",
                          "save_every", "keep_checkpoints", "batch_size", "accum_steps", "cache", "cache_dir"})


def run_fingerprint(cfg: MustConfig, classnames: list[str], templates: list[str], paths: Sequence[Path],
                    global_batch: int, steps_per_epoch: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (anything else would silently change the run).

    The per-process batch and accumulation may change (e.g. resume 2 GPUs' run on 1 GPU with
    --accum-steps 2) as long as the global batch and the steps per epoch stay the same.
    """
    images = hashlib.blake2b("\n".join(map(os.fsdecode, paths)).encode("utf-8", "surrogateescape")).hexdigest()
    hyper = {k: v for k, v in cfg.model_dump().items() if k not in RUNTIME_KEYS}
    return {**hyper, "classes": classnames, "templates": templates, "images": f"{len(paths)} files {images[:16]}",
            "global_batch": global_batch, "steps_per_epoch": steps_per_epoch}


def fingerprint_names(fingerprint: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The class names and prompt templates a run was trained with, as run_fingerprint keeps them."""
    return list(fingerprint["classes"]), list(fingerprint["templates"])


def more_epochs(key: str, saved: dict[str, Any], value: Any) -> bool:
    """A run may be continued for more epochs (the schedule then spans them all), never fewer."""
    return key == "epochs" and isinstance(saved.get(key), int) and value > saved[key]


def check_fingerprint(checkpoint: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse, naming what differs, to resume a checkpoint of another run."""
    diff = [key if isinstance(value, (list, dict)) or len(repr(value)) > 60
            else f"{key} ({saved.get(key)!r} -> {value!r})"
            for key, value in current.items() if saved.get(key) != value and not more_epochs(key, saved, value)]
    if diff:
        raise MustError(f"--resume {checkpoint}: this run differs from the checkpoint in {', '.join(diff)}: "
                        "resume with the same images, classes, model and settings, or start a new --output")
