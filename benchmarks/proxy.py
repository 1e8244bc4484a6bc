"""Proxy benchmark: does MUST beat zero-shot, and does each part help, on stand-in CLIPs?

Real CLIP weights and the paper's datasets cannot be downloaded here, so the tool is measured
on a stand-in CLIP built to have real CLIP's headroom (``benchmarks/models/cifar10-standin``,
by benchmarks/make_standin.py from the CIFAR-10 train split) and CIFAR-10 (``<shared>/data``),
through the real command line (``must adapt`` / ``must eval`` as subprocesses), in two settings:

* ``indomain``: adapted on its unlabeled pool (train files it never saw, ``proxy_info.pool_files``,
  flattened so the class never shows in a path), evaluated on the clean test split;
* ``shift`` (paper Table 9): the same stand-in (its headroom under the five development
  corruptions is +21 points on average) adapted transductively on corrupted test images
  (severity 5, made with benchmarks/corruptions.py), evaluated on the same images.

``--validation`` replaces the test split by train files the stand-in never saw and that are not
in the pool (``proxy_info.val_files``): hyperparameters are chosen there, never on test labels.

Every variant uses the same hyperparameters (``--preset``, ``--epochs``, ``--adapt-args``):
nothing is tuned per setting on test labels. Each finished run leaves a ``result.json`` in
the work folder and is skipped when the script is started again, so a long run can be resumed.

    python -m benchmarks.proxy --quick            # about an hour on an idle 2-core CPU (one seed: see docs/benchmarks.md)
    python -m benchmarks.proxy --device cuda      # full size
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from must_cli.files.atomic import atomic_write_text
from must_cli.method.model_file import read_metadata
from must_cli.base.config import load_preset
from must_cli.base.errors import MustError

from benchmarks.common import (DEV_CORRUPTIONS, MODELS, REPO, SEVERITY, SHARED, balanced_subset, device_args,
                               extract_cifar, link_flat, link_labeled, log, materialize, model_inputs, must, provenance,
                               train_slice, write_json, zero_shot_args)
from benchmarks.corruptions import CORRUPTIONS, corrupt_folder

SETTINGS = tuple(MODELS)
VARIANT_FLAGS: dict[str, list[str]] = {
    "zero-shot": [], "st": ["--no-mim", "--no-align"], "st_mim": ["--no-align"], "must": [],
    "st_nofair": ["--no-mim", "--no-align", "--no-fairness"],
}
VARIANT_TITLES = {"zero-shot": "zero-shot", "st": "ST", "st_mim": "ST+MIM", "must": "MUST",
                  "st_nofair": "ST w/o fairness"}
SIZES: dict[str, dict[str, int | None]] = {  # images per setting; None: all of them
    "quick": {"pool": 1000, "test": 1000, "shift": 1000},
    "full": {"pool": None, "test": None, "shift": None},
}
METRICS = {"top1": "Top-1 accuracy", "mean_per_class": "Mean per-class accuracy"}


@dataclass(frozen=True)
class Job:
    """One `must eval` (zero-shot, seed None) or one `must adapt` + `must eval` run."""

    setting: str
    corruption: str | None
    variant: str
    seed: int | None

    def folder(self) -> Path:
        run = self.variant if self.seed is None else f"{self.variant}/seed{self.seed}"
        return Path(self.setting, self.corruption or "clean", run)


@dataclass(frozen=True)
class Inputs:
    """What one (setting, corruption) adapts on and is evaluated on."""

    model: str
    classes: Path
    templates: Path
    unlabeled: Path
    labeled: Path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="folder with models/ and data/")
    p.add_argument("--cifar", type=Path, help="an extracted cifar10/ folder (train/, test/) instead of <shared>/data's archive")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work", help="data, runs and per-run results")
    p.add_argument("--quick", action="store_true", help="subsampled sizes for a 2-core CPU")
    p.add_argument("--validation", action="store_true", help="evaluate on unseen train files, not the test split")
    p.add_argument("--limit", type=int, help="at most N images per image set (smoke tests)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--corruptions", nargs="+", choices=sorted(CORRUPTIONS), default=list(DEV_CORRUPTIONS))
    p.add_argument("--variants", nargs="+", choices=list(VARIANT_FLAGS), default=list(VARIANT_FLAGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--preset", default="tiny-images", help="must adapt --preset for every run ('' for none)")
    p.add_argument("--epochs", type=int, help="must adapt --epochs for every run (default: the preset's)")
    p.add_argument("--adapt-args", default="", help="extra flags for every must adapt run: --adapt-args='--lr 1e-4'")
    p.add_argument("--device", help="passed to must; default: --device cpu --workers 1")
    p.add_argument("--json", type=Path, help="default benchmarks/results/proxy-<size>.json")
    p.add_argument("--markdown", type=Path, help="also write the markdown tables here")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 20:
        p.error("--limit must be at least 20 (2 images per class)")
    args.size = f"limit{args.limit}" if args.limit else "quick" if args.quick else "full"
    args.size += "-validation" if args.validation else ""
    args.json = args.json or REPO / "benchmarks" / "results" / f"proxy-{args.size}.json"
    return args


def sizes_of(args: argparse.Namespace) -> dict[str, int | None]:
    return {k: args.limit for k in SIZES["full"]} if args.limit else SIZES["quick" if args.quick else "full"]


def proxy_info(setting: str) -> dict:
    return json.loads((MODELS[setting] / "open_clip_config.json").read_text())["proxy_info"]


def eval_files(cifar: Path, args: argparse.Namespace, setting: str, total: int | None) -> list[Path]:
    """The labeled images of a setting: the test split, or with --validation the stand-in's unseen train files."""
    if not args.validation:
        return balanced_subset(cifar / "test", total)
    return train_slice(cifar, proxy_info(setting)["val_files"], total)


