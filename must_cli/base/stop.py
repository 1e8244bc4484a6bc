"""A stop asked for by a signal: the training loop finishes its step, checkpoints and exits cleanly."""

from __future__ import annotations

import signal
import time
from typing import Any


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits cleanly.

    A second signal more than a second later means "now" (KeyboardInterrupt). Repeats within
    the second are the same request delivered twice: on Ctrl-C both the terminal and torchrun
    signal every worker.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal, self._at = signum, time.monotonic()
        elif time.monotonic() - self._at > 1.0:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
