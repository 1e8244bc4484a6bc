"""trainer.py on tensors: an epoch's steps, metrics and checkpoints; the compiled first step that falls
back to eager (forward, backward or run-time failure injected); a CUDA out-of-memory error that stops
with flags that fit, checked by resuming with them."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters
from typer.testing import CliRunner

from must_cli.method import engine
from must_cli.cli import app
from must_cli.base.config import MustConfig
from must_cli.base.distributed import Dist
from must_cli.base.errors import MustError
from must_cli.base.progress import Reporter
from must_cli.files.run_dir import METRICS_FILE, RunDir
from must_cli.training.batch_plan import BatchPlan
from must_cli.training.trainer import Trainer
from must_cli.training.builder import build_training
from must_cli.method.views import EpochSampler

from helpers import one_line_error, tiny_model

torch.set_num_threads(1)
CPU = torch.device("cpu")
BATCH, STEPS = 6, 3


class Batches:
    """A loader of fixed tensor batches; fresh dicts each pass, as a DataLoader gives (the trainer pops 'bad')."""

    def __init__(self, n: int = STEPS, b: int = BATCH):
        g = torch.Generator().manual_seed(1)
        self.data = [(torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g),
                      torch.rand(b, 16, generator=g) < 0.3) for _ in range(n)]

    def __iter__(self):
        for weak, strong, mask in self.data:
            yield {"weak": weak, "strong": strong, "mask": mask, "bad": torch.full((weak.shape[0],), -1)}


class Notes(Reporter):
    """Keeps the warnings, each step's running loss, and torch.compile's counters at each epoch's end; draws nothing."""

    def __init__(self):
        super().__init__()
        self.warnings: list[str] = []
        self.losses: list[float] = []
        self.counters: list[dict] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def start_epoch(self, *args) -> None:
        pass

    def update(self, step_in_epoch: int, stats: dict) -> None:
        self.losses.append(stats["loss"])

    def end_epoch(self) -> None:
        pass

    def epoch_done(self, record: dict) -> None:
        self.counters.append({group: dict(values) for group, values in counters.items()})


def make_trainer(tmp_path: Path, compile_setting: bool | str = False, epochs: int = 1, device: torch.device = CPU,
                 **cfg_values) -> Trainer:
    cfg = MustConfig(epochs=epochs, batch_size=BATCH, threshold=0.3, base_lr=1e-2, compile=compile_setting,
                     **cfg_values)
    model = tiny_model(k=5)
    nets = build_training(model, cfg, device, model.grid_size * model.patch_size, Dist()).nets
    plan = BatchPlan(BATCH, cfg.accum_steps, 1, STEPS, epochs)
    paths = [Path(f"{i}.jpg") for i in range(BATCH * STEPS)]
    return Trainer(cfg, plan, nets, Batches(), EpochSampler(len(paths), 0), paths, tmp_path, {"run": "test"},
                   Dist(), device, contextlib.nullcontext, Notes())


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.nets.student.state_dict().items()}


def test_an_epoch_on_tensors_steps_logs_and_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2)
    start = weights(trainer)
    teacher_start = copy.deepcopy(trainer.nets.teacher.state_dict())
    metrics = trainer.run()
    assert trainer.state.step == 2 * STEPS and trainer.state.epoch == 2 and trainer.state.batches_done == 0
    assert [(r["epoch"], r["step"]) for r in metrics] == [(1, STEPS), (2, 2 * STEPS)]
    assert all(r["loss"] > 0 and 0 <= r["kept"] <= 1 and r["images_per_second"] > 0 for r in metrics)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [STEPS, 2 * STEPS]
    assert RunDir(tmp_path).checkpoint_files()  # one per epoch end, the newest kept
    moved = weights(trainer)
    assert any(not torch.equal(start[k], moved[k]) for k in start)
    teacher = trainer.nets.teacher.state_dict()
    assert any(not torch.equal(teacher_start[k], teacher[k]) for k in teacher)  # the EMA followed


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CXX = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                         reason="inductor's CPU backend needs a C++ compiler")


