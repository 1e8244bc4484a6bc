"""What a run shows while it works: a progress bar (or, in logs, plain lines) with label-free
health signals, one line per epoch, warnings, and tables.

Laid out for 80 columns: bar, steps and ETA on the first line, metrics on a second. When
stderr is not a terminal (CI logs, nohup) there is no bar: a plain line every tenth of an epoch
or every 10 s, whichever is rarer, carries everything, and each epoch ends with its summary.
Only rank 0 draws; other ranks get SilentReporter.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

STAT_LABELS = {"loss": "loss", "kept": "kept", "balance": "bal", "agree": "agree", "loss_mim": "mim",
               "loss_align": "align", "lr": "lr"}
LINES_PER_EPOCH = 10  # plain (non-terminal) output: at most this many progress lines per epoch...
PLAIN_SECONDS = 10.0  # ...and at most one per this many seconds: a log grows by epochs, not by steps


def format_stats(stats: dict[str, float]) -> str:
    """The step's health signals in under 80 characters ("loss 1.234 kept 0.500 ... lr 1.2e-05")."""
    return " ".join(f"{label} {stats[key]:.1e}" if key == "lr" else f"{label} {stats[key]:.3f}"
                    for key, label in STAT_LABELS.items() if key in stats)


WORD = re.compile(r"\S*`[^`]*`\S*|\S+")  # a word, or a `command` in backticks with its punctuation


def wrap_words(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` columns, broken at spaces; a `command` to copy is never broken.

    A word or command longer than ``width`` gets a line of its own (the terminal folds it, unsplit).
    """
    lines: list[str] = []
    line = ""
    for word in WORD.findall(text):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def emit(console: Console, message: str, label: str = "", style: str = "") -> None:
    """One message, after a styled ``label`` ("warning:"): wrapped at words on a terminal, one line in logs."""
    text = f"{label} {message}" if label else message
    out = Text("\n".join(wrap_words(text, console.width)) if console.is_terminal else text)
    if label:
        out.stylize(style, 0, len(label))
    console.print(out, highlight=False, soft_wrap=True)


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _TwoLineProgress(Progress):
    """A rich bar whose metrics sit on their own line below it, so neither is cut at 80 columns."""

    stats = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.stats:
            yield Text(self.stats, no_wrap=True, overflow="ellipsis")


class Reporter:
    """Output for the main process: one-line messages, a per-epoch bar or plain lines, tables."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: _TwoLineProgress | None = None
        self.task: Any = None
        self._epoch = (0, 0, 0, 0)  # epoch (1-based), epochs, steps in the epoch, steps done when it started
        self._started = 0.0
        self._every = 1
        self._last = (0, 0.0)  # plain output: step and time of the last line printed

    def info(self, message: str) -> None:
        emit(self.console, message)

    def warn(self, message: str) -> None:
        emit(self.console, message, "warning:", "yellow")

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        self._epoch, self._started = (epoch + 1, epochs, total, done), time.monotonic()
        self._every = max(1, total // LINES_PER_EPOCH)
        self._last = (done, self._started)
        if not self.console.is_terminal:
            return
        self.progress = _TwoLineProgress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=done)

    def update(self, completed: int, stats: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.stats = format_stats(stats)
            self.progress.update(self.task, completed=completed)
            return
        epoch, epochs, total, done_before = self._epoch
        now = time.monotonic()
        if completed - self._last[0] < self._every or now - self._last[1] < PLAIN_SECONDS:
            return  # whichever is rarer; the epoch's summary line follows its last step anyway
        self._last = (completed, now)
        elapsed = now - self._started
        rate = (completed - done_before) / elapsed if elapsed > 0 else 0.0
        eta = clock((total - completed) / rate) if rate > 0 else "?"
        self.console.print(f"epoch {epoch}/{epochs} step {completed}/{total} {clock(elapsed)} eta {eta} "
                           f"{format_stats(stats)}", highlight=False, soft_wrap=True, markup=False)

    def end_epoch(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def evaluated(self, epoch: int, results: dict[str, dict[str, float]]) -> None:
        """Accuracy on --eval-dir (epoch 0: zero-shot, before training)."""
        self.info(f"epoch {epoch} on --eval-dir: " + ", ".join(
            f"{name.replace('_', '-')} top-1 {r['top1']:.4f} (mean per class {r['mean_per_class']:.4f})"
            for name, r in results.items()))

    def epoch_done(self, record: dict[str, Any]) -> None:
        """One line per finished epoch with its label-free health signals."""
        line = (f"epoch {record['epoch']}: loss {record['loss']:.4f}, kept {record['kept']:.3f}, "
                f"balance {record['balance']:.3f}, agree {record['agree']:.3f}, {record['images_per_second']} img/s")
        for name, r in record.get("eval", {}).items():
            line += f", {name} top-1 {r['top1']:.4f}"
        self.info(line)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        # The title goes on its own line: as a Table title it wraps to the table's width, which
        # splits a long model path over three lines above a narrow table.
        self.console.print(escape(title), style="italic", soft_wrap=True, highlight=False)
        t = Table()
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(f"{x:.4g}" if isinstance(x, float) else escape(str(x)) for x in r))
        self.console.print(t)


class SilentReporter(Reporter):
    """For ranks other than 0: warnings still reach stderr, nothing else is shown."""

    def info(self, message: str) -> None:
        pass

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        pass

    def update(self, completed: int, stats: dict[str, float]) -> None:
        pass

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass


@contextlib.contextmanager
def images_bar(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """A bar over images for predict: yields ``advance(done, total)``; the bar appears on the first call."""
    progress = Progress(TextColumn(label), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console)
    task = None

    def advance(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task(label, total=total)
        progress.update(task, completed=done)

    try:
        yield advance
    finally:
        progress.stop()