def hyper_args(args: argparse.Namespace) -> list[str]:
    """The adapt flags shared by every run; they name the runs folder so other settings never mix in."""
    flags = (["--preset", args.preset] if args.preset else []) + shlex.split(args.adapt_args)
    return flags + (["--epochs", str(args.epochs)] if args.epochs else [])


def run_tag(args: argparse.Namespace) -> str:
    """Names the runs folder after the adapt flags and the preset's values, so editing a preset never reuses old runs."""
    preset = json.dumps(load_preset(args.preset), sort_keys=True) if args.preset else ""
    return hashlib.sha1((shlex.join(hyper_args(args)) + preset).encode()).hexdigest()[:8]


# ---------------------------------------------------------------- data


def prepare(args: argparse.Namespace) -> dict[tuple[str, str | None], Inputs]:
    """Every (setting, corruption) folder pair, built deterministically under <work>/data/<size>/."""
    cifar = args.cifar or extract_cifar(args.shared, args.work)
    data, sizes = args.work / "data" / args.size, sizes_of(args)
    inputs: dict[tuple[str, str | None], Inputs] = {}
    if "indomain" in args.settings:
        pool = train_slice(cifar, proxy_info("indomain")["pool_files"], sizes["pool"])
        test = eval_files(cifar, args, "indomain", sizes["test"])
        inputs["indomain", None] = Inputs(
            *model_inputs(args.work, "indomain"),
            unlabeled=materialize(data / "indomain" / "pool", lambda d: link_flat(pool, d)),
            labeled=materialize(data / "indomain" / "test", lambda d: link_labeled(test, d)),
        )
    if "shift" in args.settings:
        clean = eval_files(cifar, args, "shift", sizes["shift"])
        clean_dir = materialize(data / "shift" / "clean", lambda d: link_labeled(clean, d))

        def corrupt(dst: Path, corruption: str) -> None:
            log(f"corrupting {len(clean)} test images: {corruption}, severity {SEVERITY}")
            corrupt_folder(clean_dir, dst, corruption, SEVERITY, seed=0)

        for c in args.corruptions:
            labeled = materialize(data / "shift" / c / "labeled", lambda d, c=c: corrupt(d, c))
            corrupted = sorted(p for p in labeled.glob("*/*") if p.is_file())
            inputs["shift", c] = Inputs(
                *model_inputs(args.work, "shift"), labeled=labeled,
                unlabeled=materialize(data / "shift" / c / "flat", lambda d, f=corrupted: link_flat(f, d)),
            )
    return inputs


# ---------------------------------------------------------------- runs


