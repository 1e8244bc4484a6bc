"""runtime.py: the compile decision and its wrappers, the AdamW implementation, workers and threads, OOM advice."""

from __future__ import annotations

import copy

import pytest
import torch

from must_cli.method.schedule import param_groups
from must_cli.base.runtime import (
    adamw, adamw_kind, autocast_for, compile_for_training, compile_wanted, default_workers, eager_module, memory_advice,
    thread_budget,
)

from helpers import tiny_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("setting, device, wanted", [
    ("auto", CUDA, True), ("auto", CPU, False), (True, CPU, True), (True, CUDA, True), (False, CUDA, False),
    (False, CPU, False),
])
def test_compile_is_wanted_as_the_setting_says(setting, device, wanted):
    assert compile_wanted(setting, device) is wanted


@pytest.mark.slow
def test_compile_for_training_wraps_both_modules_sharing_their_parameters_and_unwraps_them():
    student, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert compile_for_training(student, teacher, CPU, "auto") == (student, teacher)
    s, t = compile_for_training(student, teacher, CPU, True)  # wrapping is lazy: nothing compiles yet
    assert s is not student and t is not teacher
    assert eager_module(s) is student and eager_module(t) is teacher and eager_module(student) is student
    assert list(s.parameters())[0] is student.weight


def test_adamw_is_fused_where_torch_has_the_kernel_else_foreach_on_gpus_and_plain_on_cpu(monkeypatch):
    model = tiny_model()
    optimizer, kind = adamw(param_groups(model, 0.05, 0.65), CPU, (0.9, 0.999))
    assert kind == adamw_kind(CPU) == "fused" and all(g["fused"] for g in optimizer.param_groups)
    assert adamw_kind(CUDA) == "fused"
    monkeypatch.setattr("torch.utils._foreach_utils._get_fused_kernels_supported_devices", lambda: ["mps"])
    assert adamw_kind(CPU) == "plain" and adamw_kind(CUDA) == "foreach"
    optimizer, kind = adamw(param_groups(model, 0.05, 0.65), CUDA, (0.9, 0.999))
    assert kind == "foreach" and all(g["foreach"] and not g["fused"] for g in optimizer.param_groups)


@pytest.mark.parametrize("device", [CPU, pytest.param(CUDA, marks=[pytest.mark.gpu, GPU])], ids=str)
def test_fused_adamw_follows_plain_adamw_step_for_step(device):
    """Same groups (layer decay, no decay on 1-D), same gradients, 5 steps: the weights agree to float rounding."""
    torch.manual_seed(0)
    models = [tiny_model().to(device), tiny_model().to(device)]
    fused, kind = adamw(param_groups(models[0], 0.05, 0.65), device, (0.9, 0.98))
    plain = torch.optim.AdamW(param_groups(models[1], 0.05, 0.65), betas=(0.9, 0.98), foreach=False)
    assert kind == "fused"
    for step in range(5):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for model, optimizer in zip(models, (fused, plain)):
            for g in optimizer.param_groups:
                g["lr"] = 1e-2 * g["lr_scale"]
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad.clone()
            optimizer.step()
    start = tiny_model().to(device)
    for (name, a), b, s in zip(models[0].named_parameters(), models[1].parameters(), start.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert max((a - s).abs().max().item() for a, s in zip(models[0].parameters(), start.parameters())) > 1e-2


def test_default_workers(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(3) == 3 and default_workers(0, CPU) == 0  # an explicit count is kept
    assert default_workers(-1) == 15 and default_workers(-1, CUDA) == 15  # feeding a GPU: all cores but one
    assert default_workers(-1, CPU) == 4  # training on the CPU: a quarter, the rest for torch's threads
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers(-1, CUDA) == 3 and default_workers(-1, CPU) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers(-1, CPU) == 1 and default_workers(-1, CUDA) == 1


def test_thread_budget_gives_torch_the_cores_the_workers_leave_and_never_raises_the_count(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    try:
        torch.set_num_threads(8)
        assert thread_budget(2) == 6 and torch.get_num_threads() == 6
        assert thread_budget(0) == 6  # never above the current setting (OMP_NUM_THREADS, a caller's choice)
        assert thread_budget(8) == 1 and torch.get_num_threads() == 1  # at least one
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("batch, accum, world, gc, expected", [
    (256, 1, 1, False, "at batch size 256 per process (accum 1): use --batch-size 128 --accum-steps 2 "
                       "(global batch 256) or --grad-checkpointing"),
    (64, 2, 4, True, "at batch size 64 per process (accum 2): use --batch-size 32 --accum-steps 4 (global batch 512)"),
    (3, 1, 1, True, "at batch size 3 per process (accum 1): use a smaller --model"),
])
def test_memory_advice_keeps_the_global_batch(batch, accum, world, gc, expected):
    assert memory_advice(batch, accum, world, gc) == "out of GPU memory " + expected


def test_autocast_is_bf16_when_asked_or_on_cuda_and_fp32_otherwise():
    with autocast_for(CPU, "bf16")():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_for(CPU, "auto")():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with autocast_for(CPU, "fp32")():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