@pytest.mark.parametrize("device", [pytest.param(CPU, marks=[pytest.mark.slow, CXX], id="cpu-inductor"),
                                    pytest.param(torch.device("cuda"), marks=[pytest.mark.gpu, GPU], id="cuda")])
def test_the_compiled_step_trains_like_eager_and_a_second_epoch_does_not_recompile(tmp_path, device):
    """The real MUST step as `must adapt --compile` runs it (build_training -> compile_for_training -> Trainer),
    with inductor (C++ on CPU, Triton on CUDA), 2 epochs x 3 steps, against the same run eager.

    Tolerance: per-step losses rtol 1e-4; weights after 6 steps atol 1e-3 (fp32; inductor fuses and
    reorders reductions; measured on CPU: losses equal to print precision, weights within 1.2e-4)."""
    torch._dynamo.reset()
    counters.clear()
    eager = make_trainer(tmp_path / "eager", epochs=2, device=device)
    eager.run()
    compiled = make_trainer(tmp_path / "compiled", compile_setting=True, epochs=2, device=device)
    assert compiled.nets.compiled
    compiled.run()
    assert compiled.nets.compiled and not compiled.reporter.warnings  # no fallback: it really ran compiled
    first, second = compiled.reporter.counters
    assert first["frames"]["ok"] == first["frames"]["total"] == 2  # student and teacher, each one frame
    assert first["stats"]["unique_graphs"] == 2 and not first.get("graph_break")  # no graph breaks
    assert first["aot_autograd"]["total"] == 2  # the student's graph got its backward
    assert second == first  # epoch 2 compiled nothing: no recompilation, no new graph
    assert len(compiled.reporter.losses) == 2 * STEPS
    assert torch.allclose(torch.tensor(compiled.reporter.losses), torch.tensor(eager.reporter.losses), rtol=1e-4)
    ours, theirs = weights(compiled), weights(eager)
    assert all(torch.allclose(ours[k], theirs[k], rtol=1e-3, atol=1e-3) for k in ours)
    assert any(not torch.equal(ours[k], tiny_model(k=5).state_dict()[k].to(device)) for k in ours)  # it trained
    torch._dynamo.reset()


def failing_backend(where: str):
    """A torch.compile backend that fails at forward compilation, backward compilation, or when first run."""
    def forward_compiler(gm, example_inputs):
        if where == "forward":
            raise RuntimeError("injected forward compile failure")
        if where == "runtime":
            def run(*args):
                raise RuntimeError("injected error inside compiled code")
            return run
        return gm.forward

    def backward_compiler(gm, example_inputs):
        raise RuntimeError("injected backward compile failure")

    return aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)


@pytest.fixture
def compile_fails(monkeypatch):
    """torch.compile as compile_for_training calls it, with a failing backend; returns a setter for where."""
    real = torch.compile

    def install(where: str) -> None:
        monkeypatch.setattr(torch, "compile", functools.partial(real, backend=failing_backend(where)))
    yield install
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["forward", "backward", "runtime"])
def test_a_compile_failure_at_the_first_step_reruns_it_eager_with_nothing_lost(tmp_path, compile_fails, where):
    eager = make_trainer(tmp_path / "eager")
    eager.run()
    compile_fails(where)
    trainer = make_trainer(tmp_path / "compiled", compile_setting=True)
    assert trainer.nets.compiled
    trainer.run()
    assert not trainer.nets.compiled
    [warning] = trainer.reporter.warnings
    assert warning.startswith("torch.compile failed at the first step (") and "continuing eager" in warning
    assert "injected" in warning and "\n" not in warning
    assert trainer.nets.runtime["compile"].startswith("failed at the first step, ran eager: ")
    # Same state, same batches, same RNG: the run is the eager run exactly.
    assert [r["loss"] for r in trainer.state.metrics] == [r["loss"] for r in eager.state.metrics]
    assert trainer.state.step == eager.state.step == STEPS
    ours, theirs = weights(trainer), weights(eager)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_a_failure_after_the_first_step_is_not_taken_for_a_compile_failure(tmp_path, monkeypatch):
    real_step, calls = engine.must_step, []

    def second_step_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a real error in step 2")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "must_step", second_step_fails)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    trainer = make_trainer(tmp_path, compile_setting=True)
    with pytest.raises(RuntimeError, match="a real error in step 2"):
        trainer.run()
    assert trainer.nets.compiled and not trainer.reporter.warnings
    torch._dynamo.reset()


