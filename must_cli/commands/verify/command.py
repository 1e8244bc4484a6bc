"""`must verify RUN`: the gain of adaptation from a few labels on the images whose label changed.

Interactive: a local page (server.py) asks about one changed image at a time. Or from
labels the user has (`--labels FILE`), or a list of images to label elsewhere (`--list N`).
`--choose` ships the better classifier (choice.py). The statistics: stats.py.
"""

from __future__ import annotations

import csv
import json
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from must_cli.files.atomic import atomic_write, atomic_write_text
from must_cli.base.errors import MustError
from must_cli.commands.report.data import both_predictions, load_models, read_run
from must_cli.files.run_dir import MODEL_FILE, VERIFY_FILE, FolderLock, RunDir
from must_cli.base.runtime import pick_device
from must_cli.commands.verify.choice import choose_model
from must_cli.files.verify_data import BothPredictions
from must_cli.commands.verify.log import read_answers, read_label_file
from must_cli.commands.verify.server import VerifyServer
from must_cli.commands.verify.session import Session, labeling_order, summary_lines
from must_cli.commands.verify.stats import CONFIDENCE, GainEstimate, estimate_gain


@dataclass
class VerifyRequest:
    """What `must verify` was asked to do; without labels, list or choose: open the page."""

    run: Path
    images: Path | None = None  # the run's image folder, if it moved
    labels: Path | None = None  # a CSV of image,class
    list_count: int | None = None
    json_out: Path | None = None
    choose: str | None = None  # zero-shot or adapted
    browser: bool = True
    port: int = 0
    device: str = "auto"
    workers: int = 0


@dataclass
class VerifyResult:
    """The summary the page shows, and what else was done."""

    run: Path
    estimate: GainEstimate
    source: str  # where the labels came from
    lines: list[str]
    notes: list[str] = field(default_factory=list)
    listed: Path | None = None
    chosen: str | None = None  # what --choose did, in words
    suggestion: str | None = None  # the command that ships zero-shot, when the whole 90% interval is below 0


def open_run(req: VerifyRequest, warn: Callable[[str], None]) -> tuple[Any, BothPredictions]:
    """The finished run and both models' labels on its images (saved by adapt, else predicted once and saved)."""
    run = read_run(req.run)
    if not run.finished:
        raise MustError(f"{req.run}: the run has no {MODEL_FILE} yet: let `must adapt` finish (or resume it) first")
    images = req.images or (Path(run.record["images"]) if run.record.get("images") else None)
    if images is None or not images.is_dir():
        raise MustError(f"{req.run}: the run's image folder {images or '(not recorded)'} is not there: pass "
                        "--images DIR")
    device = pick_device(req.device)
    both = both_predictions(run, images, lambda: load_models(run, device), warn, device, req.workers)
    if not both.predicted():
        raise MustError(f"{images}: no image could be read: pass --images DIR with the run's images")
    return run, both


def estimate_of(both: BothPredictions, answers: Any) -> GainEstimate:
    return estimate_gain(answers.tally(), len(both.changed()), len(both.predicted()), both.found)


def summary_json(result: VerifyResult) -> dict[str, Any]:
    """`--json FILE`: the numbers of the summary, gains in accuracy points."""
    e = result.estimate
    pts = lambda x: None if x is None else round(100 * x, 3)  # noqa: E731
    return {"run": str(result.run), "gain": pts(e.gain), "interval": [pts(e.low), pts(e.high)],
            "confidence": CONFIDENCE, "labels_used": e.tally.labels, "skipped": e.tally.skipped,
            "adapted_right": e.tally.adapted, "zero_shot_right": e.tally.zero_shot, "neither_right": e.tally.neither,
            "changed": e.changed, "images_predicted": e.predicted, "images_found": e.found,
            "share_changed": pts(e.share_changed), "verdict": e.verdict, "source": result.source,
            "notes": result.notes, "method": "Newcombe's paired-difference interval (method 10) on the changed "
            "images, finite-population corrected, times the share changed (docs/method.md)"}


def write_list(run: Path, both: BothPredictions, answers: Any, count: int) -> Path:
    """`--list N`: the next N unanswered changed images of the labeling order, as an image,class CSV to fill in."""
    if count < 1:
        raise MustError("--list N: N must be 1 or more")
    todo = [i for i in labeling_order(both) if both.paths[i] not in answers.outcome][:count]
    out = RunDir(run).list_file

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "class"])
            writer.writerows([str(both.path(i)), ""] for i in todo)

    atomic_write(out, write)
    return out


def serve(run: Path, both: BothPredictions, classnames: list[str], req: VerifyRequest,
          on_ready: Callable[[str], None]) -> Session:
    """Run the page until Ctrl-C; every answer is already on disk, so stopping loses nothing."""
    session = Session(run, both, classnames)
    server = VerifyServer(session, req.port)
    try:
        on_ready(server.url)
        if req.browser:
            webbrowser.open(server.url)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return session


def locked(run: Path) -> FolderLock:
    """The run folder's lock (the one `must adapt` holds), or a one-line refusal naming verify."""
    if not run.is_dir():
        raise MustError(f"{run} is not a run folder: pass the folder that `must adapt --output` wrote")
    try:
        return RunDir(run).lock()
    except MustError as e:
        if "in use" not in str(e):
            raise
        raise MustError(f"{run} is in use by another `must verify` (or a `must adapt` still running there): "
                        "finish that one first (Ctrl-C in its terminal)") from None


def run_verify(req: VerifyRequest, on_ready: Callable[[str], None] = lambda url: None,
               warn: Callable[[str], None] = lambda message: None) -> VerifyResult:
    """Everything `must verify` does; holds the run's lock throughout, so two verifies never share a run."""
    if req.choose is not None and req.list_count is not None:
        raise MustError("--choose and --list do different things: run them one at a time")
    with locked(req.run):
        run, both = open_run(req, warn)
        notes: list[str] = []
        if req.labels is not None:
            given = read_label_file(req.labels, both, run.classnames)
            answers, source = given.answers, str(req.labels)
            if given.unchanged:
                notes.append(f"{given.unchanged} labeled image(s) kept their label (they cannot move the gain)")
            if given.unsampled:
                notes.append(f"{given.unsampled} labeled image(s) are not among the {len(both.predicted())} "
                             "images both models labeled")
        else:
            answers, source = read_answers(run.root, both), str(run.dir.verify_file)
        listed = session = None
        if req.list_count is not None:
            listed = write_list(run.root, both, answers, req.list_count)
        elif req.labels is None and req.choose is None and both.changed():
            session = serve(run.root, both, run.classnames, req, on_ready)
            answers = session.answers
            if session.missing:
                notes.append(f"{len(session.missing)} image(s) not found (moved or deleted): skipped")
        if answers.elsewhere:
            notes.append(f"{answers.elsewhere} answer(s) in {VERIFY_FILE} are for images no longer in the changed set")
        est = estimate_of(both, answers)
        result = VerifyResult(run.root, est, source, summary_lines(est), notes, listed)
        if req.choose is not None:
            result.chosen = choose_model(run.root, req.choose, est, source)
        elif est.high is not None and est.high < 0 and not str(run.meta.get("chosen", "")).startswith("zero-shot"):
            result.suggestion = (f"must verify {run.root} --choose zero-shot"
                                 + (f" --labels {req.labels}" if req.labels else ""))
        if req.json_out is not None:
            atomic_write_text(req.json_out, json.dumps(summary_json(result), indent=2) + "\n")
        return result
