"""The one exception type the CLI turns into a single-line message instead of a traceback."""


class MustError(Exception):
    """A problem the user can fix: the message names the file or value and says how to fix it."""


class RunStopped(MustError):
    """A run stopped on request (SIGINT, SIGTERM) after saving a checkpoint: not an error, exit 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
