"""Throughput of a MUST training step and of the data pipeline, printed as one JSON object.

Step: synthetic batches through the real engine (``engine.train_epoch``: must_step, backward,
AdamW step, foreach EMA update), eager fp32 against the optimised path adapt takes on that
device (bf16 autocast; on CUDA also fused AdamW and torch.compile). The tower is built from
its open_clip config with random weights (no download), with a random K-class head. Before
timing, the optimised path's losses are compared with eager fp32 on the same weights and batch.

Data: one generated photo per size, copied into a folder, through TrainViews + DataLoader:
without the resized cache (every epoch decodes the originals), then the cache's first epoch
(builds it) and second epoch (reads it).

    python benchmarks/throughput.py --quick                     # CPU, tiny ViT, seconds
    python benchmarks/throughput.py --model ViT-B-16 --device cuda --batch-sizes 64 256
    python benchmarks/throughput.py --model ViT-L-14 --device cuda --batch-sizes 32 64 \\
        --paths optimised --grad-checkpointing --skip-data      # peak memory per batch size
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from must_cli.base.runtime import adamw, autocast_for, default_workers
from must_cli.files.cache import ResizedCache
from must_cli.base.config import MustConfig
from must_cli.method.engine import TrainState, must_step, train_epoch
from must_cli.method.masking import MaskGenerator, resolve_mask_patch_size
from must_cli.method.clip_loading import build_visual
from must_cli.method.model import MustModel, Preprocess
from must_cli.method.schedule import param_groups
from must_cli.training.builder import build_training
from must_cli.method.views import EpochSampler, TrainViews

# Small towers for CPU runs; any other name is looked up in open_clip's model configs.
LOCAL_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                             "head_width": 16, "mlp_ratio": 2.0}},
    # The 32-px stand-in's tower (benchmarks/models/cifar10-standin): the CPU user's shapes.
    "standin": {"embed_dim": 128, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 6,
                                                 "head_width": 32, "mlp_ratio": 4.0}},
    # ViT-B/16's token grid (224 px, 16-px patches) with a ViT-Ti-sized, 4-block trunk.
    "mini": {"embed_dim": 192, "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 192, "layers": 4,
                                              "head_width": 64, "mlp_ratio": 4.0}},
}
COMPILE = {"auto": "auto", "on": True, "off": False}  # --compile values -> MustConfig.compile
LOSS_KEYS = ("loss", "loss_cls", "loss_fair", "loss_mim", "loss_align")
BF16_TOLERANCE = {"rtol": 2e-2, "atol": 1e-2}  # bf16 keeps 8 mantissa bits: ~0.4% per rounding


def build_model(name: str, classes: int) -> MustModel:
    """Random-weight tower from its config plus a random unit-norm head at CLIP's logit scale 100.

    GELU as open_clip's config says (OpenAI weights use QuickGELU: same cost), so the graphs
    match a `must adapt` run on a local-dir model and inductor's cache serves both.
    """
    cfg = LOCAL_CONFIGS.get(name) or open_clip.get_model_config(name)
    if cfg is None:
        raise SystemExit(f"unknown model {name}: use tiny, mini or an open_clip name such as ViT-B-16")
    visual = build_visual({"embed_dim": cfg["embed_dim"], "vision_cfg": cfg["vision_cfg"]})
    return MustModel(visual, F.normalize(torch.randn(cfg["embed_dim"], classes), dim=0), 100.0)


def synthetic_batch(model: MustModel, batch: int, device: torch.device, cfg: MustConfig) -> dict[str, torch.Tensor]:
    size = model.grid_size * model.patch_size
    masks = MaskGenerator(size, model.patch_size, resolve_mask_patch_size(cfg.mask_patch_size, size, model.patch_size),
                          cfg.mask_ratio)
    rng = np.random.default_rng(0)
    return {"weak": torch.randn(batch, 3, size, size, device=device),
            "strong": torch.randn(batch, 3, size, size, device=device),
            "mask": torch.from_numpy(np.stack([masks(rng) for _ in range(batch)])).to(device)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on CPU the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_values(student, teacher, batch, cfg, autocast) -> dict[str, float]:
    metrics = must_step(student, teacher, batch, cfg, TrainState(), autocast)[1]
    return dict(zip(LOSS_KEYS, (metrics[:5] / batch["weak"].shape[0]).tolist()))


def run_steps(args: argparse.Namespace, path: str, batch: int, device: torch.device) -> dict[str, Any]:
    """img/s and peak memory of one path at one batch size (and, optimised, its losses vs eager fp32).

    compiled: eager's fp32 and plain AdamW, with torch.compile on (any device): what compile alone buys.
    """
    optimised = path == "optimised"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    cfg = MustConfig(accum_steps=args.accum_steps, grad_checkpointing=args.grad_checkpointing,
                     compile=COMPILE[args.compile] if optimised else path == "compiled")
    model = build_model(args.model, args.classes).to(device)
    nets = build_training(model, cfg, device, model.grid_size * model.patch_size,
                          optimizer_kind=None if optimised else "plain").nets
    teacher, optimizer, student, teach = nets.teacher, nets.optimizer, nets.train_student, nets.train_teacher
    autocast = autocast_for(device, "bf16" if optimised else "fp32")
    data = synthetic_batch(model, batch, device, cfg)
    result: dict[str, Any] = {"path": path, "batch": batch, "accum_steps": args.accum_steps,
                              "bf16": optimised, "adamw": nets.runtime["adamw"], "compile": nets.compiled,
                              "grad_checkpointing": args.grad_checkpointing}
    if optimised:  # same weights, same batch: the optimised losses against eager fp32
        ref = loss_values(model, teacher, data, cfg, contextlib.nullcontext)
        opt = loss_values(student, teach, data, cfg, autocast)
        diff = {k: abs(opt[k] - ref[k]) for k in LOSS_KEYS}
        result["loss_check"] = {"fp32": ref, "optimised": opt, "abs_diff": diff, "tolerance": BF16_TOLERANCE,
                                "within_tolerance": all(diff[k] <= BF16_TOLERANCE["rtol"] * abs(ref[k])
                                                        + BF16_TOLERANCE["atol"] for k in LOSS_KEYS)}
    state = TrainState()

    def steps(n: int) -> None:
        batches = (data for _ in range(n * args.accum_steps))
        train_epoch(student, teach, optimizer, batches, cfg, state, 10**6, 1e-5, 1e-6, device, autocast,
                    lambda *a: False)

    start = time.perf_counter()
    steps(args.warmup)  # includes compilation on CUDA
    sync(device)
    result["warmup_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    steps(args.steps)
    sync(device)
    seconds = time.perf_counter() - start
    result["img_per_s"] = round(args.steps * args.accum_steps * batch / seconds, 1)
    result["peak_mem_mb"] = peak_memory_mb(device)
    result["peak_mem_kind"] = "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS so far"
    if device.type == "cuda":  # every CPU<->GPU synchronisation inside one step would warn here
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            steps(1)
        torch.cuda.set_sync_debug_mode("default")
        result["host_syncs_per_step"] = sum("synchroniz" in str(w.message) for w in caught)
    del model, teacher, student, teach, optimizer, nets, data
    return result


def adamw_times(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """ms per AdamW step over the model's layer-decayed groups, per implementation (alternated, medians)."""
    model = build_model(args.model, args.classes).to(device)
    options = {"plain": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    times: dict[str, list[float]] = {kind: [] for kind in options}
    for _ in range(3):
        for kind, option in options.items():
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            optimizer = torch.optim.AdamW(param_groups(model, 0.05, 0.65), lr=1e-5, **option)
            optimizer.step()  # allocates the moments
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            sync(device)
            times[kind].append(1000 * (time.perf_counter() - start) / args.steps)
    chosen = adamw(param_groups(model, 0.05, 0.65), device, (0.9, 0.999))[1]
    return {**{f"{k}_ms": round(float(np.median(v)), 2) for k, v in times.items()}, "chosen": chosen,
            "parameters": sum(p.numel() for p in model.parameters())}


def photo(width: int, height: int) -> Image.Image:
    """A photo-like image (smooth colour regions plus sensor-like noise) that compresses like a real one."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = rng.integers(-10, 11, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def epoch_rate(dataset: TrainViews, n: int, batch: int, workers: int, epochs: int) -> list[float]:
    """img/s of each of ``epochs`` passes (persistent workers: their start-up counts in the first)."""
    sampler = EpochSampler(n, seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
    rates = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        count = sum(b["weak"].shape[0] for b in loader)
        rates.append(round(count / (time.perf_counter() - start), 1))
    return rates


def run_data(args: argparse.Namespace, size: str, root: Path) -> dict[str, Any]:
    width, height = (int(v) for v in size.split("x"))
    folder = root / size
    folder.mkdir()
    photo(width, height).save(folder / "0.jpg", quality=90)
    for i in range(1, args.data_images):
        shutil.copyfile(folder / "0.jpg", folder / f"{i}.jpg")
    paths = sorted(folder.iterdir())
    s = args.data_image_size
    pre = Preprocess(s, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    masks = MaskGenerator(s, 16, resolve_mask_patch_size(32, s, 16), 0.3)
    cache = ResizedCache(root / f"cache-{size}", s)
    batch = min(args.data_batch, len(paths))
    TrainViews(paths, pre, masks, MustConfig())[(0, 0)]  # first-call costs (lazy imports, PIL plugins) stay out of the timings
    uncached = epoch_rate(TrainViews(paths, pre, masks, MustConfig()), len(paths), batch, args.workers, 1)[0]
    first, second = epoch_rate(TrainViews(paths, pre, masks, MustConfig(), cache), len(paths), batch, args.workers, 2)
    return {"size": size, "file_kb": round((folder / "0.jpg").stat().st_size / 1024, 1), "images": len(paths),
            "workers": args.workers, "input_size": s, "uncached_img_per_s": uncached,
            "cache_epoch1_img_per_s": first, "cache_epoch2_img_per_s": second,
            "cached_files": sum(1 for _ in cache.root.rglob("*.jpg")) if cache.root.exists() else 0}


# `must adapt`'s end-to-end rate against the bare step (--e2e): the demo's model, photos and preset.
REPO = Path(__file__).resolve().parents[1]
STANDIN, EXAMPLES = REPO / "benchmarks" / "models" / "cifar10-standin", REPO / "examples"
# Runs `must` like the console script and writes the process's peak RSS (MB) to $MUST_RSS_FILE at exit.
RSS_RUNNER = ("import atexit, os, resource, runpy, sys; atexit.register(lambda: open(os.environ['MUST_RSS_FILE'], 'w')"
              ".write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))); sys.argv = ['must', *sys.argv[1:]]; "
              "runpy.run_module('must_cli', run_name='__main__')")


def e2e_images(root: Path, n: int) -> Path:
    """n photos copied round-robin from examples/photos (the demo's 1,000 unlabeled 32-px CIFAR images)."""
    source = sorted((EXAMPLES / "photos").glob("*.jpg"))
    folder = root / f"images-{n}"
    folder.mkdir()
    for i in range(n):
        shutil.copyfile(source[i % len(source)], folder / f"{i:05d}.jpg")
    return folder


def e2e_bare_step(cfg: MustConfig, steps: int) -> float:
    """img/s of adapt's own nets (build_training: same AdamW, compile setting, frozen parts) on synthetic batches
    of the run's shapes (views, masks), in this process's thread budget: the ceiling an epoch can reach."""
    from must_cli.files.classnames import read_class_file, resolve_templates
    from must_cli.method.model import build_must_model
    from must_cli.training.builder import build_training

    classes = read_class_file(EXAMPLES / "classes.txt")
    model, pre = build_must_model(f"local-dir:{STANDIN}", "", classes,
                                  resolve_templates(EXAMPLES / "templates.txt", cfg.template_set), torch.device("cpu"))
    training = build_training(model, cfg, torch.device("cpu"), pre.image_size)
    masks, nets = training.masks, training.nets
    rng = np.random.default_rng(0)
    b, size = cfg.batch_size, pre.image_size
    batch = {"weak": torch.randn(b, 3, size, size), "strong": torch.randn(b, 3, size, size),
             "mask": torch.from_numpy(np.stack([masks(rng) for _ in range(b)]))}
    autocast, state = autocast_for(torch.device("cpu"), cfg.precision), TrainState()

    def run(n: int) -> None:
        train_epoch(nets.train_student, nets.train_teacher, nets.optimizer, (batch for _ in range(n)), cfg, state,
                    10**6, 1e-4, 1e-6, torch.device("cpu"), autocast, lambda *a: False)

    run(2)
    start = time.perf_counter()
    run(steps)
    return round(steps * b / (time.perf_counter() - start), 1)


def e2e_command(folder: Path, run: Path, epochs: int, extra: list[str]) -> dict[str, Any]:
    """Time `must adapt --preset tiny-images` on ``folder`` in a fresh process (imports included)."""
    rss = run.parent / f"{run.name}.rss"
    cmd = [sys.executable, "-c", RSS_RUNNER, "adapt", str(folder), "--classes", str(EXAMPLES / "classes.txt"),
           "--templates", str(EXAMPLES / "templates.txt"), "--model", f"local-dir:{STANDIN}", "--preset",
           "tiny-images", "--device", "cpu", "--epochs", str(epochs), "--output", str(run), *extra]
    env = {**os.environ, "MUST_RSS_FILE": str(rss), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"must adapt failed ({done.returncode}):\n{done.stderr[-2000:]}")
    epochs_seen = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = sum(r["images_per_second"] * r["seconds"] for r in epochs_seen)
    later = [r["images_per_second"] for r in epochs_seen[1:]] or [epochs_seen[0]["images_per_second"]]
    record = json.loads((run / "run-record.json").read_text()) if (run / "run-record.json").exists() else {}
    return {"wall_s": round(wall, 1), "train_s": round(sum(r["seconds"] for r in epochs_seen), 1),
            "images_trained": round(trained), "epoch1_img_per_s": epochs_seen[0]["images_per_second"],
            "epoch_img_per_s": float(np.median(later)), "command_img_per_s": round(trained / wall, 1),
            "peak_rss_mb": round(float(rss.read_text()), 1), "runtime": record.get("runtime")}


def run_e2e(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Per image count: the bare step, the command, the bare step again; ratios against the two steps' mean.

    On a shared CPU the load moves between minutes, so the step is timed on both sides of the command.
    """
    from must_cli.base.config import resolve_config
    from must_cli.base.runtime import thread_budget

    cfg = resolve_config("tiny-images", overrides={"device": "cpu"})
    workers = default_workers(args.e2e_workers, torch.device("cpu"))
    threads = thread_budget(workers) if args.threads == 0 else args.threads
    extra = ["--workers", str(workers)] if args.e2e_workers >= 0 else []
    if args.threads:  # the command's budget never goes above OMP_NUM_THREADS
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for n in args.e2e_images:
        before = e2e_bare_step(cfg, args.steps)
        epochs = args.e2e_epochs or cfg.epochs
        cmd = e2e_command(e2e_images(root, n), root / f"run-{n}", epochs, extra)
        after = e2e_bare_step(cfg, args.steps)
        bare = round((before + after) / 2, 1)
        rows.append({"images": n, "epochs": epochs, "batch": cfg.batch_size, "workers": workers,
                     "torch_threads": threads, "bare_step_img_per_s": bare, "bare_before_after": [before, after], **cmd,
                     "epoch_over_bare": round(cmd["epoch_img_per_s"] / bare, 2),
                     "command_over_bare": round(cmd["command_img_per_s"] / bare, 2),
                     "train_ms_per_image": round(1000 * cmd["train_s"] / max(cmd["images_trained"], 1), 2)})
    return rows


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def ratios(steps: list[dict], data: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    by = {(r["path"], r["batch"]): r["img_per_s"] for r in steps}
    for (path, b), rate in by.items():
        if path != "eager" and ("eager", b) in by:
            out[f"{path}_over_eager_b{b}"] = round(rate / by["eager", b], 2)
    for r in data:
        out[f"cache_epoch2_over_uncached_{r['size']}"] = round(r["cache_epoch2_img_per_s"] / r["uncached_img_per_s"], 2)
    if len(data) > 1:
        out[f"cached_{data[-1]['size']}_over_{data[0]['size']}"] = round(
            data[-1]["cache_epoch2_img_per_s"] / data[0]["cache_epoch2_img_per_s"], 2)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mini", help="tiny, mini, or an open_clip name (ViT-B-16, ViT-L-14)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    p.add_argument("--paths", nargs="+", default=["eager", "optimised"], choices=["eager", "optimised", "compiled"])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--accum-steps", type=int, default=1)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", choices=sorted(COMPILE), default="auto",
                   help="optimised path: torch.compile as `must adapt --compile` (auto: on CUDA only)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--data-sizes", nargs="+", default=["500x375", "4000x3000"], help="WIDTHxHEIGHT of the JPEGs")
    p.add_argument("--data-images", type=int, default=64, help="images per folder")
    p.add_argument("--data-batch", type=int, default=16)
    p.add_argument("--data-image-size", type=int, default=224, help="views' side in pixels")
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: as must adapt)")
    p.add_argument("--e2e", action="store_true", help="only `must adapt` end to end vs the bare step (stand-in, CPU)")
    p.add_argument("--e2e-images", type=int, nargs="+", default=[500], help="image counts, one command each")
    p.add_argument("--e2e-epochs", type=int, default=0, help="epochs per command (0: the tiny-images preset's)")
    p.add_argument("--e2e-workers", type=int, default=-1, help="DataLoader workers (-1: as must adapt on CPU)")
    p.add_argument("--adamw", action="store_true", help="only AdamW step time per implementation (plain, foreach, fused)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--quick", action="store_true", help="CI-sized: tiny model, few steps, few small images")
    args = p.parse_args(argv)
    if args.quick and args.e2e:
        args.e2e_images, args.e2e_epochs, args.steps = [128], 1, 2
    elif args.quick:
        args.model, args.batch_sizes, args.steps, args.warmup = "tiny", [8], 2, 1
        args.data_sizes, args.data_images, args.data_batch = ["500x375", "1600x1200"], 4, 4
        args.workers = 0 if args.workers < 0 else args.workers
    args.workers = default_workers(args.workers)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    with tempfile.TemporaryDirectory(prefix="must-throughput-") as tmp:
        if args.e2e or args.adamw:
            report = {"e2e": run_e2e(args, Path(tmp))} if args.e2e else {"adamw": adamw_times(args, device)}
            report = {"machine": machine(device), **report}
        else:
            steps = [] if args.skip_steps else [
                run_steps(args, path, b, device) for b in args.batch_sizes for path in args.paths]
            data = [] if args.skip_data else [run_data(args, size, Path(tmp)) for size in args.data_sizes]
            report = {"machine": machine(device), "model": args.model, "classes": args.classes,
                      "steps": steps, "data": data, "ratios": ratios(steps, data)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
