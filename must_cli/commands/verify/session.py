"""What the verify page asks and records: the changed images in a random order, blind label pairs, answers.

One changed image at a time, drawn uniformly at random without replacement (a random permutation,
the same on every rerun of the run, so a rerun continues it and never asks an image twice). The
two candidate labels are shown in a random left/right order that names neither model. Each answer
is appended to verify.csv (fsynced) before the next image is shown. Thread-safe: the page's
requests arrive on the server's threads.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from must_cli.files.verify_data import BothPredictions
from must_cli.commands.verify.log import UNDO, Answers, append_answer, read_answers
from must_cli.commands.verify.stats import MIN_VERDICT_LABELS, GainEstimate, estimate_gain, labels_for_margin

CHOICES = ("left", "right", "neither", "skip")


def labeling_order(both: BothPredictions) -> list[int]:
    """The changed images in a random order fixed by the run's images, so reruns and `--list` agree."""
    order = both.changed()
    seed = hashlib.sha256("\n".join(both.paths[i] for i in order).encode()).digest()
    random.Random(seed).shuffle(order)
    return order


@dataclass(frozen=True)
class Question:
    """The image on screen: its index in the run's images and the two labels, left and right."""

    index: int
    left: int  # class index
    right: int


class Session:
    """The state behind the page: the order, the answers so far (from verify.csv), the question on screen."""

    def __init__(self, run: Path, both: BothPredictions, classnames: list[str]):
        self.run, self.both, self.classnames = run, both, classnames
        self.order = labeling_order(both)
        self.answers: Answers = read_answers(run, both)
        self.history = list(self.answers.outcome)  # answered images, oldest first: what undo walks back
        self.missing: list[str] = []  # images that could not be found: skipped without an answer
        self.question: Question | None = None
        self.lock = threading.Lock()
        self._next()

    def _next(self) -> None:
        """Put the next unanswered image that still exists on screen, in a fresh random left/right order."""
        self.question = None
        for i in self.order:
            image = self.both.paths[i]
            if image in self.answers.outcome or image in self.missing:
                continue
            if not self.both.path(i).is_file():
                self.missing.append(image)
                continue
            pair = [self.both.zero_shot.labels[i], self.both.adapted.labels[i]]
            if secrets.randbits(1):
                pair.reverse()
            self.question = Question(i, *pair)
            return

    def estimate(self) -> GainEstimate:
        return estimate_gain(self.answers.tally(), len(self.order), len(self.both.predicted()), self.both.found)

    def outcome(self, q: Question, choice: str, named: str) -> tuple[str, str]:
        """(whose label was right, the class the labeler named) for a choice on the question ``q``."""
        if choice in ("left", "right"):
            picked = q.left if choice == "left" else q.right
        elif choice == "neither" and named in self.classnames:
            picked = self.classnames.index(named)
        else:
            return ("skip", "") if choice == "skip" else ("neither", "")
        if picked == self.both.adapted.labels[q.index]:
            return "adapted", self.classnames[picked]
        if picked == self.both.zero_shot.labels[q.index]:
            return "zero-shot", self.classnames[picked]
        return "neither", self.classnames[picked]

    def answer(self, index: int, choice: str, named: str = "") -> bool:
        """Record an answer to the image on screen; False (nothing recorded) if ``index`` is not that image."""
        with self.lock:
            q = self.question
            if q is None or q.index != index or choice not in CHOICES:
                return False
            outcome, name = self.outcome(q, choice, named)
            image = self.both.paths[q.index]
            append_answer(self.run, image, outcome, name)
            self.answers.outcome[image], self.answers.named[image] = outcome, name
            self.history.append(image)
            self._next()
            return True

    def undo(self) -> bool:
        """Withdraw the latest answer (an ``undo`` line in verify.csv) and ask that image again."""
        with self.lock:
            if not self.history:
                return False
            image = self.history.pop()
            append_answer(self.run, image, UNDO)
            self.answers.outcome.pop(image, None)
            self.answers.named.pop(image, None)
            index = self.both.paths.index(image)
            pair = [self.both.zero_shot.labels[index], self.both.adapted.labels[index]]
            if secrets.randbits(1):
                pair.reverse()
            self.question = Question(index, *pair)
            return True

    def state(self) -> dict:
        """What the page draws: the question (labels only, never which model gave them) and the summary."""
        with self.lock:
            q, est = self.question, self.estimate()
            tally = est.tally
            return {
                "question": None if q is None else {"index": q.index, "left": self.classnames[q.left],
                                                    "right": self.classnames[q.right]},
                "position": tally.labels + tally.skipped + 1, "changed": len(self.order),
                "answered": tally.labels, "skipped": tally.skipped, "missing": list(self.missing),
                "can_undo": bool(self.history), "summary": summary_lines(est),
            }


def points(x: float) -> str:
    return f"{100 * x:+.1f}"


def summary_lines(est: GainEstimate) -> list[str]:
    """The summary the page shows after each answer and `must verify` prints: count, gain, interval, verdict."""
    t = est.tally
    lines = [f"{est.changed:,} of {est.predicted:,} images changed label ({100 * est.share_changed:.1f}%); "
             f"{t.labels:,} answered, {t.skipped:,} skipped"]
    if est.changed == 0:
        lines.append("no label changed, so the gain is exactly 0 on these images: nothing to verify")
        return lines
    if est.gain is None:
        lines.append(f"gain: not known yet; about {labels_for_margin(est.share_changed, est.changed)} answers give "
                     "it to +-2 points")
        return lines
    exact = t.labels == est.changed and est.found == est.predicted
    lines.append(f"gain {points(est.gain)} points" + (" (exact: every changed image is labeled)" if exact else
                 f", 90% interval {points(est.low)} to {points(est.high)}"))
    lines.append(verdict_line(est))
    return lines


def verdict_line(est: GainEstimate) -> str:
    """The verdict in plain words, and why there is none yet (stats.VERDICT_Z says why it waits)."""
    if est.verdict == "helped":
        return "adaptation HELPED: the whole interval is above 0 (and stays so at 99%)"
    if est.verdict == "hurt":
        return "adaptation LOST accuracy: the whole interval is below 0 (and stays so at 99%)"
    if est.tally.labels < MIN_VERDICT_LABELS:
        return f"not known yet whether adaptation helped: keep labeling (a verdict needs {MIN_VERDICT_LABELS} answers)"
    if est.low is not None and (est.low > 0 or est.high < 0):
        return (f"not sure yet: the 90% interval is {'above' if est.low > 0 else 'below'} 0, but it is seen after "
                "every answer, so a verdict waits for the 99% interval to exclude 0 too: keep labeling")
    return "not known yet whether adaptation helped: the interval still includes 0; keep labeling"
