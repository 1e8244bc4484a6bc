"""Does the label-free accuracy estimate (must_cli/estimate.py) tell a user whether adaptation helped?

For every adapted run it can find, this script compares the estimate with the truth on the
images the run adapted on:

* estimated vs true top-1 of the zero-shot model and of the adapted model;
* estimated vs true gain (adapted minus zero-shot), with the estimate's bootstrap interval;
* what a guard fed by the estimate would do: ship zero-shot when the estimated gain is below
  zero by more than its own uncertainty, and the accuracy that would then ship.

Runs come from two places:

1. its own small runs (``--make-runs``, on by default): the 32-px stand-in CLIPs of
   ``<shared>/models`` adapted through the real CLI on labeled folders (the model never sees
   a path, so the class sub-folders only serve as the truth here): in-domain on CIFAR-10 train
   files 500 onward (the pool the stand-in never saw), and transductively on severity-5
   corruptions of test images (variants: see SHIFT_VARIANTS / INDOMAIN_VARIANTS), all with
   --no-guard so the raw adapted model is measured;
2. proxy runs (``--proxy-runs DIR``: the ``runs/`` folder that benchmarks/proxy.py fills): any
   folder with a ``result.json`` of an adapted variant; its adaptation folder is read from the
   run's log and the truth from the matching labeled folder.

The estimator was chosen before any of this was measured (docs/method.md, "Label-free accuracy
estimate"); nothing here is tuned on these labels.

    python benchmarks/estimator_check.py                       # about 15 min on a shared 2-core CPU
    python benchmarks/estimator_check.py --proxy-runs benchmarks/_work/runs/quick-xxxx
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from corruptions import corrupt_folder  # noqa: E402  (sibling scripts, not a package)
from proxy import POOL_SKIP, SEVERITY, SHIFT_CORRUPTIONS, link_labeled, materialize, model_inputs, must  # noqa: E402

# Plain self-training at a high lr moves accuracy by points (up under shift, down in-domain), which the
# sign target needs; the preset's MUST barely moves it (docs/benchmarks.md) and is run in-domain only,
# to keep the whole check within about 20 CPU minutes. Proxy runs add every proxy variant.
SHIFT_VARIANTS: dict[str, list[str]] = {
    "st-lr3e-4": ["--preset", "tiny-images", "--no-mim", "--no-align", "--lr", "3e-4"],
}
INDOMAIN_VARIANTS = {
    "must": ["--preset", "tiny-images"], **SHIFT_VARIANTS,
    "st-nofair-lr3e-4": ["--preset", "tiny-images", "--no-mim", "--no-align", "--no-fairness", "--lr", "3e-4"],
}
SIGN_MIN_GAIN = 1.0  # points: the sign target counts settings whose true gain is at least this large


@dataclass(frozen=True)
class Run:
    """One adapted run and the labeled folder holding the images it adapted on."""

    name: str
    folder: Path
    labeled: Path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="folder with models/")
    p.add_argument("--cifar", type=Path, default=REPO.parent / "data" / "cifar10", help="CIFAR-10 {train,test}/<class>/")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "estimator")
    p.add_argument("--per-class", type=int, default=80, help="images per class in each of its own settings")
    p.add_argument("--make-runs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--proxy-runs", type=Path, nargs="*", default=[], help="runs/<size>-<tag> folders of proxy.py")
    p.add_argument("--sample", type=int, default=2000, help="images the estimate looks at per run")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "estimator-check.json")
    p.add_argument("--markdown", type=Path, help="also write the markdown table here")
    return p.parse_args(argv)


def make_runs(args: argparse.Namespace) -> list[Run]:
    """Its own settings: build the labeled folders once, adapt every variant once (finished runs are kept)."""
    data, runs = args.work / "data" / f"pc{args.per_class}", args.work / "runs" / f"pc{args.per_class}"

    def pick(split: str, skip: int) -> list[Path]:
        classes = sorted(p for p in (args.cifar / split).iterdir() if p.is_dir())
        return [f for c in classes for f in sorted(c.iterdir())[skip:skip + args.per_class]]

    settings: list[tuple[str, str, Path, dict[str, list[str]]]] = []
    pool = materialize(data / "indomain", lambda d: link_labeled(pick("train", POOL_SKIP), d))
    settings.append(("indomain", "indomain", pool, INDOMAIN_VARIANTS))
    clean = materialize(data / "shift-clean", lambda d: link_labeled(pick("test", 0), d))
    for c in SHIFT_CORRUPTIONS:
        folder = materialize(data / c, lambda d, c=c: corrupt_folder(clean, d, c, SEVERITY, seed=0))
        settings.append((f"shift:{c}", "shift", folder, SHIFT_VARIANTS))
    out = []
    for name, kind, labeled, variants in settings:
        model, classes, templates = model_inputs(args.shared, args.work, kind)
        for variant, flags in variants.items():
            folder = runs / name.replace(":", "-") / variant
            if not (folder / "model.safetensors").exists():
                print(f"adapting {name} / {variant} ...", file=sys.stderr, flush=True)
                folder.mkdir(parents=True, exist_ok=True)
                must(["adapt", str(labeled), "--classes", str(classes), "--templates", str(templates), "--model", model,
                      "--output", str(folder), "--seed", "0", "--no-guard", "--device", "cpu", "--workers", "1",
                      *flags], folder / "log.txt")
            out.append(Run(f"{name} / {variant}", folder, labeled))
    return out