def run_job(job: Job, inp: Inputs, args: argparse.Namespace, folder: Path) -> dict:
    """Adapt (unless zero-shot) then evaluate; the record that goes into result.json."""
    folder.mkdir(parents=True, exist_ok=True)
    logfile = folder / "log.txt"
    record: dict = {"setting": job.setting, "corruption": job.corruption, "variant": job.variant, "seed": job.seed}
    seconds: dict[str, float] = {}
    commands = []
    if job.variant == "zero-shot":
        evaluate = ["eval", str(inp.labeled), *zero_shot_args(inp.model, inp.classes, inp.templates)]
    else:
        adapt = ["adapt", str(inp.unlabeled), "--classes", str(inp.classes), "--templates", str(inp.templates),
                 "--model", inp.model, "--output", str(folder), "--seed", str(job.seed), *hyper_args(args),
                 *VARIANT_FLAGS[job.variant], *device_args(args.device)]
        commands.append(adapt)
        seconds["adapt"] = must(adapt, logfile)
        evaluate = ["eval", str(inp.labeled), "--model", str(folder)]
    evaluate += ["--output", str(folder / "eval.json"), *device_args(args.device)]
    commands.append(evaluate)
    seconds["eval"] = must(evaluate, logfile)
    res = json.loads((folder / "eval.json").read_text())
    if job.variant != "zero-shot":
        record["chosen"] = read_metadata(folder)["chosen"]
    record.update(top1=res["top1"], mean_per_class=res["mean_per_class"], images=res["images"],
                  seconds=seconds, commands=[shlex.join(["must", *c]) for c in commands])
    return record


def plan(args: argparse.Namespace) -> list[Job]:
    """Zero-shot first (one run each: it has no seed), then seed by seed, so a partial run has whole tables."""
    cells = [(s, c) for s in args.settings for c in ([None] if s == "indomain" else args.corruptions)]
    jobs = [Job(s, c, "zero-shot", None) for s, c in cells if "zero-shot" in args.variants]
    adapted = [v for v in args.variants if v != "zero-shot"]
    return jobs + [Job(s, c, v, seed) for seed in args.seeds for s, c in cells for v in adapted]


# ---------------------------------------------------------------- results


def summarize(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: list[dict], variants: Sequence[str]) -> list[dict]:
    """One row per (setting, corruption), plus a shift mean row: per variant mean/std over seeds, delta vs ZS."""
    by_cell: dict[tuple[str, str | None], dict[str, dict[int | None, dict]]] = {}
    for r in records:
        by_cell.setdefault((r["setting"], r["corruption"]), {}).setdefault(r["variant"], {})[r["seed"]] = r
    rows = [_row(s, c, runs, variants) for (s, c), runs in by_cell.items()]
    shift = [by_cell[k] for k in by_cell if k[0] == "shift"]
    if shift:  # per seed, the average over corruptions; only seeds every corruption has
        mean_runs: dict[str, dict[int | None, dict]] = {}
        for v in variants:
            seeds = set.intersection(*(set(cell.get(v, {})) for cell in shift))
            mean_runs[v] = {s: {m: statistics.fmean(cell[v][s][m] for cell in shift) for m in METRICS}
                            for s in sorted(seeds, key=lambda x: -1 if x is None else x)}
        rows.append(_row("shift", "mean", mean_runs, variants))
    return rows


def _row(setting: str, corruption: str | None, runs: dict[str, dict[int | None, dict]],
         variants: Sequence[str]) -> dict:
    cells = {}
    for v in variants:
        if runs.get(v):
            cell: dict = {"seeds": list(runs[v])}
            for m in METRICS:
                cell[m], cell[f"{m}_std"] = summarize([r[m] for r in runs[v].values()])
            cells[v] = cell
    zs = cells.get("zero-shot")
    for v, cell in cells.items():
        if zs and v != "zero-shot":
            cell.update({f"delta_{m}": cell[m] - zs[m] for m in METRICS})
    return {"setting": setting, "corruption": corruption, "variants": cells}


def row_label(row: dict) -> str:
    if row["setting"] == "indomain":
        return "in-domain (clean test)"
    return "shift: mean over corruptions" if row["corruption"] == "mean" else f"shift: {row['corruption']}"


