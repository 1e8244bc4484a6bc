"""What a run shows the user: a live progress bar with label-free health signals, and a summary table.

Only rank 0 draws; other ranks get the silent reporter so logs are not repeated N times.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

STAT_LABELS = {
    "loss": "loss",
    "kept": "kept",
    "balance": "bal",
    "agree": "agree",
    "loss_mim": "mim",
    "loss_align": "align",
    "lr": "lr",
}


def format_stats(stats: dict[str, float]) -> str:
    parts = []
    for key, label in STAT_LABELS.items():
        if key in stats:
            v = stats[key]
            parts.append(f"{label} {v:.1e}" if key == "lr" else f"{label} {v:.3f}")
    return "  ".join(parts)


class Reporter:
    """Rich output for the main process: one-line messages, a per-epoch bar, tables."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def info(self, message: str) -> None:
        self.console.print(escape(message), highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=done, stats="")

    def update(self, completed: int, stats: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, stats=format_stats(stats))

    def end_epoch(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(f"{x:.4g}" if isinstance(x, float) else escape(str(x)) for x in r))
        self.console.print(t)


class SilentReporter(Reporter):
    """For ranks other than 0: warnings still reach stderr, nothing else is drawn."""

    def info(self, message: str) -> None:
        pass

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        pass

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass
