"""The labels behind a verified gain: RUN/verify.csv (the page's answers) and a user's `--labels FILE`.

verify.csv has one line per answer, appended and fsynced at once, so a kill loses nothing:

    image,answer,class,time
    img_0007.jpg,adapted,cat,2026-12-07T12:01:02

``answer`` says whose label was right: adapted, zero-shot, neither, skip; ``undo`` withdraws the
image's last answer (it is asked again). ``class`` is the class the labeler named, if any. The
file names the models' roles, the page never does (it shows the two labels in random order).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from must_cli.base.errors import MustError
from must_cli.files.run_dir import RunDir
from must_cli.files.verify_data import BothPredictions
from must_cli.commands.verify.stats import Tally

HEADER = ["image", "answer", "class", "time"]
OUTCOMES = ("adapted", "zero-shot", "neither", "skip")
UNDO = "undo"


@dataclass
class Answers:
    """The current answer per image (file order; undone ones removed), and lines about images not in the changed set."""

    outcome: dict[str, str] = field(default_factory=dict)
    named: dict[str, str] = field(default_factory=dict)  # image -> class the labeler named
    elsewhere: int = 0  # answers for images outside the changed set (e.g. after the images moved)

    def tally(self) -> Tally:
        t = Tally()
        for outcome in self.outcome.values():
            t = t.add(outcome)
        return t


def read_answers(run: Path, both: BothPredictions) -> Answers:
    """verify.csv's answers that belong to this run's changed set; a damaged line is a one-line error naming it."""
    path = RunDir(run).verify_file
    answers = Answers()
    if not path.is_file():
        return answers
    changed = {both.paths[i] for i in both.changed()}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] != HEADER:
        raise MustError(f"{path}:1: header is {','.join(rows[0])!r}, not {','.join(HEADER)!r}: this is not a "
                        f"verify file; move it away to start over")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER) or row[1] not in (*OUTCOMES, UNDO):
            raise MustError(f"{path}:{line}: damaged line {','.join(row)!r} (expected image,answer,class,time with "
                            f"answer one of {', '.join((*OUTCOMES, UNDO))}): fix or delete that line, then rerun")
        image, answer, name = row[0], row[1], row[2]
        if image not in changed:
            answers.elsewhere += 1
        elif answer == UNDO:
            answers.outcome.pop(image, None)
            answers.named.pop(image, None)
        else:
            answers.outcome[image], answers.named[image] = answer, name
    return answers


def append_answer(run: Path, image: str, answer: str, name: str = "") -> None:
    """Append one answer line and fsync it before returning: the answer survives a kill or a power cut."""
    if answer not in (*OUTCOMES, UNDO):
        raise ValueError(answer)
    path = RunDir(run).verify_file
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    new = not path.is_file() or path.stat().st_size == 0
    if new:
        writer.writerow(HEADER)
    writer.writerow([image, answer, name, datetime.now().isoformat(timespec="seconds")])
    try:
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise MustError(f"cannot write {path} ({e.strerror}): free space or fix the folder's permissions") from None


def outcome_of(both: BothPredictions, index: int, true_class: int | None) -> str:
    """Whose label is right for a changed image whose true class is ``true_class`` (None: unknown, a skip)."""
    if true_class is None:
        return "skip"
    if true_class == both.adapted.labels[index]:
        return "adapted"
    return "zero-shot" if true_class == both.zero_shot.labels[index] else "neither"


@dataclass
class FileLabels:
    """What a `--labels FILE` gave: answers on changed images, and how many labels fell elsewhere."""

    answers: Answers
    unchanged: int  # labeled images whose label did not change (they cannot move the gain)
    unsampled: int  # labeled images of the folder that are not among the predicted images


def _key(path: Path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def read_label_file(file: Path, both: BothPredictions, classnames: list[str]) -> FileLabels:
    """`--labels FILE`: a CSV with an image,class header; paths absolute or relative to the run's image folder."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise MustError(f"--labels {file}: cannot read it ({e}): pass a CSV file with an image,class header") from None
    if not rows or [c.strip().lower() for c in rows[0]] != ["image", "class"]:
        raise MustError(f"--labels {file}:1: the header must be 'image,class': add it as the first line")
    index = {_key(both.path(i)): i for i in range(len(both.paths))}
    changed = set(both.changed())
    by_name = {name: k for k, name in enumerate(classnames)}
    out = FileLabels(Answers(), 0, 0)
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise MustError(f"--labels {file}:{line}: expected 2 columns (image,class), found {len(row)}: fix that line")
        image, name = row[0].strip(), row[1].strip()
        if name not in by_name:
            shown = ", ".join(classnames[:5]) + (", ..." if len(classnames) > 5 else "")
            raise MustError(f"--labels {file}:{line}: class {name!r} is not one of the run's {len(classnames)} "
                            f"classes ({shown}): use the names of its classes file")
        path = Path(image) if Path(image).is_absolute() else both.images / image
        i = index.get(_key(path))
        if i is None:
            if not path.is_file():
                raise MustError(f"--labels {file}:{line}: image {image!r} not found ({path}): give a path absolute "
                                f"or relative to the run's image folder {both.images}")
            out.unsampled += 1
        elif i not in changed:
            out.unchanged += 1
        else:
            out.answers.outcome[both.paths[i]] = outcome_of(both, i, by_name[name])
            out.answers.named[both.paths[i]] = name
    return out
