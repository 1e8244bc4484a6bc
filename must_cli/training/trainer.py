"""The training run around the method: epochs, the per-step hook (progress, NaN agreement,
signals, periodic checkpoints), metrics.jsonl, and resuming a checkpoint (resume.py says what
a checkpoint holds; compile_guard.py guards a compiled run's first step).

engine.train_epoch is the method; this module decides when to log, save and stop, and keeps
its state on a Trainer object so every rank takes the same decisions in the same order.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from must_cli.files.atomic import atomic_write_text
from must_cli.base.config import MustConfig
from must_cli.base.distributed import Dist, agreed_error, reduce_sum
from must_cli.method.engine import METRIC_NAMES, TrainState, train_epoch
from must_cli.base.errors import MustError, RunStopped
from must_cli.method.labeled import LabeledSet
from must_cli.method.priors import label_balance
from must_cli.files.images import display_name
from must_cli.method.model import MustModel
from must_cli.method.schedule import scaled_lr
from must_cli.base.progress import Reporter
from must_cli.files.run_dir import RunDir
from must_cli.base.runtime import Autocast, memory_advice
from must_cli.base.stop import StopRequest
from must_cli.method.views import EpochSampler
from must_cli.training.batch_plan import BatchPlan
from must_cli.training.builder import Nets
from must_cli.training.compile_guard import guard_first_step
from must_cli.training.resume import restore_checkpoint, write_checkpoint

NONFINITE, IMAGES = METRIC_NAMES.index("nonfinite"), METRIC_NAMES.index("images")


def epoch_stats(total: torch.Tensor, hist: torch.Tensor, lr: float, prior: torch.Tensor | None) -> dict[str, float]:
    """Per-image means of the summed metrics, the pseudo-label balance (against the class prior), and the lr."""
    values = dict(zip(METRIC_NAMES, total.tolist()))
    n = max(values["images"], 1.0)
    means = {name: values[name] / n for name in ("loss", "loss_cls", "loss_fair", "loss_mim", "loss_align",
                                                 "kept", "agree")}
    return {**means, "balance": label_balance(hist, prior), "lr": lr}


class Trainer:
    """Runs the epochs of one adapt run on every rank; rank 0 writes checkpoints and metrics."""

    def __init__(self, cfg: MustConfig, plan: BatchPlan, nets: Nets, loader: DataLoader, sampler: EpochSampler,
                 paths: list[Path], run_dir: Path, fingerprint: dict, dist: Dist, device: torch.device,
                 autocast: Autocast, reporter: Reporter, eval_set: LabeledSet | None = None):
        self.cfg, self.plan, self.nets, self.loader, self.sampler = cfg, plan, nets, loader, sampler
        self.paths, self.run_dir, self.fingerprint = paths, run_dir, fingerprint
        self.dist, self.device, self.autocast, self.reporter, self.eval_set = dist, device, autocast, reporter, eval_set
        self.state = TrainState()
        self.peak_lr = scaled_lr(cfg.base_lr, plan.global_batch)  # absolute, from the per-256 base lr
        self.floor_lr = scaled_lr(cfg.min_lr, plan.global_batch)
        self.log_every = 1 if device.type == "cpu" else 20  # each log is an all-reduce that waits for the GPU
        self.stop = StopRequest()
        self.unreadable: set[int] = set()
        self._sums = self._hist = torch.zeros(0)
        self._lr, self._halted = 0.0, False
        self._compile_proven = False  # set once a compiled step has run forward, backward and optimiser step

    # ---------------------------------------------------------------- resume and checkpoints

    def resume(self, path: Path) -> None:
        """Load a checkpoint into the fresh nets after checking it is this run's."""
        state = self.state = restore_checkpoint(path, self.nets, self.fingerprint, self.cfg.accum_steps)
        self.reporter.info(f"resumed from {path} at step {state.step} (epoch {state.epoch + 1}, "
                           f"batch {state.batches_done})")

    def checkpoint(self, mid_epoch: bool = False) -> None:
        """Every rank calls this (mid-epoch it sums the epoch's metrics across ranks); rank 0 writes."""
        self.state.epoch_sums = reduce_sum(self._sums).cpu() if mid_epoch else None
        self.state.epoch_hist = reduce_sum(self._hist).cpu() if mid_epoch else None
        if self.dist.is_main:
            write_checkpoint(self.run_dir, self.nets, self.state, self.fingerprint, self.cfg)

    # ---------------------------------------------------------------- the run

    def evaluate_zero_shot(self, zero_shot: MustModel) -> None:
        """With --eval-dir, record zero-shot accuracy as epoch 0 of a fresh run."""
        if self.eval_set is None or not self.dist.is_main or self.state.step:
            return
        result = self.eval_set.accuracy({"zero_shot": zero_shot})
        self.state.metrics.append({"epoch": 0, "step": 0, "eval": result})
        self.reporter.evaluated(0, result)

    def run(self) -> list[dict]:
        """Train until the last epoch, or raise after checkpointing when a signal asks to stop."""
        with self.stop:
            while self.state.epoch < self.cfg.epochs:
                self._epoch()
        return self.state.metrics

    def _epoch(self) -> None:
        started = time.time()
        self._sums = torch.zeros(len(METRIC_NAMES), device=self.device)
        self._hist = torch.zeros(self.nets.student.num_classes, device=self.device)
        if self.dist.is_main and self.state.epoch_sums is not None:  # resumed mid-epoch: earlier steps count
            self._sums += self.state.epoch_sums.to(self.device)
            self._hist += self.state.epoch_hist.to(self.device)
        images_before = float(reduce_sum(self._sums)[IMAGES])
        self.sampler.set_epoch(self.state.epoch, start=self.state.batches_done * self.plan.per_process)
        self._lr, self._halted = 0.0, False
        plan = self.plan
        self.reporter.start_epoch(self.state.epoch, plan.epochs, plan.steps_per_epoch,
                                  self.state.batches_done // plan.accum_steps)
        try:
            rest = itertools.islice(self.loader, plan.batches_per_epoch - self.state.batches_done)
            self._train(self._warn_unreadable(rest))
        except torch.cuda.OutOfMemoryError:
            raise self._out_of_memory() from None
        finally:
            self.reporter.end_epoch()
        if self._halted and self.state.batches_done < plan.batches_per_epoch:
            raise self._stopped()
        self._end_epoch(started, images_before)
        if self._halted and self.state.epoch < plan.epochs:
            raise self._stopped()

    def _train(self, batches: Iterator[dict]) -> None:
        """engine.train_epoch over ``batches``; compiled, the first optimiser step is guarded
        (compile_guard.guard_first_step: a compile failure there reruns the step eager)."""
        def run(data: Iterable[dict]) -> None:
            nets = self.nets
            train_epoch(nets.train_student, nets.train_teacher, nets.optimizer, data, self.cfg, self.state,
                        self.plan.total_steps, self.peak_lr, self.floor_lr, self.device, self.autocast, self._on_step)

        if not self.nets.compiled or self._compile_proven:
            return run(batches)
        guard_first_step(run, batches, self.nets, self.state, self.plan.accum_steps, self.dist.world,
                         self.reporter.warn)
        self._compile_proven = True

    def _end_epoch(self, started: float, images_before: float) -> None:
        total, hist = reduce_sum(self._sums), reduce_sum(self._hist)
        seconds = round(time.time() - started, 2)
        seen = float(total[IMAGES]) - images_before  # this session's images only, after a resume
        stats = epoch_stats(total, hist, self._lr, self.state.prior)
        record = {"epoch": self.state.epoch + 1, "step": self.state.step, **stats,
                  "seconds": seconds, "images_per_second": round(seen / max(seconds, 1e-9), 1)}
        epoch = self.state.epoch + 1
        if self.eval_set and self.dist.is_main and (epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs):
            record["eval"] = self.eval_set.accuracy({"teacher": self.nets.teacher, "student": self.nets.student})
        self.state.metrics.append(record)
        self.state.epoch += 1
        self.state.batches_done = 0
        if self.dist.is_main:
            self.reporter.epoch_done(record)
            atomic_write_text(RunDir(self.run_dir).metrics_file, "".join(json.dumps(r) + "\n" for r in self.state.metrics))
        self.checkpoint()

    def _on_step(self, state: TrainState, metrics: torch.Tensor, hist: torch.Tensor, lr: float) -> bool:
        """After each optimiser step: log, agree on NaN/inf and signals, checkpoint; True stops the epoch.

        Ranks agree when they log and before any checkpoint (so none holds NaN): one small
        all-reduce that waits for the GPU, hence not every step. A single process reacts to a
        signal at the next step.
        """
        self._sums.add_(metrics)
        self._hist.add_(hist)
        self._lr = lr
        step_in_epoch = state.batches_done // self.plan.accum_steps
        mid_epoch = step_in_epoch < self.plan.steps_per_epoch
        due = state.step % self.cfg.save_every == 0 and mid_epoch
        signalled = self.dist.world == 1 and self.stop.signal is not None
        if not (due or state.step % self.log_every == 0 or not mid_epoch or signalled):
            return False
        flags = torch.stack([self._sums[NONFINITE], self._sums.new_tensor(float(self.stop.signal is not None))])
        bad, stopping = reduce_sum(flags).tolist()
        if bad:
            raise self._diverged(state.step)
        stats = epoch_stats(reduce_sum(self._sums), reduce_sum(self._hist), lr, state.prior)
        self.reporter.update(step_in_epoch, stats)
        if (due or stopping) and mid_epoch:
            self.checkpoint(mid_epoch=True)
        self._halted = bool(stopping)
        return self._halted

    def _diverged(self, step: int) -> BaseException:
        kept = RunDir(self.run_dir).latest_checkpoint()
        return agreed_error(self.dist.is_main,
                            f"the loss became NaN/inf by step {step}: lower --lr (or use --precision fp32); "
                            + (f"last good checkpoint kept: {kept}" if kept else "no checkpoint was written yet"))

    def _out_of_memory(self) -> BaseException:
        """One line: the batch that did not fit, the flags that would, and the checkpoint kept for --resume."""
        self.nets.optimizer.zero_grad(set_to_none=True)
        kept = RunDir(self.run_dir).latest_checkpoint()
        after = (f"checkpoint kept: {kept}; continue from it with the same command plus --output {self.run_dir} "
                 "--resume and the new flags" if kept else "no checkpoint was written yet: start again with them")
        return MustError(f"{memory_advice(self.plan.per_process, self.cfg.accum_steps, self.plan.world, self.cfg.grad_checkpointing)}; {after}")

    def _stopped(self) -> BaseException:
        by = signal.Signals(self.stop.signal).name if self.stop.signal else "a signal to another process"
        signum = self.stop.signal or signal.SIGTERM
        if not self.dist.is_main:
            return SystemExit(128 + signum)
        return RunStopped(f"stopped by {by} at step {self.state.step}: checkpoint saved; continue with "
                          f"`must adapt --resume {self.run_dir}`", signum)

    def _warn_unreadable(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Warn once per file that passed the header scan but fails to decode (e.g. truncated data).

        TrainViews already substituted another image, so training goes on; the user learns which file to fix.
        """
        for batch in batches:
            for i in batch.pop("bad").tolist():
                if i >= 0 and i not in self.unreadable:
                    self.unreadable.add(i)
                    self.reporter.warn(f"cannot decode {display_name(self.paths[i])} (truncated or corrupt): "
                                       "another image was used in its place; replace or remove it")
            yield batch
