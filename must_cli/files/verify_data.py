"""Both models' labels on the run's images, as `must adapt` saves them: what verify and the report read.

The guard predicts the zero-shot and the adapted model on the run's images (an even sample of up
to guard.GUARD_SAMPLE for large folders) anyway; adapt writes those labels and confidences to
``RUN/predictions-both.json`` so that `must verify` and the report never predict them again.
The changed set (images whose label changed) and its share d come from here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from must_cli.files.atomic import atomic_write_text
from must_cli.base.errors import MustError
from must_cli.files.run_dir import RunDir

FORMAT = "must-cli/predictions-both/1"


@dataclass(frozen=True)
class ModelLabels:
    """One model on the sampled images: top-1 class (-1: undecodable) and its probability."""

    labels: list[int]
    confidence: list[float]

    def valid(self) -> list[bool]:
        return [label >= 0 for label in self.labels]


@dataclass(frozen=True)
class BothPredictions:
    """Zero-shot and adapted labels on the same images; ``found`` images were in the folder."""

    images: Path  # the folder the paths are relative to
    paths: list[str]  # relative (posix) to ``images`` where possible, else absolute
    zero_shot: ModelLabels
    adapted: ModelLabels
    found: int
    adapted_model: str = "ema-teacher"  # which weights "adapted" means

    @classmethod
    def of(cls, images: Path, paths: Sequence[Path], zero_shot: ModelLabels, adapted: ModelLabels, found: int,
           adapted_model: str = "ema-teacher") -> BothPredictions:
        """Both models' labels on ``paths``, kept relative to ``images`` (absolute, symlinks kept) where possible."""
        images = Path(os.path.abspath(images))  # a linked file stays inside the folder
        return cls(images, relative_paths(images, [Path(os.path.abspath(p)) for p in paths]), zero_shot, adapted,
                   found, adapted_model)

    def path(self, index: int) -> Path:
        return self.images / self.paths[index]

    def predicted(self) -> list[int]:
        """Indices both models labeled (decodable images)."""
        return [i for i, (a, b) in enumerate(zip(self.zero_shot.labels, self.adapted.labels)) if a >= 0 and b >= 0]

    def changed(self) -> list[int]:
        """Indices whose label changed: the only images where the two models' accuracies can differ."""
        return [i for i in self.predicted() if self.zero_shot.labels[i] != self.adapted.labels[i]]

    @property
    def share_changed(self) -> float:
        n = len(self.predicted())
        return len(self.changed()) / n if n else 0.0


def relative_paths(images: Path, paths: Sequence[Path]) -> list[str]:
    """Paths relative to the image folder (so a moved folder can be named again), absolute where outside it."""
    out = []
    for p in paths:
        try:
            out.append(Path(p).relative_to(images).as_posix())
        except ValueError:
            out.append(os.fsdecode(p))
    return out


def save_both(run: Path, both: BothPredictions) -> BothPredictions:
    """Write RUN/predictions-both.json atomically; returns ``both``, what load_both reads back."""
    doc = {"format": FORMAT, "images": os.fsdecode(both.images), "found": both.found,
           "adapted_model": both.adapted_model, "paths": both.paths, "zero_shot": both.zero_shot.__dict__,
           "adapted": both.adapted.__dict__}
    atomic_write_text(RunDir(run).both_file, json.dumps(doc, separators=(",", ":")) + "\n")
    return both


def load_both(run: Path, images: Path | None = None) -> BothPredictions | None:
    """RUN/predictions-both.json, or None for a run without one; ``images`` overrides a moved folder."""
    path = RunDir(run).both_file
    if not path.is_file():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        both = BothPredictions(Path(images) if images else Path(doc["images"]), list(doc["paths"]),
                               ModelLabels(**doc["zero_shot"]), ModelLabels(**doc["adapted"]), int(doc["found"]),
                               doc.get("adapted_model", "ema-teacher"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MustError(f"{path}: cannot read it ({' '.join(str(e).split())[:100]}): delete it and it is "
                        "predicted again") from None
    n = len(both.paths)
    if not (len(both.zero_shot.labels) == len(both.adapted.labels) == len(both.zero_shot.confidence) == n):
        raise MustError(f"{path}: its lists differ in length: the file was edited; delete it and it is predicted again")
    return both
