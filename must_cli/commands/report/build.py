"""`report.html`: one self-contained page that shows what adaptation did to a run's labels, and what is known
about whether it helped: the share of changed labels (exact) and, once `must verify` has labels, the gain.

Everything is inline (CSS, PNG plots, JPEG thumbnails as data URIs), so the file opens offline
in any browser and prints. Numbers come from data.py, the sections from sections.py,
the HTML pieces from html.py, figures from plots.py.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator

from must_cli import __version__
from must_cli.files.atomic import atomic_write_text
from must_cli.method.model import MustModel
from must_cli.base.runtime import pick_device
from must_cli.files.run_dir import RunDir
from must_cli.commands.report.data import ReportData, compute, read_run
from must_cli.commands.report.html import Section, esc, page
from must_cli.commands.report.sections import (
    Changes, accuracy, flips, gain, pseudo_labels, summary, thumbnails, training,
)


def build_report(run_dir: Path, images: Path | None = None, eval_dir: Path | None = None, device: str = "auto",
                 workers: int = 0, warn: Callable[[str], None] = lambda message: None,
                 zero_shot: MustModel | None = None) -> Path:
    """Write ``run_dir/report.html`` and return its path; --images/--eval-dir default to what the run recorded."""
    start = time.perf_counter()
    run = read_run(run_dir)
    images = images or (Path(run.record["images"]) if run.record.get("images") else None)
    eval_dir = eval_dir or (Path(run.record["eval_dir"]) if run.record.get("eval_dir") else None)
    d = compute(run, images, eval_dir, pick_device(device), workers, warn, zero_shot)
    note = "" if d.adapted is not None else ('<p class="note">The adaptation images were not found, so what needs '
                                             "them is left out: rebuild with <code>must report RUN --images DIR"
                                             "</code>.</p>")
    parts = sections(d)
    took = time.perf_counter() - start
    out = run.dir.report_file
    atomic_write_text(out, page(run.root.name, f"<p>The adapted model is {esc(d.which_adapted)}.</p>{note}", parts,
                                f"Made by must-cli {__version__} in {took:.1f} s."))
    return out


def sections(d: ReportData) -> list[Section]:
    """The sections the data allows, in page order: those on the adaptation images need them found."""
    parts = [summary(d), training(d)]
    ch = Changes.of(d) if d.adapted is not None else None
    if ch is not None:
        parts += [pseudo_labels(d, ch), flips(d, ch), thumbnails(d, ch)]
    if d.labeled is not None:
        parts.append(accuracy(d))
    if ch is not None:
        parts.append(gain(d, ch))
    return parts


@contextlib.contextmanager
def reported_when_done(run_dir: Path, record: dict, enabled: bool, device: str, workers: int,
                       warn: Callable[[str], None], zero_shot: MustModel | None = None) -> Iterator[None]:
    """Around `must adapt`'s training: however it ends, store what only the run knows and write the report.

    A stop, NaN or full disk is noted in the record and re-raised; a second Ctrl-C ("now") skips
    the report. A report that cannot be written must neither fail a good run nor hide why a
    run stopped, so its own errors become one warning that says how to retry.
    """
    try:
        yield
        record["status"] = "finished"
    except KeyboardInterrupt:
        enabled = False
        raise
    except Exception as e:
        record["status"] = f"ended early: {' '.join(str(e).split())[:300] or type(e).__name__}"
        raise
    finally:
        if enabled:
            try:
                RunDir(run_dir).write_record(record)
                build_report(run_dir, device=device, workers=workers, warn=warn, zero_shot=zero_shot)
            except Exception as e:  # noqa: BLE001 - see the docstring
                warn(f"{RunDir(run_dir).report_file} not written ({' '.join(str(e).split())[:160]}): "
                     f"rebuild it with `must report {run_dir}`")
