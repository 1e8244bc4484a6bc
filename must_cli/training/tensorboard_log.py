"""`--tensorboard DIR`: each epoch's scalars (the rows of metrics.jsonl) as TensorBoard events, live.

TensorBoard is an optional extra (`pip install "must-cli[tensorboard]"`), so the import is
checked before training starts and a missing package is a one-line error, not a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from must_cli.base.errors import MustError


class TensorBoardLog:
    """Writes one metrics.jsonl record at a time: train/<name> and eval/<model>_<metric>, by epoch."""

    def __init__(self, logdir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MustError(f"--tensorboard {logdir}: tensorboard is not installed: pip install tensorboard "
                            "(or the must-cli[tensorboard] extra), or leave out --tensorboard") from None
        try:
            self.writer = SummaryWriter(log_dir=str(logdir))
        except OSError as e:
            raise MustError(f"--tensorboard {logdir}: cannot write there ({e.strerror}): pass a writable folder") from None

    def write(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key not in ("epoch", "eval") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, epoch)
        for model, numbers in record.get("eval", {}).items():
            for metric, value in numbers.items():
                self.writer.add_scalar(f"eval/{model}_{metric}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TensorBoardReporter:
    """A reporter that also sends each epoch's record (and the zero-shot evaluation) to TensorBoard.

    The trainer already tells its reporter everything once per epoch, so TensorBoard needs no
    hook of its own; every other call goes to the wrapped reporter unchanged.
    """

    def __init__(self, inner: Any, log: TensorBoardLog) -> None:
        self.inner, self.log = inner, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def evaluated(self, epoch: int, results: dict[str, dict[str, float]]) -> None:
        self.inner.evaluated(epoch, results)
        self.log.write({"epoch": epoch, "eval": results})

    def epoch_done(self, record: dict[str, Any]) -> None:
        self.inner.epoch_done(record)
        self.log.write(record)
