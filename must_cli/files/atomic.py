"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed.

A crash, a kill or a full disk never leaves a half-written model, checkpoint, record or
answer file behind; a full disk becomes one line naming the file and how to carry on.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from must_cli.base.errors import MustError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None], retry: str = "run the command again") -> None:
    """Run ``write(tmp)`` then fsync and rename tmp over ``path``; on any failure remove tmp, keep the old file.

    A full disk (or any other OS error) becomes a one-line MustError naming the file; the
    file gets the usual permissions (mkstemp's are owner-only) so a shared model can be read.
    ``retry`` tells the user how to carry on once space is freed.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e, retry) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path, e, retry) from None
        raise


def _write_error(path: Path, e: OSError, retry: str) -> MustError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return MustError(f"disk full while writing {path}: free space and {retry}")
    return MustError(f"cannot write {path} ({e.strerror or e}): check the folder's permissions and free space")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