def test_out_of_memory_stops_with_one_line_naming_the_batch_the_fix_and_the_checkpoint(tmp_path, monkeypatch):
    real_step, calls = engine.must_step, []

    def third_step_runs_out(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "must_step", third_step_runs_out)
    trainer = make_trainer(tmp_path, save_every=1)
    with pytest.raises(MustError) as caught:
        trainer.run()
    kept = RunDir(tmp_path).checkpoint_files()
    assert kept and str(caught.value) == (
        f"out of GPU memory at batch size {BATCH} per process (accum 1): use --batch-size 3 --accum-steps 2 "
        f"(global batch 6) or --grad-checkpointing; checkpoint kept: {kept[-1]}; continue from it with the same "
        f"command plus --output {tmp_path} --resume and the new flags")
    assert kept[-1].name == "step-00000002.pt"  # the last step that finished


@pytest.mark.slow
def test_adapt_says_a_compile_failure_once_records_it_and_trains_like_no_compile(
        tmp_path, compile_fails, tiny_spec, classes_file, unlabeled_images):
    common = ["adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec, "--epochs", "1",
              "--batch-size", "8", "--workers", "0", "--no-guard", "--lr", "1e-3"]
    eager = CliRunner().invoke(app, [*common, "--no-compile", "--output", str(tmp_path / "eager")])
    assert eager.exit_code == 0, eager.output
    compile_fails("backward")
    result = CliRunner().invoke(app, [*common, "--compile", "--output", str(tmp_path / "compiled")])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "torch.compile" in line]
    assert "failed at the first step" in line and "injected backward compile failure" in line
    record = json.loads((tmp_path / "compiled" / "run-record.json").read_text())["runtime"]
    assert record["compile"].startswith("failed at the first step, ran eager: RuntimeError: injected backward")
    assert record["adamw"] == "fused" and record["torch_threads"] >= 1
    assert json.loads((tmp_path / "eager" / "run-record.json").read_text())["runtime"]["compile"] == "off"
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / METRICS_FILE).read_text().splitlines()]
              for run in ("eager", "compiled")]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_adapt_out_of_memory_says_what_fits_and_resuming_with_it_finishes(
        tmp_path, monkeypatch, tiny_spec, classes_file, unlabeled_images):
    real_step, calls = engine.must_step, []

    def fourth_step_runs_out(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "must_step", fourth_step_runs_out)
    out = tmp_path / "run"
    common = ["adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec, "--epochs", "2",
              "--workers", "0", "--no-guard", "--lr", "1e-3", "--save-every", "1", "--output", str(out)]
    line = one_line_error(CliRunner().invoke(app, [*common, "--batch-size", "8"]),
                          "out of GPU memory at batch size 8 per process", "--batch-size 4 --accum-steps 2",
                          "--grad-checkpointing", "checkpoint kept")
    assert f"checkpoint kept: {out / 'checkpoints' / 'step-00000003.pt'}; " in line and f"--output {out} --resume" in line
    monkeypatch.setattr(engine, "must_step", real_step)
    resumed = CliRunner().invoke(app, [*common, "--resume", "--batch-size", "4", "--accum-steps", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and (out / "model.safetensors").exists()
