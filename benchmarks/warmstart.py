"""Warm start (MUST paper §4.4): warm up on a large pool with the classifier frozen, then adapt on a small folder.

Compares, on the stand-in ``cifar10-tinyclip`` and the balanced CIFAR-10 test split, through
the real command line:

* zero-shot;
* the warm-up run itself (``--freeze-classifier`` on a large unlabeled pool);
* cold start: ``must adapt SMALL`` from the base CLIP;
* warm start: ``must adapt SMALL --init-from WARMUP`` (classifier rebuilt from the text tower).

The large pool and the small folder are disjoint slices of the unlabeled train images (files
500 onward of each class). Same preset everywhere; nothing is tuned on test labels.

    python -m benchmarks.warmstart                   # ~8 min on a 2-core CPU (one seed)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from benchmarks.common import (CIFAR, REPO, SHARED, SHARED_MODELS, SHARED_POOL_SKIP as POOL_SKIP, balanced_subset,
                               device_args, evaluate, link_flat, link_labeled, log, materialize, model_inputs, must,
                               provenance, write_json, zero_shot_args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="folder with models/")
    p.add_argument("--data", type=Path, default=CIFAR, help="CIFAR-10 {train,test}/<class>/")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "warmstart")
    p.add_argument("--large", type=int, default=2000, help="warm-up pool images (balanced)")
    p.add_argument("--small-per-class", type=int, default=50, help="small folder images per class")
    p.add_argument("--test", type=int, default=2000, help="balanced test images")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--preset", default="tiny-images")
    p.add_argument("--adapt-args", default="", help="extra flags for every must adapt run")
    p.add_argument("--device", help="passed to must; default: --device cpu --workers 1")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "warmstart.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    model, classes, templates = model_inputs(args.work, "indomain", args.shared / "models" / SHARED_MODELS["indomain"])
    n_classes = len(classes.read_text().split("\n")[:-1])
    large_per_class = args.large // n_classes
    data = args.work / "data"
    large = materialize(data / "large", lambda d: link_flat(balanced_subset(args.data / "train", args.large,
                                                                              skip=POOL_SKIP), d))
    small = materialize(data / "small", lambda d: link_flat(balanced_subset(
        args.data / "train", args.small_per_class * n_classes, skip=POOL_SKIP + large_per_class), d))
    test = materialize(data / "test", lambda d: link_labeled(balanced_subset(args.data / "test", args.test), d))
    common = ["--classes", str(classes), "--templates", str(templates), "--preset", args.preset,
              *args.adapt_args.split(), *device_args(args.device)]
    runs, log_file = args.work / "runs", args.work / "log.txt"
    runs.mkdir(parents=True, exist_ok=True)
    zero_shot = 100 * evaluate(test, runs / "eval-zero-shot.json", zero_shot_args(model, classes, templates),
                               args.device, log_file)["top1"]
    results = {}
    for seed in args.seeds:
        seeded = [*common, "--seed", str(seed)]
        folders = {name: runs / f"seed{seed}" / name for name in ("warmup", "cold", "warm")}
        plan = {
            "warmup": ["adapt", str(large), "--model", model, "--freeze-classifier"],
            "cold": ["adapt", str(small), "--model", model],
            "warm": ["adapt", str(small), "--init-from", str(folders["warmup"])],
        }
        res = {}
        for name, cmd in plan.items():  # in order: warm needs the warm-up run
            if not (folders[name] / "model.safetensors").exists():
                log(f"seed {seed}: {name}")
                must([*cmd, "--output", str(folders[name]), *seeded], log_file)
            res[name] = 100 * evaluate(test, folders[name] / "eval.json", ["--model", str(folders[name])], args.device,
                                       log_file)["top1"]
        results[str(seed)] = res
    mean = {k: sum(r[k] for r in results.values()) / len(results) for k in ("warmup", "cold", "warm")}
    result = {
        **provenance("benchmarks.warmstart", argv, args.device),
        "sizes": {"large": args.large, "small": args.small_per_class * n_classes, "test": args.test},
        "preset": args.preset, "adapt_args": args.adapt_args, "seeds": args.seeds,
        "zero_shot_top1": zero_shot, "top1": results, "mean_top1": mean, "wall_seconds": round(time.time() - start, 1),
    }
    write_json(args.json, result, indent=1)
    print(f"| zero-shot | warm-up ({args.large} images, classifier frozen) | cold start ({result['sizes']['small']}) "
          f"| warm start ({result['sizes']['small']}) |\n|---|---|---|---|\n"
          f"| {zero_shot:.1f} | {mean['warmup']:.1f} | {mean['cold']:.1f} | {mean['warm']:.1f} |")


if __name__ == "__main__":
    main()
