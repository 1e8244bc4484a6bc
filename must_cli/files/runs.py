"""The run folder on disk: where runs go (runs/, runs/latest), which checkpoint a resume means,
and what must match for a checkpoint to belong to this run.

Imports no torch, so the command line can check a run folder before loading anything heavy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from must_cli.base.config import MustConfig
from must_cli.base.errors import MustError

RUNS_DIR = Path("runs")  # where runs go without --output
LATEST = "latest"  # RUNS_DIR/LATEST links to the newest finished run
LATEST_RUN = RUNS_DIR / LATEST  # the model eval, predict and export use without --model
CHECKPOINTS = "checkpoints"  # resumable checkpoints, inside the run folder
METRICS_FILE = "metrics.jsonl"  # one JSON line per epoch, written by the trainer
MODEL_FILE = "model.safetensors"  # the shipped model; its presence marks a finished run
CONFIG_FILE = "config.toml"  # the run's settings and inputs, written when it starts
LOCK_FILE = ".lock"  # flock-ed for the run's lifetime, removed when it ends; the kernel releases it if the process dies

# Settings that may change on resume: they do not change what is computed (beyond rounding).
RUNTIME_KEYS = frozenset({"device", "workers", "precision", "compile", "grad_checkpointing", "eval_every",
                          "save_every", "keep_checkpoints", "batch_size", "accum_steps", "cache", "cache_dir"})


def model_path(model: str | None) -> Path:
    """The model file or run folder a command reads: --model, else the newest run."""
    return Path(model) if model else LATEST_RUN


def existing_model_file(path: Path) -> Path:
    """The model file behind a run folder or file path; checked before anything heavy is imported."""
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise MustError(f"{file}: no model file here: run `must adapt` first or pass --model PATH")
    return file


def check_inputs_cheaply(images: Path | None, model: str | None, adapted: bool = True) -> None:
    """Fail on a missing IMAGES folder or model file in a blink, before torch is imported."""
    from must_cli.files.images import require_folder

    if images is not None:
        require_folder(images)
    if adapted:
        existing_model_file(model_path(model))


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
                            "pass --resume RUN_FOLDER")
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


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints and drop temp files a kill left behind."""
    found = list_checkpoints(folder)
    for old in [*found[: max(len(found) - keep, 0)], *folder.glob(".step-*.pt.*.tmp")]:
        old.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunPlan:
    """Where a run will write and what it resumes, decided before anything heavy loads or is written."""

    folder: Path
    checkpoint: Path | None  # None: a fresh run
    overwrite: bool = False  # a fresh run may replace a finished or stopped one in ``folder``
    named_here: bool = False  # a runs/<timestamp> name, made unique when the folder is created
    finished: int | None = None  # resuming a finished run: the epochs it ran (checkpoint None: nothing to do)


def plan_run(output: Path | None, resume: bool, resume_from: Path | None, overwrite: bool = False,
             runs_root: Path = RUNS_DIR, epochs: int | None = None) -> RunPlan:
    """Check the run folder can be used as asked; creates nothing (the model may still fail to load).

    Resuming a finished run continues it only when ``epochs`` asks for more than it ran.
    """
    folder = resolve_output(output, resume, resume_from, runs_root)
    done = finished_epochs(folder) if resume else None
    if done is not None and (epochs is None or epochs <= done):
        return RunPlan(folder, None, finished=done)
    plan = RunPlan(folder, find_checkpoint(folder, resume_from) if resume else None, overwrite,
                   output is None and not resume, done)
    refuse_to_clobber(plan)
    return plan


def finished_epochs(folder: Path) -> int | None:
    """The epochs a finished run (one with its model written) ran, from metrics.jsonl; None if unfinished."""
    if not (folder / MODEL_FILE).is_file():
        return None
    try:
        lines = (folder / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        return int(json.loads(lines[-1])["epoch"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # no readable record: resume as before, from the newest checkpoint


def refuse_to_clobber(plan: RunPlan) -> None:
    """A fresh run never mixes with or silently replaces another run's checkpoints or model."""
    if plan.checkpoint is not None or plan.overwrite:
        return
    if list_checkpoints(checkpoints_of(plan.folder)):
        raise MustError(f"{plan.folder} already holds checkpoints of a run: add --resume to continue it, "
                        "--overwrite to start it over, or pass a new --output")
    if (plan.folder / MODEL_FILE).exists():
        raise MustError(f"{plan.folder} holds a finished run ({MODEL_FILE}): pass --overwrite to replace it, "
                        "or a new --output")


class RunFolder:
    """An open run folder: created, and locked (fcntl.flock) until ``close`` or the process ends.

    The lock is the kernel's, so a run killed with -9 never leaves a stale lock behind (only an
    unlocked empty file), and a second `must adapt` into the same folder is refused while the
    first one runs. ``close`` removes the file while still holding the lock, so a finished run
    folder holds no `.lock`; ``_lock`` re-checks that the file it locked is still the one in place.
    """

    def __init__(self, plan: RunPlan):
        self.path = _create_unique(plan.folder) if plan.named_here else plan.folder
        if not plan.named_here:
            prepare_output(self.path)
        self._lock = _lock(self.path)
        try:
            refuse_to_clobber(plan)  # again, under the lock: another run may have finished meanwhile
            if plan.overwrite and plan.checkpoint is None:
                shutil.rmtree(checkpoints_of(self.path), ignore_errors=True)
                (self.path / METRICS_FILE).unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock >= 0:
            (self.path / LOCK_FILE).unlink(missing_ok=True)  # still held: no other run holds this file
            os.close(self._lock)  # releases the flock
            self._lock = -1

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FolderLock(RunFolder):
    """A finished run folder's lock alone, held by a command that changes it (`must verify`): no plan to check."""

    def __init__(self, path: Path):
        self.path, self._lock = path, -1
        self._lock = _lock(path)


def _create_unique(folder: Path) -> Path:
    """``folder``, or ``folder-2``, ``folder-3``...: created atomically, so two runs never share one."""
    for n in range(1, 1000):
        candidate = folder if n == 1 else folder.with_name(f"{folder.name}-{n}")
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise MustError(f"cannot write to output folder {candidate} ({e.strerror}): pass --output to a "
                            "writable folder") from None
    raise MustError(f"{folder.parent}: too many runs started this second: pass --output")


def _lock(folder: Path) -> int:
    """An exclusive flock on ``folder/.lock``, or a one-line refusal while another run holds it.

    A run that ends unlinks the file while locked; one that opened it just before locks a file no
    longer in the folder, so the lock counts only if the path still names the locked file.
    """
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MustError(f"cannot write to output folder {folder} ({e.strerror}): pass --output to a "
                            "writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MustError(f"{folder} is in use by another `must adapt` run: wait for it to finish, or pass "
                            "another --output") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # unlinked (or replaced) between open and flock: lock the file now in place


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