def check_targets(rows: list[dict]) -> list[dict]:
    """The acceptance targets, each holds True/False (None: not measured) with the numbers behind it."""

    def top1(row: dict | None, v: str) -> float | None:
        cell = row and row["variants"].get(v)
        return 100 * cell["top1"] if cell else None

    def target(name: str, holds: bool | None, detail: str) -> dict:
        return {"target": name, "holds": holds, "detail": detail}

    find = {(r["setting"], r["corruption"]): r for r in rows}
    indomain, shift = find.get(("indomain", None)), find.get(("shift", "mean"))
    out = []
    deltas = [(row_label(r), top1(r, "must") - top1(r, "zero-shot")) for r in rows
              if r["corruption"] != "mean" and top1(r, "must") is not None and top1(r, "zero-shot") is not None]
    worst = min(deltas, key=lambda d: d[1], default=None)
    out.append(target("MUST no more than 1 point below zero-shot anywhere", worst and worst[1] >= -1,
                      f"worst: {worst[0]} {worst[1]:+.1f}" if worst else "not measured"))
    for name, row, gain in (("shift", shift, 5.0), ("in-domain", indomain, 3.0)):
        m, z = top1(row, "must"), top1(row, "zero-shot")
        ok = None if m is None or z is None else m >= z + gain
        out.append(target(f"{name}: MUST >= zero-shot + {gain:g}", ok,
                          "not measured" if ok is None else f"{m:.1f} vs {z:.1f} ({m - z:+.1f})"))
    for name, row in (("in-domain", indomain), ("shift", shift)):
        zs, st, sm, mu, nf = (top1(row, v) for v in ("zero-shot", "st", "st_mim", "must", "st_nofair"))
        ok = None if None in (zs, st, sm, mu) else zs < st < sm <= mu
        out.append(target(f"{name}: ZS < ST < ST+MIM <= MUST", ok, "not measured" if ok is None
                          else f"{zs:.1f} / {st:.1f} / {sm:.1f} / {mu:.1f}"))
        ok = None if None in (st, nf) else st > nf
        out.append(target(f"{name}: fairness helps (ST > ST w/o fairness)", ok,
                          "not measured" if ok is None else f"{st:.1f} vs {nf:.1f}"))
    return out


def markdown(rows: list[dict], targets: list[dict], variants: Sequence[str], caption: str) -> str:
    lines = []
    for metric, title in METRICS.items():
        header = " | ".join(VARIANT_TITLES[v] for v in variants)
        lines += [f"**{title} (%)**, {caption}", "", f"| setting | {header} |", "|---" * (len(variants) + 1) + "|"]
        for row in rows:
            cells = []
            for v in variants:
                c = row["variants"].get(v)
                cells.append("–" if c is None else f"{100 * c[metric]:.1f}" if len(c["seeds"]) < 2
                             else f"{100 * c[metric]:.1f} ± {100 * c[metric + '_std']:.1f}")
            lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
        lines.append("")
    verdict = {True: "holds", False: "**fails**", None: "not measured"}
    lines += [f"- {t['target']}: {verdict[t['holds']]}" + (f" ({t['detail']})" if t["holds"] is not None else "")
              for t in targets]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        tag = run_tag(args)  # reads the preset: an unknown one stops here, before any data is built
    except MustError as e:
        raise SystemExit(f"{e}\n(pass --preset '' and the flags with --adapt-args \"...\" instead)") from None
    start = time.time()
    inputs = prepare(args)
    runs = args.work / "runs" / f"{args.size}-{tag}"
    log(f"runs and per-run results in {runs} (adapt flags: {shlex.join(hyper_args(args)) or 'defaults'})")
    records = []
    jobs = plan(args)
    for i, job in enumerate(jobs, 1):
        folder = runs / job.folder()
        result = folder / "result.json"
        name = f"[{i}/{len(jobs)}] {job.folder()}"
        if result.exists():
            records.append(json.loads(result.read_text()))
            log(f"{name}: done before, top-1 {100 * records[-1]['top1']:.1f}")
            continue
        records.append(run_job(job, inputs[job.setting, job.corruption], args, folder))
        atomic_write_text(result, json.dumps(records[-1], indent=2) + "\n")
        took = ", ".join(f"{k} {v:.0f} s" for k, v in records[-1]["seconds"].items())
        log(f"{name}: top-1 {100 * records[-1]['top1']:.1f} ({took})")
    rows = aggregate(records, args.variants)
    targets = check_targets(rows)
    seeds = ", ".join(map(str, args.seeds))
    caption = (f"mean ± std over seeds {seeds}, {args.size} size, "
               f"adapt flags `{shlex.join(hyper_args(args)) or 'defaults'}`")
    md = markdown(rows, targets, args.variants, caption)
    guarded = sum(r.get("chosen", "").startswith("zero-shot") for r in records)
    if guarded:
        md += f"- the collapse guard shipped the zero-shot model in {guarded} adapted run(s)\n"
    report = {
        **provenance("benchmarks.proxy", argv, args.device), "size": args.size, "sizes": sizes_of(args),
        "adapt_flags": hyper_args(args),
        "severity": SEVERITY, "seeds": args.seeds, "wall_seconds_this_invocation": round(time.time() - start, 1),
        "run_seconds_total": round(sum(sum(r["seconds"].values()) for r in records), 1),
        "rows": rows, "targets": targets, "runs": records,
    }
    write_json(args.json, report)
    if args.markdown:
        atomic_write_text(args.markdown, md)
    print(md, end="")
    log(f"results: {args.json}")


if __name__ == "__main__":
    main()
