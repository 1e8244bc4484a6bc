"""The run folder on disk: where runs go (runs/, runs/latest), which checkpoint a resume means,
and what must match for a checkpoint to belong to this run.

Imports no torch, so the command line can check a run folder before loading anything heavy.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from must_cli.config import MustConfig
from must_cli.errors import MustError

RUNS_DIR = Path("runs")  # where runs go without --output
LATEST = "latest"  # RUNS_DIR/LATEST links to the newest finished run
LATEST_RUN = RUNS_DIR / LATEST  # the model eval, predict and export use without --model
CHECKPOINTS = "checkpoints"  # resumable checkpoints, inside the run folder

# Settings that may change on resume: they do not change what is computed (beyond rounding).
RUNTIME_KEYS = frozenset({"device", "workers", "precision", "compile", "grad_checkpointing", "eval_every",
                          "save_every", "keep_checkpoints", "batch_size", "accum_steps", "cache", "cache_dir"})


def model_path(model: str | None) -> Path:
    """The model file or run folder a command reads: --model, else the newest run."""
    return Path(model) if model else LATEST_RUN


def checkpoints_of(run: Path) -> Path:
    return run / CHECKPOINTS


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first (zero-padded step numbers sort as numbers)."""
    return sorted(folder.glob("step-*.pt")) if folder.is_dir() else []


def resolve_output(output: Path | None, resume: bool, resume_from: Path | None, runs_root: Path = RUNS_DIR) -> Path:
    """The run folder: --output, else the run being resumed (runs/latest or --resume PATH), else runs/<timestamp>."""
    if output is not None:
        return output
    if resume_from is not None:
        path = resume_from.parent if resume_from.is_file() else resume_from
        return path.parent if path.name == CHECKPOINTS else path
    if resume:
        if not (runs_root / LATEST).exists():
            raise MustError(f"--resume: no --output given and no {runs_root / LATEST} to continue: "
                            "pass --output RUN_FOLDER")
        return (runs_root / LATEST).resolve()
    return runs_root / datetime.now().strftime("%Y%m%d-%H%M%S")


def find_checkpoint(run: Path, resume_from: Path | None) -> Path:
    """The checkpoint --resume means: a given file, else the newest in the given or the output run folder."""
    if resume_from is not None and resume_from.is_file():
        return resume_from
    if resume_from is not None and not resume_from.is_dir():
        raise MustError(f"--resume {resume_from}: no such checkpoint: pass a run folder or a "
                        f"{CHECKPOINTS}/step-*.pt file")
    folder = resume_from if resume_from is not None else run
    found = list_checkpoints(checkpoints_of(folder)) or list_checkpoints(folder)
    if not found:
        raise MustError(f"--resume: no checkpoint in {checkpoints_of(folder)}: start without --resume or pass "
                        "--output to the run folder")
    return found[-1]


def open_run(output: Path | None, resume: bool, resume_from: Path | None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume or None), checked writable before any training.

    A fresh run into a folder that holds checkpoints is refused so a finished or stopped run is never mixed up.
    """
    out = resolve_output(output, resume, resume_from)
    checkpoint = find_checkpoint(out, resume_from) if resume else None
    if checkpoint is None and list_checkpoints(checkpoints_of(out)):
        raise MustError(f"{out} already holds checkpoints of a run: add --resume to continue it, "
                        "or pass a new --output")
    prepare_output(out)
    return out, checkpoint


def prepare_output(out: Path) -> None:
    """Fail before training, not after hours, if the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".must-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise MustError(f"cannot write to output folder {out} ({e.strerror}): pass --output to a writable folder") from None


def point_latest(out: Path) -> None:
    """Keep runs/latest pointing at the newest run when runs go to a folder named like RUNS_DIR."""
    if out.parent.name != RUNS_DIR.name:
        return
    tmp = out.parent / f".{LATEST}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    os.replace(tmp, out.parent / LATEST)


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


def check_fingerprint(checkpoint: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse, naming what differs, to resume a checkpoint of another run."""
    diff = [key if isinstance(value, (list, dict)) or len(repr(value)) > 60
            else f"{key} ({saved.get(key)!r} -> {value!r})"
            for key, value in current.items() if saved.get(key) != value]
    if diff:
        raise MustError(f"--resume {checkpoint}: this run differs from the checkpoint in {', '.join(diff)}: "
                        "resume with the same images, classes, model and settings, or start a new --output")
