"""One run folder and everything in it: the only place that names the files a run keeps.

`must adapt` writes a run folder; `must report`, `must verify`, `--resume`, predict, eval and
export read it. They all go through ``RunDir`` for the file names, the record, the checkpoints,
the model file and the lock, so a renamed file is changed here and nowhere else.

Imports no torch, so the command line can check a run folder before loading anything heavy; what
a checkpoint says is checkpoint.py's, what config.toml's [meta] records is record.py's.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from must_cli.base.errors import MustError
from must_cli.files.atomic import atomic_write_text

MODEL_FILE = "model.safetensors"  # the shipped model; its presence marks a finished run
ADAPTED_MODEL_FILE = "model-adapted.safetensors"  # the adapted model, kept beside it when verify ships zero-shot
CONFIG_FILE = "config.toml"  # the run's settings and inputs, written when it starts
METRICS_FILE = "metrics.jsonl"  # one JSON line per epoch, written by the trainer
RECORD_FILE = "run-record.json"  # what only the running process knows, written when the run ends
BOTH_FILE = "predictions-both.json"  # both models' labels on the run's images (verify_data.py)
VERIFY_FILE = "verify.csv"  # the answers of `must verify`, one line each
LIST_FILE = "to-label.csv"  # `must verify --list N`'s images to label, in the format --labels reads
REPORT_FILE = "report.html"  # `must report`'s page
PREDICTIONS_FILE = "predictions.csv"  # `must adapt --predict`'s labels of the run's images
CHECKPOINTS = "checkpoints"  # resumable checkpoints, inside the run folder
CACHE_DIR = "cache"  # --cache's resized copies of large photos, unless --cache-dir names another folder
LOCK_FILE = ".lock"  # flock-ed while a command changes the run; the kernel releases it if the process dies


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first (zero-padded step numbers sort as numbers)."""
    return sorted(folder.glob("step-*.pt")) if folder.is_dir() else []


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints and drop temp files a kill left behind."""
    found = list_checkpoints(folder)
    for old in [*found[: max(len(found) - keep, 0)], *folder.glob(".step-*.pt.*.tmp")]:
        old.unlink(missing_ok=True)


def existing_model_file(path: Path) -> Path:
    """The model file behind a run folder or file path; checked before anything heavy is imported."""
    file = RunDir(path).model_file if path.is_dir() else path
    if not file.is_file():
        raise MustError(f"{file}: no model file here: run `must adapt` first or pass --model PATH")
    return file


@dataclass(frozen=True)
class RunDir:
    """A run folder by path: its files, record, checkpoints, model and lock (nothing is read until asked)."""

    path: Path

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def adapted_model_file(self) -> Path:
        return self.path / ADAPTED_MODEL_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_FILE

    @property
    def both_file(self) -> Path:
        return self.path / BOTH_FILE

    @property
    def verify_file(self) -> Path:
        return self.path / VERIFY_FILE

    @property
    def list_file(self) -> Path:
        return self.path / LIST_FILE

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def predictions_file(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def cache(self) -> Path:
        return self.path / CACHE_DIR

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def finished(self) -> bool:
        """A run is finished once its model is written (the model file is written last)."""
        return self.model_file.is_file()

    def checkpoint_files(self) -> list[Path]:
        """The run's checkpoints, oldest first."""
        return list_checkpoints(self.checkpoints)

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint (what a resume continues), or None before the first one."""
        found = self.checkpoint_files()
        return found[-1] if found else None

    def metrics(self) -> list[dict]:
        """metrics.jsonl's records, oldest epoch first ([] before the first epoch ends)."""
        try:
            return [json.loads(line) for line in self._text(self.metrics_file).splitlines() if line.strip()]
        except ValueError as e:
            raise MustError(f"{self.metrics_file}: cannot read the run's metrics ({e}): delete the damaged "
                            "line") from None

    def record(self) -> dict[str, Any]:
        """run-record.json: the facts only the running process knew (images used, device, outcome); {} if none."""
        try:
            record = json.loads(self._text(self.record_file) or "{}")
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            return record
        except ValueError as e:
            raise MustError(f"{self.record_file}: cannot read the run's record ({' '.join(str(e).split())[:100]}): "
                            "delete it (it only adds the images used, the device and the outcome)") from None

    def write_record(self, record: dict[str, Any]) -> None:
        """Store what ``record`` reads back, atomically (a kill keeps the previous record)."""
        atomic_write_text(self.record_file, json.dumps(record, indent=2) + "\n")

    def lock(self) -> FolderLock:
        """The run's lock, held until closed: one command at a time changes a run."""
        return FolderLock(self.path)

    def _text(self, path: Path) -> str:
        """A file of the run as text, "" if it is not there; unreadable is a one-line error naming it."""
        try:
            return path.read_text(encoding="utf-8") if path.is_file() else ""
        except (OSError, UnicodeDecodeError) as e:
            raise MustError(f"{path}: cannot read it ({e}): fix its permissions or delete it") from None


class FolderLock:
    """A run folder's lock (fcntl.flock on RUN/.lock), held until ``close`` or the process ends.

    The lock is the kernel's, so a run killed with -9 never leaves a stale lock behind (only an
    unlocked empty file), and a second command that changes the run is refused while the first
    runs. ``close`` removes the file while still holding the lock, so a finished run folder holds
    no `.lock`; ``_lock`` re-checks that the file it locked is still the one in place.
    """

    def __init__(self, path: Path):
        self.path, self._fd = path, -1
        self._fd = _lock(path)

    def close(self) -> None:
        if self._fd >= 0:
            RunDir(self.path).lock_file.unlink(missing_ok=True)  # still held: no other run holds this file
            os.close(self._fd)  # releases the flock
            self._fd = -1

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _lock(folder: Path) -> int:
    """An exclusive flock on ``folder/.lock``, or a one-line refusal while another run holds it.

    A run that ends unlinks the file while locked; one that opened it just before locks a file no
    longer in the folder, so the lock counts only if the path still names the locked file.
    """
    path = RunDir(folder).lock_file
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
