"""Which tiny-images values do no harm? A grid of (base_lr, epochs, fairness reference batch) judged by its
worst (model, setting) cell, on validation files only (issue 19).

Models: the stand-in with headroom (benchmarks/models/cifar10-standin) and round 1's stand-ins
(<shared>/models/cifar10-tinyclip, cifar10-tinyclip-full), whose zero-shot heads already sit near
their best linear heads: a default must not hurt them.

Settings, all on CIFAR-10 **train** files [4500:5000) of each class (never test files):
* ``indomain``: adapt on 1,000 unlabeled train files [3500:4500) (flat names), score on 1,000
  validation files. cifar10-tinyclip-full was pretrained on the whole train split, so for it these
  files are seen ones: the cell measures "does no harm on a model with no headroom", nothing else.
* ``gaussian_noise``, ``defocus_blur``, ``contrast``: the 1,000 validation files corrupted at
  severity 5 (benchmarks/corruptions.py), adapted on transductively and scored on the same images.
  Impulse noise, saturate and fog are left for a held-out check; nothing here touches test files.

The guard runs offline: adapt ships the adapted model (``guard = false``) and the result records
whether the guard, given the same saved labels (predictions-both.json), would have shipped
zero-shot instead, so each run gives the gain with and without the brake. (The validation grid's
first 44 runs ran the guard of their day in-run; none of them shipped zero-shot, so their gain is
the adapted model's too.)

``--split test`` is the check of the chosen row against issue 19's targets, never used to choose:
the same settings with CIFAR-10 **test** files [0:100) of each class in place of the validation
files (the in-domain pool stays train files [3500:4500)). ``--pool N`` adapts in-domain on N pool images (item 4:
1,000, 4,000, 10,000; the pool slice holds 10,000).

Each run goes through the real CLI (``must adapt``) and is scored in-process against the zero-shot
classifier of the same model on the same images, which also gives the label-free signals a brake
could use (share of changed labels, prediction balance, the last epoch's kept share and
teacher-student agreement). Every finished run writes ``result.json`` and is skipped on a restart.

    python -m benchmarks.preset_grid                     # every row, seed 0 (hours on a 2-core CPU)
    python -m benchmarks.preset_grid --rows r3 ref-2e-3x8 --models standin
    python -m benchmarks.preset_grid --summary           # tables from what has landed
    python -m benchmarks.preset_grid --split test --rows ref-5e-4x4 --seeds 0 1 2
    python -m benchmarks.preset_grid --split test --rows ref-5e-4x4 --models standin --settings indomain --pool 4000
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

import torch

from must_cli.method.model_file import load_model, preprocess_of, read_metadata
from must_cli.method.guard import guard, prediction_balance
from must_cli.method.inference import predict_labels
from must_cli.method.model import build_zero_shot
from must_cli.files.verify_data import load_both

from benchmarks import common
from benchmarks.corruptions import corrupt_folder

SETTINGS = ("indomain", "gaussian_noise", "defocus_blur", "contrast")
POOL, VAL, SIZE = (3500, 4500), (4500, 5000), 1000
BRAKE = 0.993  # the guard's guard_min_balance, applied offline on the test split
# Each row: tiny-images with these values. fair_ref_batch 64 at batch 64 is round 3's fairness (the
# batch's own mean); 1024 is the paper's global batch (engine.fairness_mean).
# Listed in the order they run (--rows keeps this order): the likeliest safe row first (a quarter of
# round 3's learning rate for half its epochs, with item 1's fairness mean: the usual cure for
# self-training that drifts), then round 3's preset, the safe row without item 1, round 3 with it,
# then lower rates.
ROWS: dict[str, dict[str, float]] = {
    "ref-5e-4x4": {"base_lr": 5e-4, "epochs": 4, "fair_ref_batch": 1024},
    "r3": {"base_lr": 2e-3, "epochs": 8, "fair_ref_batch": 64},
    "5e-4x4": {"base_lr": 5e-4, "epochs": 4, "fair_ref_batch": 64},
    "ref-2e-3x8": {"base_lr": 2e-3, "epochs": 8, "fair_ref_batch": 1024},
    "ref-5e-4x8": {"base_lr": 5e-4, "epochs": 8, "fair_ref_batch": 1024},
    "ref-1e-4x8": {"base_lr": 1e-4, "epochs": 8, "fair_ref_batch": 1024},
    "ref-5e-5x4": {"base_lr": 5e-5, "epochs": 4, "fair_ref_batch": 1024},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=common.SHARED)
    p.add_argument("--work", type=Path, default=common.REPO / "benchmarks" / "_work" / "grid")
    p.add_argument("--models", nargs="+", default=["standin", "tinyclip", "tinyclip-full"])
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--split", choices=["validation", "test"], default="validation",
                   help="validation files choose; test files only check the chosen row (issue 19's targets)")
    p.add_argument("--pool", type=int, default=SIZE, help="in-domain pool size (item 4: 1000, 4000, 10000)")
    p.add_argument("--summary", action="store_true", help="print the tables from finished runs and stop")
    p.add_argument("--plot", type=Path, help="with --split test: draw the stand-in's in-domain gain against pool size")
    p.add_argument("--json", type=Path, help="default: benchmarks/results/preset-grid.json (preset-test.json)")
    args = p.parse_args()
    args.root = args.work if args.split == "validation" else args.work / "test"  # data, zero-shot, runs
    name = "preset-grid.json" if args.split == "validation" else "preset-test.json"
    args.json = args.json or common.REPO / "benchmarks" / "results" / name
    return args


def model_dir(shared: Path, name: str) -> Path:
    return common.STANDIN if name == "standin" else shared / "models" / f"cifar10-{name}"


def data(args: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    """(unlabeled folder, labeled folder) per setting, built once under <work>/data."""
    cifar = common.extract_cifar(args.shared, args.work)
    root = args.root / "data"
    if args.split == "test":
        val = common.balanced_subset(cifar / "test", SIZE)
    else:
        val = common.train_slice(cifar, VAL, SIZE)
    pool = common.train_slice(cifar, POOL, args.pool)
    labeled = common.materialize(root / "val", lambda d: common.link_labeled(val, d))
    pooled = root / ("pool" if args.pool == SIZE else f"pool{args.pool}")
    out = {"indomain": (common.materialize(pooled, lambda d: common.link_flat(pool, d)), labeled)}
    for c in SETTINGS[1:]:
        bad = common.materialize(root / c / "labeled", lambda d, c=c: corrupt_folder(labeled, d, c, 5, seed=0))
        files = sorted(p for p in bad.glob("*/*") if p.is_file())
        out[c] = (common.materialize(root / c / "flat", lambda d, f=files: common.link_flat(f, d)), bad)
    return out


def labels_of(folder: Path, classes: list[str]) -> tuple[list[Path], torch.Tensor]:
    paths = sorted(p for p in folder.glob("*/*") if p.is_file())
    return paths, torch.tensor([classes.index(p.parent.name) for p in paths])


def zero_shot(args: argparse.Namespace, name: str, setting: str, labeled: Path) -> dict:
    """Zero-shot predictions on the labeled images, cached as JSON."""
    out = args.root / "zero-shot" / name / setting / "preds.json"
    if out.is_file():
        return json.loads(out.read_text())
    spec, classes_file, templates = common.model_inputs(args.work, "indomain", model_dir(args.shared, name))
    classes = classes_file.read_text().split("\n")[:-1]
    paths, labels = labels_of(labeled, classes)
    model, pre = build_zero_shot(spec, None, classes, templates, torch.device("cpu"))
    preds = predict_labels(model, paths, pre, torch.device("cpu"))
    res = {"preds": preds.tolist(), "labels": labels.tolist(), "top1": (preds == labels).float().mean().item()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res))
    return res


def adapt(args: argparse.Namespace, name: str, setting: str, row: str, seed: int,
          folders: tuple[Path, Path]) -> dict:
    """One `must adapt` run, scored against zero-shot; result.json is the record (skip if present)."""
    cell = setting if args.pool == SIZE or setting != "indomain" else f"{setting}-pool{args.pool}"
    run = args.root / "runs" / row / name / cell / f"seed{seed}"
    if (run / "result.json").is_file():
        return json.loads((run / "result.json").read_text())
    unlabeled, labeled = folders
    zs = zero_shot(args, name, setting, labeled)
    spec, classes_file, templates = common.model_inputs(args.work, "indomain", model_dir(args.shared, name))
    run.parent.mkdir(parents=True, exist_ok=True)
    cfg = run.parent / f"seed{seed}.toml"
    values = {**ROWS[row], "guard": False}  # ship the adapted model; the guard is applied below, offline
    cfg.write_text("".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n" for k, v in values.items()))
    argv = ["adapt", str(unlabeled), "--classes", str(classes_file), "--templates", str(templates), "--model", spec,
            "--preset", "tiny-images", "--config", str(cfg), "--seed", str(seed), "--output", str(run),
            "--overwrite", "--device", "cpu", "--workers", "1"]
    finished = (run / "model.safetensors").is_file()  # written last, atomically: scoring was what stopped
    seconds = None if finished else common.must(argv, run.parent / f"seed{seed}.log")
    model, meta = load_model(run)
    paths, labels = labels_of(labeled, list(meta["classnames"]))
    preds = predict_labels(model, paths, preprocess_of(meta), torch.device("cpu"))
    zs_preds = torch.tensor(zs["preds"])
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [e for e in epochs if "kept" in e][-1] if epochs else {}
    k = len(meta["classnames"])
    res = {
        "model": name, "setting": setting, "row": row, "seed": seed, "values": ROWS[row],
        "zero_shot": zs["top1"], "top1": (preds == labels).float().mean().item(),
        "changed": (preds != zs_preds).float().mean().item(),
        "balance": prediction_balance(preds, k), "balance_zero_shot": prediction_balance(zs_preds, k),
        "kept": last.get("kept"), "agree": last.get("agree"), "chosen": read_metadata(run).get("chosen"),
        "adapt_seconds": seconds, "command": shlex.join(["must", *argv]), "split": args.split, "pool": args.pool,
        "preds": preds.tolist(),  # per image, in the order of zero-shot/<model>/<setting>/preds.json
    }
    res["gain"] = res["top1"] - res["zero_shot"]
    (run / "result.json").write_text(json.dumps(with_guard(res, run), indent=1))
    return res


def with_guard(res: dict, run: Path) -> dict:
    """``res`` plus what the guard makes of the run, from the labels adapt saved (predictions-both.json, the
    guard's own sample): its balance ratio (adapted / zero-shot), whether it brakes, the gain with it on."""
    both = load_both(run)
    if both is not None and "guard_ratio" not in res:
        k = len(read_metadata(run)["classnames"])
        res["guard_ratio"] = prediction_balance(both.adapted.labels, k) / prediction_balance(both.zero_shot.labels, k)
        res["braked"] = guard(both.adapted, both.zero_shot, k, BRAKE) is not None
        res["shipped_gain"] = 0.0 if res["braked"] else res["gain"]
    return res


def table(results: list[dict]) -> str:
    """Gain (points) per row and cell, with each row's mean and worst cell."""
    cells = sorted({(r["model"], r["setting"]) for r in results})
    head = " | ".join(f"{m} {s}" for m, s in cells)
    lines = [f"| row (base_lr, epochs, fair_ref_batch) | {head} | mean | worst |", "|---" * (len(cells) + 3) + "|"]
    for row in ROWS:
        got = {(r["model"], r["setting"]): [] for r in results}
        for r in results:
            if r["row"] == row:
                got[r["model"], r["setting"]].append(100 * r["gain"])
        if not any(got.values()):
            continue
        means = {c: statistics.fmean(v) for c, v in got.items() if v}
        v = ROWS[row]
        shown = " | ".join(f"{means[c]:+.1f}" if c in means else "–" for c in cells)
        full = len(means) == len(cells)
        worst = min(means.items(), key=lambda kv: kv[1])
        lines.append(f"| {row} ({v['base_lr']:g}, {v['epochs']}, {v['fair_ref_batch']}) | {shown} | "
                     f"{statistics.fmean(means.values()):+.1f}{'' if full else ' (partial)'} | "
                     f"{worst[1]:+.1f} ({worst[0][0]} {worst[0][1]}) |")
    return "\n".join(lines)


SIGNALS = {  # label-free, known when a run ends: name -> value from a result
    "changed": lambda r: r["changed"],
    "balance drift": lambda r: r["balance"] - r["balance_zero_shot"],
    "kept": lambda r: r["kept"],
    "agree": lambda r: r["agree"],
}


def brake(results: list[dict]) -> str:
    """Item 3: would "ship zero-shot when a label-free signal crosses t" cut the worst case without costing the mean?

    For each signal and direction, the threshold (among the observed values) that maximises the
    worst gain, ties broken by the mean; a braked run counts as gain 0 (zero-shot shipped). The
    threshold is chosen on these same validation runs, so the effect is an upper bound.
    """
    gains = [100 * r["gain"] for r in results]
    lines = [f"runs: {len(results)}; without a brake: mean {statistics.fmean(gains):+.2f}, worst {min(gains):+.1f}", "",
             "| signal | rule | braked runs | mean gain | worst gain |", "|---|---|---|---|---|"]
    for name, signal in SIGNALS.items():
        values = [signal(r) for r in results]
        if any(v is None for v in values):
            continue
        best = ((min(gains), statistics.fmean(gains)), "never (no threshold helps)", 0)
        for t in sorted(set(values)):
            for op, above in ((">=", True), ("<=", False)):
                braked = [(v >= t) if above else (v <= t) for v in values]
                after = [0.0 if b else g for b, g in zip(braked, gains)]
                key = (min(after), statistics.fmean(after))
                if key > best[0]:
                    best = (key, f"{op} {t:.3f}", sum(braked))
        (worst, mean), rule, n = best
        lines.append(f"| {name} | {'brake when ' if n else ''}{rule} | {n} | {mean:+.2f} | {worst:+.1f} |")
    rows = sorted(results, key=lambda r: r["gain"])
    lines += ["", "| run | gain | " + " | ".join(SIGNALS) + " |", "|---" * (len(SIGNALS) + 2) + "|"]
    for r in rows:
        vals = " | ".join("–" if f(r) is None else f"{f(r):.3f}" for f in SIGNALS.values())
        lines.append(f"| {r['row']} {r['model']} {r['setting']} | {100 * r['gain']:+.1f} | {vals} |")
    return "\n".join(lines)


def targets(results: list[dict]) -> str:
    """Issue 19's targets on the test split: each cell's mean gain over seeds at 1,000 images, without and
    with the brake, and the mean and worst cell (targets: mean >= +3, no cell below -1); then the
    stand-in's in-domain gain by pool size (>= +3.5 at 1,000, rising) with the guard's balance ratios."""
    def spread(v: list[float]) -> str:
        return f"{statistics.fmean(v):+.1f}" + (f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "")

    def cell(model: str, setting: str, pool: int = SIZE) -> list[dict]:
        return [r for r in results if (r["model"], r["setting"], r.get("pool", SIZE)) == (model, setting, pool)]

    lines = ["| model | setting | zero-shot | gain, adapted (mean ± sd over seeds) | gain, shipped (guard on) | "
             "braked |", "|---" * 6 + "|"]
    means: dict[str, list[float]] = {"gain": [], "shipped_gain": []}
    for model, setting in sorted({(r["model"], r["setting"]) for r in results},
                                 key=lambda c: (c[0], SETTINGS.index(c[1]))):
        runs = cell(model, setting)
        gains = {key: [100 * r[key] for r in runs] for key in means}
        for key, v in gains.items():
            means[key].append(statistics.fmean(v))
        lines.append(f"| {model} | {setting.replace('_', ' ')} | {100 * runs[0]['zero_shot']:.1f} | "
                     f"{spread(gains['gain'])} | {spread(gains['shipped_gain'])} | "
                     f"{sum(r['braked'] for r in runs)}/{len(runs)} |")
    at_size = [r for r in results if r.get("pool", SIZE) == SIZE]
    lines.append(f"| **all {len(means['gain'])} cells** | | | **mean {statistics.fmean(means['gain']):+.2f}, worst "
                 f"{min(means['gain']):+.1f}** | **mean {statistics.fmean(means['shipped_gain']):+.2f}, worst "
                 f"{min(means['shipped_gain']):+.1f}** | {sum(r['braked'] for r in at_size)}/{len(at_size)} |")
    lines += ["", "| pool (unlabeled images) | optimiser steps (batch 64) | seeds | gain, adapted | "
              "gain, shipped (guard on) | braked | balance ratio on the guard's sample |", "|---" * 7 + "|"]
    for pool in sorted({r.get("pool", SIZE) for r in results}):
        runs = cell("standin", "indomain", pool)
        if not runs:
            continue
        ratios = ", ".join(f"{r['guard_ratio']:.3f}" for r in runs)
        lines.append(f"| {pool:,} | {runs[0]['values']['epochs'] * (pool // 64)} | {len(runs)} | "
                     f"{spread([100 * r['gain'] for r in runs])} | {spread([100 * r['shipped_gain'] for r in runs])} | "
                     f"{sum(r['braked'] for r in runs)}/{len(runs)} | {ratios} |")
    return "\n".join(lines)


def plot_pool(results: list[dict], out: Path) -> None:
    """Item 4: the stand-in's in-domain gain against pool size: a dot per seed, the mean adapted and shipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r["model"] == "standin" and r["setting"] == "indomain"]
    sizes = sorted({r.get("pool", SIZE) for r in runs})
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for r in runs:
        ax.plot(r.get("pool", SIZE), 100 * r["gain"], "o", color="tab:blue", alpha=0.5)
    for key, color, label in (("gain", "tab:blue", "adapted (mean over seeds)"),
                              ("shipped_gain", "tab:orange", "shipped, guard on (mean)")):
        means = [statistics.fmean(100 * r[key] for r in runs if r.get("pool", SIZE) == n) for n in sizes]
        ax.plot(sizes, means, "-", color=color, label=label)
    ax.axhline(3.5, ls="--", color="grey", lw=1, label="target at 1,000 (+3.5)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xscale="log", xticks=sizes, xticklabels=[f"{n:,}" for n in sizes], xlabel="unlabeled pool (images)",
           ylabel="top-1 gain over zero-shot (points)", title="Stand-in, in-domain, CIFAR-10 test files")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> None:
    args = parse_args()
    if not args.summary:
        folders = data(args)
        for row in [r for r in ROWS if r in args.rows]:  # row by row, so a stopped grid still has whole rows
            for seed in args.seeds:
                for name in args.models:
                    for setting in args.settings:
                        r = adapt(args, name, setting, row, seed, folders[setting])
                        common.log(f"{row} {name} {setting} seed {seed}: zero-shot {100 * r['zero_shot']:.1f} -> "
                                  f"{100 * r['top1']:.1f} ({100 * r['gain']:+.1f}), changed {100 * r['changed']:.1f}%")
    results = [with_guard(json.loads(p.read_text()), p.parent)  # runs recorded before guard_ratio existed
               for p in sorted((args.root / "runs").glob("*/*/*/*/result.json"))]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": common.machine(), "split": args.split, "runs": results}, indent=1))
    if args.split == "test":
        print(targets(results))
        if args.plot:
            plot_pool(results, args.plot)
        return
    grid = [r for r in results if r.get("pool", SIZE) == SIZE]  # the grid's cells; other pool sizes are item 4's
    print(table(grid))
    print()
    print(brake(grid))


if __name__ == "__main__":
    main()
