"""`must adapt`: from a folder of unlabeled images and class names to a shipped, adapted classifier.

This module wires the pieces together (inputs, model, views, engine, checkpoints) and
owns the run's side effects: the output folder, progress, signals, resume.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from must_cli import __version__
from must_cli.cache import ResizedCache
from must_cli.checkpoint import (
    MODEL_FILE, atomic_write_text, list_checkpoints, load_checkpoint, save_checkpoint, save_model,
)
from must_cli.classnames import IMAGENET_TEMPLATES, read_class_file, read_templates
from must_cli.config import MustConfig, to_toml
from must_cli.engine import (
    METRIC_NAMES, Dist, TrainState, broadcast_object, init_distributed, param_groups, reduce_sum, scaled_lr,
    train_epoch,
)
from must_cli.errors import MustError
from must_cli.evaluate import accuracy_report, labeled_images, predict_labels
from must_cli.images import display_name, scan_images
from must_cli.masking import MaskGenerator, resolve_mask_patch_size
from must_cli.model import MustModel, build_must_model, vision_config
from must_cli.progress import Reporter, SilentReporter
from must_cli.views import EpochSampler, TrainViews

GUARD_SAMPLE = 2000  # pool images the label-free guard looks at


@dataclass
class AdaptRequest:
    """The inputs of one run besides hyperparameters."""

    images: Path
    classes: Path
    templates: Path | None = None
    output: Path | None = None
    eval_dir: Path | None = None
    resume: str | None = None  # None: fresh run; "auto": latest checkpoint in the output; else a path


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MustError(f"--device {name}: no CUDA GPU is visible here: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MustError(f"--device {name}: not a device: use auto, cpu, cuda or cuda:N") from None


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA (student and teacher), plain fp32 elsewhere."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def default_workers(requested: int) -> int:
    """-1: the cores this process may use, shared among this machine's processes, one left for the main loop.

    Decoding and augmenting both views is CPU-bound (~100 img/s per core), so a fast GPU needs them all.
    """
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(32, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


def compile_for_training(student: torch.nn.Module, teacher: MustModel, device: torch.device,
                         enabled: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torch.compile the student (around DDP, so DDP still overlaps its all-reduce) and the teacher, on CUDA.

    The wrappers share the modules' parameters, so the optimiser, EMA update and checkpoints
    use the plain modules. A graph that fails to compile runs eager instead of ending the run
    (suppress_errors). CPU runs stay eager: inductor needs a C++ toolchain there and gains little.
    """
    if not enabled or device.type != "cuda":
        return student, teacher
    torch._dynamo.config.suppress_errors = True
    return torch.compile(student), torch.compile(teacher)


def resolve_output(request: AdaptRequest, runs_root: Path = Path("runs")) -> Path:
    """The run folder: --output, else the run being resumed (runs/latest or --resume PATH), else runs/<timestamp>."""
    if request.output is not None:
        return request.output
    if request.resume == "auto":
        if not (runs_root / "latest").exists():
            raise MustError("--resume: no --output given and no runs/latest to continue: pass --output RUN_FOLDER")
        return (runs_root / "latest").resolve()
    if request.resume:
        path = Path(request.resume)
        path = path.parent if path.is_file() else path
        return path.parent if path.name == "checkpoints" else path
    return runs_root / datetime.now().strftime("%Y%m%d-%H%M%S")


def find_checkpoint(resume: str, ckpt_dir: Path) -> Path:
    """The checkpoint --resume means: the newest in the run folder ("auto"), or a given file or folder."""
    if resume == "auto":
        found = list_checkpoints(ckpt_dir)
        if not found:
            raise MustError(f"--resume: no checkpoint in {ckpt_dir}: start without --resume or pass --output "
                            "to the run folder")
        return found[-1]
    path = Path(resume)
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if not found:
            raise MustError(f"--resume {path}: no checkpoint found in this folder")
        return found[-1]
    if not path.is_file():
        raise MustError(f"--resume {path}: no such checkpoint: pass a run folder or a checkpoints/step-*.pt file")
    return path


