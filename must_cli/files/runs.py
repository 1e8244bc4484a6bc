"""Where runs go (runs/, runs/latest), which checkpoint a resume means, and opening a run folder
for a run (created, checked not to clobber another run, locked). What is inside a run folder is
run_dir.py's; what must match for a checkpoint to belong to this run is fingerprint.py's.

Imports no torch, so the command line can check a run folder before loading anything heavy.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from must_cli.base.errors import MustError
from must_cli.files.run_dir import CHECKPOINTS, MODEL_FILE, FolderLock, RunDir, existing_model_file, list_checkpoints

RUNS_DIR = Path("runs")  # where runs go without --output
LATEST = "latest"  # RUNS_DIR/LATEST links to the newest finished run
LATEST_RUN = RUNS_DIR / LATEST  # the model eval, predict and export use without --model


def model_path(model: str | None) -> Path:
    """The model file or run folder a command reads: --model, else the newest run."""
    return Path(model) if model else LATEST_RUN


def check_inputs_cheaply(images: Path | None, model: str | None, adapted: bool = True) -> None:
    """Fail on a missing IMAGES folder or model file in a blink, before torch is imported."""
    from must_cli.files.images import require_folder

    if images is not None:
        require_folder(images)
    if adapted:
        existing_model_file(model_path(model))


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
    folder = RunDir(resume_from if resume_from is not None else run)
    found = folder.checkpoint_files() or list_checkpoints(folder.path)
    if not found:
        raise MustError(f"--resume: no checkpoint in {folder.checkpoints}: start without --resume or pass "
                        "--output to the run folder")
    return found[-1]


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
    run = RunDir(folder)
    if not run.finished:
        return None
    try:
        return int(run.metrics()[-1]["epoch"])
    except (MustError, ValueError, KeyError, IndexError, TypeError):
        return None  # no readable record: resume as before, from the newest checkpoint


def refuse_to_clobber(plan: RunPlan) -> None:
    """A fresh run never mixes with or silently replaces another run's checkpoints or model."""
    if plan.checkpoint is not None or plan.overwrite:
        return
    run = RunDir(plan.folder)
    if run.checkpoint_files():
        raise MustError(f"{plan.folder} already holds checkpoints of a run: add --resume to continue it, "
                        "--overwrite to start it over, or pass a new --output")
    if run.model_file.exists():
        raise MustError(f"{plan.folder} holds a finished run ({MODEL_FILE}): pass --overwrite to replace it, "
                        "or a new --output")


class RunFolder(FolderLock):
    """A run folder opened for a run: created, checked not to clobber another run, and locked
    (FolderLock) until ``close`` or the process ends, so a second `must adapt` into it is refused."""

    def __init__(self, plan: RunPlan):
        path = _create_unique(plan.folder) if plan.named_here else plan.folder
        if not plan.named_here:
            prepare_output(path)
        super().__init__(path)
        try:
            refuse_to_clobber(plan)  # again, under the lock: another run may have finished meanwhile
            if plan.overwrite and plan.checkpoint is None:
                run = RunDir(path)
                shutil.rmtree(run.checkpoints, ignore_errors=True)
                run.metrics_file.unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise


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
