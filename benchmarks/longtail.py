"""Long-tailed folders: does `--class-prior estimate` beat the paper's uniform fairness target?

Pools are built from the stand-in's unlabeled CIFAR-10 train images (files 500 onward of each
class, never seen in its pretraining) with exponential imbalance: class k (in a fixed, seeded
class order) keeps ``n_max * imbalance^(-k / (K - 1))`` images. Each pool has a matching
long-tailed test set from the test split (same order and imbalance) and is also evaluated
on a balanced test set. Every run goes through the real command line (``must adapt`` /
``must eval``) with the same preset; nothing is tuned on test labels (EM has no knobs). The
estimate's total-variation distance to the pool's true class shares is reported per setting.

    python -m benchmarks.longtail                      # ~15 min on a 2-core CPU (one seed)
    python -m benchmarks.longtail --device cuda --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Sequence

from benchmarks.common import (CIFAR, REPO, SHARED, SHARED_MODELS, SHARED_POOL_SKIP as POOL_SKIP, device_args, evaluate,
                               link_flat, link_labeled, log, materialize, model_inputs, must, provenance, write_json,
                               zero_shot_args)
from must_cli.method.model_file import read_metadata

PRIORS = ("uniform", "estimate")
TARGET_GAIN_LT, TARGET_BALANCED_GAP = 3.0, 0.5  # points; from issue 12


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="folder with models/")
    p.add_argument("--data", type=Path, default=CIFAR, help="CIFAR-10 {train,test}/<class>/")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "longtail")
    p.add_argument("--imbalances", nargs="+", type=float, default=[1, 10, 100], help="1 is the balanced folder")
    p.add_argument("--pool-images", type=int, default=1250, help="about this many pool images per setting")
    p.add_argument("--test-max", type=int, default=500, help="LT test images of the most common class")
    p.add_argument("--balanced-test", type=int, default=200, help="balanced test images per class")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--preset", default="tiny-images")
    p.add_argument("--adapt-args", default="", help="extra flags for every must adapt run")
    p.add_argument("--device", help="passed to must; default: --device cpu --workers 1")
    p.add_argument("--json", type=Path, help="default benchmarks/results/longtail[-estimate].json")
    p.add_argument("--estimate-only", action="store_true",
                   help="no training: the EM estimate's error and the zero-shot accuracy it gives per setting (minutes)")
    args = p.parse_args(argv)
    name = "longtail-estimate.json" if args.estimate_only else "longtail.json"
    args.json = args.json or REPO / "benchmarks" / "results" / name
    return args


def class_counts(n_classes: int, imbalance: float, n_max: int) -> list[int]:
    """Exponential profile: class k of K gets n_max * imbalance^(-k/(K-1)) images (at least 1)."""
    return [max(1, int(n_max * imbalance ** (-k / (n_classes - 1)))) for k in range(n_classes)]


def n_max_for(n_classes: int, imbalance: float, total: int) -> int:
    """The head-class size that gives about ``total`` images for this imbalance."""
    return round(total / sum(imbalance ** (-k / (n_classes - 1)) for k in range(n_classes)))


def long_tailed(split: Path, order: list[str], counts: list[int], skip: int) -> list[Path]:
    """The first ``counts[i]`` files (sorted by name, after ``skip``) of class ``order[i]``."""
    out: list[Path] = []
    for name, n in zip(order, counts):
        files = sorted((split / name).iterdir())[skip:]
        if len(files) < n:
            raise SystemExit(f"{split / name}: {len(files)} images, {n} needed: lower --pool-images/--test-max")
        out += files[:n]
    return out


def scores(labeled: Path, out: Path, model_args: list[str], device: str | None, logfile: Path) -> dict:
    """Top-1 and mean per-class accuracy (points) of one `must eval`, run once."""
    res = evaluate(labeled, out, model_args, device, logfile)
    return {"top1": 100 * res["top1"], "mean_per_class": 100 * res["mean_per_class"]}


def setting_data(imbalance: float, args: argparse.Namespace, order: list[str], balanced: Path
                 ) -> tuple[Path, Path, list[int], list[int]]:
    """(unlabeled pool, labeled LT test, pool counts, test counts) of one imbalance, built once."""
    k = len(order)
    pool_counts = class_counts(k, imbalance, n_max_for(k, imbalance, args.pool_images))
    test_counts = class_counts(k, imbalance, args.test_max)
    data = args.work / "data" / f"if{imbalance:g}"
    pool = materialize(data / "pool", lambda d: link_flat(long_tailed(args.data / "train", order, pool_counts,
                                                                        POOL_SKIP), d))
    if imbalance == 1:
        return pool, balanced, pool_counts, [args.balanced_test] * k
    lt_test = materialize(data / "test", lambda d: link_labeled(long_tailed(args.data / "test", order, test_counts, 0), d))
    return pool, lt_test, pool_counts, test_counts


def estimate_setting(imbalance: float, args: argparse.Namespace, inp: tuple, order: list[str],
                     balanced: Path) -> dict:
    """Label-free prior estimates on one pool against its true shares, and what the EM prior does to
    zero-shot accuracy on the matching test set (Saerens et al.'s posterior correction, no training)."""
    import torch

    from must_cli.method.labeled import labeled_images
    from must_cli.method.inference import iter_probs
    from must_cli.files.images import scan_images
    from must_cli.method.model import build_must_model
    from must_cli.method.priors import em_prior, total_variation

    model_spec, classes_file, templates_file = inp
    classnames = classes_file.read_text().split("\n")[:-1]
    templates = templates_file.read_text().split("\n")[:-1]
    cpu = torch.device("cpu")
    model, pre = build_must_model(model_spec, None, classnames, templates, cpu)
    pool, test, pool_counts, _ = setting_data(imbalance, args, order, balanced)

    def probs(paths: list[Path]) -> torch.Tensor:
        out = torch.zeros(len(paths), len(classnames))
        for idx, p, _ in iter_probs(model, paths, pre, cpu):
            out[idx] = p
        return out

    true = torch.zeros(len(classnames))
    for c, n in zip(order, pool_counts):
        true[classnames.index(c)] = n / sum(pool_counts)
    pool_probs = probs(scan_images(pool, lambda m: None)[0])
    em = em_prior(pool_probs)
    counts = torch.bincount(pool_probs.argmax(1), minlength=len(classnames)).float()
    test_paths, labels = labeled_images(test, classnames, lambda m: None)
    test_probs, labels = probs(test_paths), torch.tensor(labels)
    return {
        "imbalance": imbalance, "pool_images": sum(pool_counts), "test_images": len(test_paths),
        "tv_uniform": total_variation(torch.full_like(true, 1 / len(true)), true),
        "tv_mean_probability": total_variation(pool_probs.mean(0), true),
        "tv_argmax_counts": total_variation(counts / counts.sum(), true), "tv_em": total_variation(em, true),
        "zero_shot_top1": 100 * float((test_probs.argmax(1) == labels).float().mean()),
        "zero_shot_em_corrected_top1": 100 * float(((test_probs * em).argmax(1) == labels).float().mean()),
        "em_prior": {c: round(float(s), 4) for c, s in zip(classnames, em)},
    }


def run_setting(imbalance: float, args: argparse.Namespace, inp: tuple, order: list[str], balanced: Path) -> dict:
    """Zero-shot, then MUST with each prior per seed, on this setting's LT test and the balanced test."""
    tag = f"if{imbalance:g}"
    pool, lt_test, pool_counts, test_counts = setting_data(imbalance, args, order, balanced)
    true = {c: n / sum(pool_counts) for c, n in zip(order, pool_counts)}
    runs = args.work / "runs" / tag
    runs.mkdir(parents=True, exist_ok=True)
    row: dict = {"imbalance": imbalance, "pool_images": sum(pool_counts), "pool_counts": dict(zip(order, pool_counts)),
                 "lt_test_images": sum(test_counts), "variants": {}}
    model, classes, templates = inp
    zs_args, logfile = zero_shot_args(model, classes, templates), runs / "log.txt"
    zs = {"lt": scores(lt_test, runs / "eval-zero-shot-lt.json", zs_args, args.device, logfile),
          "balanced": scores(balanced, runs / "eval-zero-shot-balanced.json", zs_args, args.device, logfile)}
    row["variants"]["zero-shot"] = {"seeds": {"-": zs}}
    for prior in PRIORS:
        per_seed = {}
        for seed in args.seeds:
            folder = runs / prior / f"seed{seed}"
            if not (folder / "model.safetensors").exists():
                log(f"{tag} {prior} seed {seed}: adapting on {sum(pool_counts)} images")
                must(["adapt", str(pool), "--classes", str(classes), "--templates", str(templates), "--model", model,
                      "--output", str(folder), "--seed", str(seed), "--preset", args.preset, "--class-prior", prior,
                      *args.adapt_args.split(), *device_args(args.device)], runs / f"log-{prior}-{seed}.txt")
            adapted = ["--model", str(folder)]
            res = {"lt": scores(lt_test, folder / "eval-lt.json", adapted, args.device, logfile),
                   "balanced": scores(balanced, folder / "eval-balanced.json", adapted, args.device, logfile)}
            meta = read_metadata(folder)
            shares = meta["class_prior"]["shares"]
            res["prior_tv"] = 0.5 * sum(abs(shares[c] - true[c]) for c in order)
            res["chosen"] = meta["chosen"]
            per_seed[str(seed)] = res
        row["variants"][prior] = {"seeds": per_seed}
    return row


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(row: dict) -> dict:
    """Mean over seeds of each number, per variant."""
    out = {}
    for v, cell in row["variants"].items():
        runs = list(cell["seeds"].values())
        out[v] = {f"{t}_{m}": mean([r[t][m] for r in runs]) for t in ("lt", "balanced") for m in ("top1", "mean_per_class")}
        if "prior_tv" in runs[0]:
            out[v]["prior_tv"] = mean([r["prior_tv"] for r in runs])
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| imbalance | pool | variant | LT test top-1 | LT test mean/class | balanced test top-1 | "
             "prior TV error |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for v, s in row["summary"].items():
            tv = f"{s['prior_tv']:.3f}" if "prior_tv" in s else "–"
            lines.append(f"| {row['imbalance']:g} | {row['pool_images']} | {v} | {s['lt_top1']:.1f} | "
                         f"{s['lt_mean_per_class']:.1f} | {s['balanced_top1']:.1f} | {tv} |")
    return "\n".join(lines) + "\n"


def targets(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        s = row["summary"]
        gap_lt = s["estimate"]["lt_top1"] - s["uniform"]["lt_top1"]
        if row["imbalance"] >= 100:
            ok = gap_lt >= TARGET_GAIN_LT
            out.append(f"imbalance {row['imbalance']:g}: estimate >= uniform + {TARGET_GAIN_LT:g} on LT test: "
                       f"{'holds' if ok else 'fails'} ({gap_lt:+.1f})")
        if row["imbalance"] == 1:
            ok = abs(gap_lt) <= TARGET_BALANCED_GAP
            out.append(f"balanced folder: estimate within {TARGET_BALANCED_GAP:g} of uniform: "
                       f"{'holds' if ok else 'fails'} ({gap_lt:+.1f})")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    inp = model_inputs(args.work, "indomain", args.shared / "models" / SHARED_MODELS["indomain"])
    classes = Path(inp[1]).read_text().split("\n")[:-1]
    order = classes[:]
    random.Random(0).shuffle(order)  # which class is the head: fixed, not alphabetical
    per_class = args.balanced_test
    balanced = materialize(args.work / "data" / "balanced-test", lambda d: link_labeled(
        long_tailed(args.data / "test", order, [per_class] * len(order), 0), d))
    if args.estimate_only:
        rows = [estimate_setting(imbalance, args, inp, order, balanced) for imbalance in args.imbalances]
        write_json(args.json, {**provenance("benchmarks.longtail", argv), "class_order": order, "rows": rows}, indent=1)
        for r in rows:
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "em_prior"})
        return
    rows = []
    for imbalance in args.imbalances:
        row = run_setting(imbalance, args, inp, order, balanced)
        row["summary"] = summarize(row)
        rows.append(row)
    result = {
        **provenance("benchmarks.longtail", argv, args.device), "class_order": order, "seeds": args.seeds, "preset": args.preset, "adapt_args": args.adapt_args,
        "wall_seconds": round(time.time() - start, 1), "rows": rows, "targets": targets(rows),
    }
    write_json(args.json, result, indent=1)
    print(markdown(rows))
    print("\n".join(f"- {t}" for t in result["targets"]))


if __name__ == "__main__":
    main()
