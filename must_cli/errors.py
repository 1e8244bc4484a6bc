"""The one exception type the CLI turns into a single-line message instead of a traceback."""


class MustError(Exception):
    """A problem the user can fix: the message names the file or value and says how to fix it."""