def open_run(req: AdaptRequest, is_main: bool) -> tuple[Path, Path | None]:
    """Rank 0 decides the run folder and the checkpoint to resume, and checks it can write; all ranks get its answer.

    Deciding once matters: a runs/<timestamp> name can differ by a second between processes.
    A fresh run into a folder that holds checkpoints is refused so a finished or stopped run is never mixed up.
    """
    decision: tuple[Path, Path | None] | str = ""
    if is_main:
        try:
            out = resolve_output(req)
            resume = find_checkpoint(req.resume, out / "checkpoints") if req.resume else None
            if resume is None and list_checkpoints(out / "checkpoints"):
                raise MustError(f"{out} already holds checkpoints of a run: add --resume to continue it, "
                                "or pass a new --output")
            prepare_output(out)
            decision = (out, resume)
        except MustError as e:
            decision = str(e)
    decision = broadcast_object(decision)
    if isinstance(decision, str):
        raise agreed_error(is_main, decision)
    return decision


def agreed_error(is_main: bool, message: str) -> BaseException:
    """An error all ranks reach together: rank 0 says it in one line, the others exit with the same code quietly."""
    return MustError(message) if is_main else SystemExit(1)


def prepare_output(out: Path) -> None:
    """Fail before training, not after hours, if the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".must-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise MustError(f"cannot write to output folder {out} ({e.strerror}): pass --output to a writable folder") from None


def point_latest(out: Path) -> None:
    """Keep runs/latest pointing at the newest run when runs go to the default runs/ folder."""
    latest = out.parent / "latest"
    if out.parent.name != "runs":
        return
    tmp = out.parent / ".latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    os.replace(tmp, latest)


def label_balance(hist: torch.Tensor) -> float:
    """Normalised entropy of a class histogram: 1 when every class is predicted equally, 0 for one class."""
    p = hist.float() / hist.sum().clamp_min(1)
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return float(ent / math.log(len(hist))) + 0.0  # + 0.0 turns -0.0 (nothing kept) into 0.0


# Settings that may change on resume: they do not change what is computed (beyond rounding).
RUNTIME_KEYS = frozenset({"device", "workers", "precision", "compile", "grad_checkpointing", "eval_every",
                          "save_every", "keep_checkpoints", "batch_size", "accum_steps", "cache", "cache_dir"})


def run_fingerprint(cfg: MustConfig, classnames: list[str], templates: list[str], paths: list[Path],
                    global_batch: int, steps_per_epoch: int) -> dict:
    """What must match for a checkpoint to be resumed (anything else would silently change the run).

    The per-process batch and accumulation may change (e.g. resume 2 GPUs' run on 1 GPU with
    --accum-steps 2) as long as the global batch and the steps per epoch stay the same.
    """
    images = hashlib.blake2b("\n".join(map(os.fsdecode, paths)).encode("utf-8", "surrogateescape")).hexdigest()
    hyper = {k: v for k, v in cfg.model_dump().items() if k not in RUNTIME_KEYS}
    return {**hyper, "classes": classnames, "templates": templates, "images": f"{len(paths)} files {images[:16]}",
            "global_batch": global_batch, "steps_per_epoch": steps_per_epoch}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits cleanly.

    A second signal more than a second later means "now" (KeyboardInterrupt). Repeats within
    the second are the same request delivered twice: on Ctrl-C both the terminal and torchrun
    signal every worker.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal, self._at = signum, time.monotonic()
        elif time.monotonic() - self._at > 1.0:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def evaluate_models(models: dict[str, MustModel], paths, labels, classnames, pre, device, autocast, workers) -> dict:
    labels_t = torch.tensor(labels)
    out = {}
    for name, m in models.items():
        was_training = m.training
        preds = predict_labels(m, paths, pre, device, workers=workers, autocast=autocast)
        rep = accuracy_report(preds, labels_t, classnames)
        out[name] = {"top1": rep["top1"], "mean_per_class": rep["mean_per_class"]}
        m.train(was_training)
    return out


def run_adapt(req: AdaptRequest, cfg: MustConfig, reporter: Reporter | None = None) -> Path:
    """Adapt CLIP to the images with MUST and write model.safetensors; returns the run folder."""
    classnames = read_class_file(req.classes)
    templates = read_templates(req.templates) if req.templates else list(IMAGENET_TEMPLATES)
    device = pick_device(cfg.device)
    d: Dist = init_distributed(device.type == "cuda")
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    rep = reporter if d.is_main else SilentReporter(reporter.console if reporter else None)
    rep = rep or Reporter()
    warn_once = rep.warn if d.is_main else (lambda message: None)  # input warnings: not once per process

    paths, skipped = scan_images(req.images, warn_once, cfg.max_pixels)
    eval_set = labeled_images(req.eval_dir, classnames, warn_once) if req.eval_dir else None
    out, resume_from = open_run(req, d.is_main)
    ckpt_dir = out / "checkpoints"

    torch.manual_seed(cfg.seed)  # [MSK], ln_patch and decoder initialisation
    model, pre = build_must_model(cfg.model, cfg.pretrained, classnames, templates, device)
    mask_size = resolve_mask_patch_size(cfg.mask_patch_size, pre.image_size, model.patch_size)
    if mask_size != cfg.mask_patch_size:
        rep.info(f"mask squares: {cfg.mask_patch_size} px at 224-px input -> {mask_size} px for this "
                 f"{pre.image_size}-px model (same fraction of the image)")
    use_masks = cfg.mim or cfg.align
    masks = MaskGenerator(pre.image_size, model.patch_size, mask_size, cfg.mask_ratio) if use_masks else None
    model.decoder.requires_grad_(cfg.mim)  # frozen heads stay out of the optimiser and of DDP's reducer
    model.ln_patch.requires_grad_(use_masks)
    model.mask_token.requires_grad_(use_masks)

    per_rank = len(paths) // d.world
    batch = min(cfg.batch_size, per_rank)
    if batch < cfg.batch_size:
        warn_once(f"only {len(paths)} images: batch size lowered from {cfg.batch_size} to {batch}")
    if batch < 2:
        raise MustError(f"{req.images}: {len(paths)} readable image(s) are too few to adapt on: add more images")
    global_batch = batch * d.world * cfg.accum_steps
    batches_per_epoch = (-(-len(paths) // d.world) // batch) // cfg.accum_steps * cfg.accum_steps
    if batches_per_epoch == 0:
        raise MustError(f"{len(paths)} images are fewer than one optimiser step of {global_batch}: lower --batch-size")
    steps_per_epoch = batches_per_epoch // cfg.accum_steps
    total_steps = steps_per_epoch * cfg.epochs
    peak_lr, floor_lr = scaled_lr(cfg.base_lr, global_batch), scaled_lr(cfg.min_lr, global_batch)
    workers = default_workers(cfg.workers)
    autocast = autocast_for(device, cfg.precision)

    zero_shot = copy.deepcopy(model).eval() if cfg.guard or eval_set else None
    teacher = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    model.to(device)
    model.visual.set_grad_checkpointing(cfg.grad_checkpointing)  # student only: the teacher keeps no activations
    student: torch.nn.Module = model
    if d.world > 1:
        student = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=peak_lr, betas=(0.9, 0.999),
        **({"fused": True} if device.type == "cuda" else {}),
    )
    train_student, train_teacher = compile_for_training(student, teacher, device, cfg.compile)

    state = TrainState()
    fingerprint = run_fingerprint(cfg, classnames, templates, [p.relative_to(req.images) for p in paths],
                                  global_batch, steps_per_epoch)
    if resume_from is not None:
        state = _resume(resume_from, fingerprint, cfg, model, teacher, optimizer, rep)

    sampler = EpochSampler(len(paths), cfg.seed, d.rank, d.world)
    cache = ResizedCache(Path(cfg.cache_dir) if cfg.cache_dir else out / "cache", pre.image_size) if cfg.cache else None
    loader = DataLoader(  # workers x 2 batches in flight: enough to absorb slow images, bounded shared memory
        TrainViews(paths, pre, masks, cfg.seed, cache), batch_size=batch, sampler=sampler, num_workers=workers,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )

    def checkpoint(sums: torch.Tensor | None = None, hist: torch.Tensor | None = None) -> None:
        """Every rank calls this (mid-epoch it sums the epoch's metrics across ranks); rank 0 writes."""
        state.epoch_sums = reduce_sum(sums).cpu() if sums is not None else None
        state.epoch_hist = reduce_sum(hist).cpu() if hist is not None else None
        if not d.is_main:
            return
        payload = {
            "student": model.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
            "state": state.__dict__, "rng": _rng_state(), "fingerprint": fingerprint, "config": cfg.model_dump(),
            "must_cli_version": __version__,
        }
        save_checkpoint(ckpt_dir, state.step, payload, cfg.keep_checkpoints)

    if d.is_main:
        rep.info(f"{len(paths)} images, {len(classnames)} classes, {pre.image_size}-px views, "
                 f"{d.world} process(es) x batch {batch} x accum {cfg.accum_steps} = {global_batch}, "
                 f"lr {peak_lr:.2e}, {total_steps} steps on {device}, output {out}")
    zs_pool = None
    guard_paths = paths[:: max(1, len(paths) // GUARD_SAMPLE)]
    if cfg.guard and d.is_main:
        zs_pool = predict_labels(zero_shot, guard_paths, pre, device, workers=workers, autocast=autocast)
    if eval_set and d.is_main and state.step == 0:
        res = evaluate_models({"zero_shot": zero_shot}, *eval_set, classnames, pre, device, autocast, workers)
        state.metrics.append({"epoch": 0, "step": 0, "eval": res})
        rep.info(f"zero-shot on {req.eval_dir}: top-1 {res['zero_shot']['top1']:.4f}, "
                 f"mean per class {res['zero_shot']['mean_per_class']:.4f}")

    log_every = 1 if device.type == "cpu" else 20
    nonfinite, n_images = METRIC_NAMES.index("nonfinite"), METRIC_NAMES.index("images")
    unreadable: set[int] = set()
    stop = StopRequest()
    with stop:
        while state.epoch < cfg.epochs:
            epoch_start = time.time()
            sums = torch.zeros(len(METRIC_NAMES), device=device)
            hist = torch.zeros(len(classnames), device=device)
            if d.is_main and state.epoch_sums is not None:  # resumed mid-epoch: the steps before the stop count
                sums += state.epoch_sums.to(device)
                hist += state.epoch_hist.to(device)
            images_before = float(reduce_sum(sums)[n_images])
            sampler.set_epoch(state.epoch, start=state.batches_done * batch)
            last_lr, halted = [0.0], [False]

            def on_step(st: TrainState, m: torch.Tensor, h: torch.Tensor, lr: float) -> bool:
                sums.add_(m)
                hist.add_(h)
                last_lr[0] = lr
                step_in_epoch = st.batches_done // cfg.accum_steps
                due = st.step % cfg.save_every == 0 and step_in_epoch < steps_per_epoch
                # Ranks agree on NaN/inf and signals when they log and before any checkpoint (so none
                # holds NaN): one small all-reduce that waits for the GPU, hence not every step. A single
                # process reacts to a signal at the next step.
                if not (due or st.step % log_every == 0 or step_in_epoch == steps_per_epoch
                        or (d.world == 1 and stop.signal is not None)):
                    return False
                flags = torch.stack([sums[nonfinite], sums.new_tensor(float(stop.signal is not None))])
                bad, stopping = reduce_sum(flags).tolist()
                if bad:
                    kept = list_checkpoints(ckpt_dir)
                    raise agreed_error(d.is_main,
                        f"the loss became NaN/inf by step {st.step}: lower --lr (or use --precision fp32); "
                        + (f"last good checkpoint kept: {kept[-1]}" if kept else "no checkpoint was written yet"))
                rep.update(step_in_epoch, _stats(reduce_sum(sums), reduce_sum(hist), lr))
                if (due or stopping) and step_in_epoch < steps_per_epoch:
                    checkpoint(sums, hist)
                halted[0] = bool(stopping)
                return halted[0]

            rep.start_epoch(state.epoch, cfg.epochs, steps_per_epoch, state.batches_done // cfg.accum_steps)
            try:
                rest = itertools.islice(loader, batches_per_epoch - state.batches_done)
                train_epoch(train_student, train_teacher, optimizer,
                            _report_unreadable(rest, paths, unreadable, rep.warn),
                            cfg, state, total_steps, peak_lr, floor_lr, device, autocast, on_step)
            finally:
                rep.end_epoch()
            stopped = agreed_error(d.is_main,
                f"stopped by {signal.Signals(stop.signal).name if stop.signal else 'a signal to another process'} "
                f"at step {state.step}: checkpoint saved; continue with `must adapt ... --output {out} --resume`")
            if halted[0] and state.batches_done < batches_per_epoch:
                raise stopped
            total, h = reduce_sum(sums), reduce_sum(hist)
            record = {"epoch": state.epoch + 1, "step": state.step, **_stats(total, h, last_lr[0]),
                      "seconds": round(time.time() - epoch_start, 2)}
            seen = float(total[n_images]) - images_before  # this session's images only, after a resume
            record["images_per_second"] = round(seen / max(record["seconds"], 1e-9), 1)
            if eval_set and d.is_main and ((state.epoch + 1) % cfg.eval_every == 0 or state.epoch + 1 == cfg.epochs):
                record["eval"] = evaluate_models({"teacher": teacher, "student": model}, *eval_set, classnames,
                                                 pre, device, autocast, workers)
            state.metrics.append(record)
            state.epoch += 1
            state.batches_done = 0
            if d.is_main:
                _report_epoch(rep, record)
                atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.metrics))
            checkpoint()
            if halted[0] and state.epoch < cfg.epochs:
                raise stopped

    final: MustModel = teacher
    guard_note = None
    if cfg.guard and d.is_main:
        final, guard_note = _guard(teacher, zero_shot, zs_pool, guard_paths,
                                   pre, device, autocast, workers, rep)
    if d.is_main:
        meta = {
            "vision_config": vision_config(cfg.model, model.visual), "classnames": classnames,
            "templates": templates, "preprocess": pre.__dict__, "config": to_toml(cfg),
            "source_model": {"model": cfg.model, "pretrained": cfg.pretrained},
            "chosen": "zero-shot (guard)" if guard_note else "ema-teacher",
        }
        save_model(out / MODEL_FILE, final, meta)
        atomic_write_text(out / "config.toml", to_toml(cfg))
        point_latest(out)
        _summary(rep, state.metrics, out, len(skipped), guard_note)
    if d.world > 1:
        # The others wait while rank 0 runs the guard and writes the model.
        torch.distributed.barrier(device_ids=[device.index] if device.type == "cuda" else None)
        torch.distributed.destroy_process_group()
    return out


def _report_unreadable(batches: Iterable[dict], paths: list[Path], seen: set[int],
                       warn: Callable[[str], None]) -> Iterator[dict]:
    """Warn once per file that passed the header scan but fails to decode (e.g. truncated data).

    TrainViews already substituted another image, so training goes on; the user learns which file to fix.
    """
    for b in batches:
        for i in b.pop("bad").tolist():
            if i >= 0 and i not in seen:
                seen.add(i)
                warn(f"cannot decode {display_name(paths[i])} (truncated or corrupt): another image was used "
                     "in its place; replace or remove it")
        yield b


def _stats(total: torch.Tensor, hist: torch.Tensor, lr: float) -> dict[str, float]:
    values = dict(zip(METRIC_NAMES, total.tolist()))
    n = max(values["images"], 1.0)
    return {
        "loss": values["loss"] / n, "loss_cls": values["loss_cls"] / n, "loss_fair": values["loss_fair"] / n,
        "loss_mim": values["loss_mim"] / n, "loss_align": values["loss_align"] / n, "kept": values["kept"] / n,
        "agree": values["agree"] / n, "balance": label_balance(hist), "lr": lr,
    }


def _report_epoch(rep: Reporter, record: dict) -> None:
    line = (f"epoch {record['epoch']}: loss {record['loss']:.4f}, kept {record['kept']:.3f}, "
            f"balance {record['balance']:.3f}, agree {record['agree']:.3f}, {record['images_per_second']} img/s")
    for name, r in record.get("eval", {}).items():
        line += f", {name} top-1 {r['top1']:.4f}"
    rep.info(line)


def _guard(teacher, zero_shot, zs_preds, paths, pre, device, autocast, workers, rep):
    """Label-free safety net: if the adapted model predicts far fewer classes than zero-shot did
    (self-training collapsed onto a few classes), ship the zero-shot model instead and say so."""
    adapted = predict_labels(teacher, paths, pre, device, workers=workers, autocast=autocast)
    k = teacher.num_classes
    b_zs = label_balance(torch.bincount(zs_preds[zs_preds >= 0], minlength=k))
    b_ad = label_balance(torch.bincount(adapted[adapted >= 0], minlength=k))
    if b_ad < 0.5 * b_zs:
        note = (f"adapted model collapsed (prediction balance {b_ad:.2f} vs {b_zs:.2f} zero-shot): "
                "kept the zero-shot model; try a lower --lr or a preset with a lower threshold")
        rep.warn(note)
        return zero_shot, note
    return teacher, None


def _summary(rep: Reporter, metrics: list[dict], out: Path, skipped: int, guard_note: str | None) -> None:
    rows = []
    for r in metrics:
        ev = r.get("eval", {})
        rows.append([r["epoch"], r.get("loss", ""), r.get("kept", ""), r.get("balance", ""), r.get("agree", ""),
                     *(f"{ev[k]['top1']:.4f}" if k in ev else "" for k in ("zero_shot", "teacher", "student"))])
    rep.table("must adapt", ["epoch", "loss", "kept", "balance", "agree", "zero-shot top-1", "teacher top-1",
                             "student top-1"], rows)
    if skipped:
        rep.warn(f"{skipped} unreadable file(s) were skipped (listed above)")
    rep.info(f"model written to {out / MODEL_FILE}" + (" (zero-shot kept by the guard)" if guard_note else
                                                        " (EMA teacher)"))


def _resume(path: Path, fingerprint: dict, cfg: MustConfig, model, teacher, optimizer, rep) -> TrainState:
    """Load a checkpoint into the fresh model, teacher and optimiser after checking it is this run's."""
    ck = load_checkpoint(path)
    saved = ck.get("fingerprint", {})
    diff = [k if isinstance(v, (list, dict)) or len(repr(v)) > 60 else f"{k} ({saved.get(k)!r} -> {v!r})"
            for k, v in fingerprint.items() if saved.get(k) != v]
    if diff:
        raise MustError(f"--resume {path}: this run differs from the checkpoint in {', '.join(diff)}: "
                        "resume with the same images, classes, model and settings, or start a new --output")
    model.load_state_dict(ck["student"])
    teacher.load_state_dict(ck["teacher"])
    optimizer.load_state_dict(ck["optimizer"])
    _set_rng_state(ck["rng"])
    state = TrainState(**ck["state"])
    # Same global batch, maybe another split into processes x accumulation: keep the optimiser-step position.
    state.batches_done = state.batches_done // ck["config"]["accum_steps"] * cfg.accum_steps
    rep.info(f"resumed from {path} at step {state.step} (epoch {state.epoch + 1}, batch {state.batches_done})")
    return state
