"""The speed paths compute the same step: bf16 autocast vs fp32, grad checkpointing, the benchmark (compile: test_compile.py)."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch

from benchmarks import throughput
from must_cli.base.runtime import autocast_for
from must_cli.base.config import MustConfig
from must_cli.method.engine import TrainState, must_step

from helpers import tiny_model


def batch(b: int = 6, size: int = 32, tokens: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"weak": torch.randn(b, 3, size, size, generator=g), "strong": torch.randn(b, 3, size, size, generator=g),
            "mask": torch.rand(b, tokens, generator=g) < 0.3}


def losses(student, teacher, data, autocast) -> torch.Tensor:
    """The five loss terms (loss, cls, fair, mim, align) of one step, per image."""
    return must_step(student, teacher, data, MustConfig(threshold=0.3), TrainState(), autocast)[1][:5] / 6


def test_bf16_autocast_losses_match_fp32_within_bf16_tolerance():
    model = tiny_model(k=5)
    teacher = copy.deepcopy(model).eval()
    data = batch()
    ref = losses(model, teacher, data, contextlib.nullcontext)
    opt = losses(model, teacher, data, autocast_for(torch.device("cpu"), "bf16"))
    assert ref[1] > 0  # some pseudo-labels pass the threshold, so every term is exercised
    assert torch.allclose(opt, ref, rtol=2e-2, atol=1e-2), (ref, opt)


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_model(k=5)
    teacher = copy.deepcopy(model).eval()
    data = batch()
    results = []
    for enabled in (False, True):
        model.zero_grad()
        model.visual.set_grad_checkpointing(enabled)
        loss = must_step(model, teacher, data, MustConfig(threshold=0.3), TrainState(), contextlib.nullcontext)[0]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    assert torch.equal(loss0, loss1) and grads0.keys() == grads1.keys() and len(grads0) > 10
    assert all(torch.allclose(grads0[n], grads1[n], rtol=1e-5, atol=1e-7) for n in grads0)


def test_quick_benchmark_prints_json_with_the_expected_keys(capsys):
    report = throughput.main(["--quick"])
    assert set(report) == {"machine", "model", "classes", "steps", "data", "ratios"}
    assert [(s["path"], s["batch"]) for s in report["steps"]] == [("eager", 8), ("optimised", 8)]
    assert all(s["img_per_s"] > 0 and s["peak_mem_mb"] > 0 for s in report["steps"])
    assert report["steps"][1]["loss_check"]["within_tolerance"]
    small, large = report["data"]
    assert small["cached_files"] == 0 and large["cached_files"] == large["images"]
    assert {"optimised_over_eager_b8", "cache_epoch2_over_uncached_1600x1200"} <= set(report["ratios"])
    assert json.loads(capsys.readouterr().out) == report


@pytest.mark.slow
def test_e2e_reports_adapt_next_to_the_bare_step_on_the_same_shapes():
    report = throughput.main(["--e2e", "--quick"])
    [row] = report["e2e"]
    assert (row["images"], row["epochs"], row["batch"]) == (128, 1, 64)
    assert row["images_trained"] == 128  # 2 steps of 64: the command really trained what the ratio divides
    assert row["bare_step_img_per_s"] > 0 and row["epoch_img_per_s"] > 0 and row["wall_s"] > row["train_s"] > 0
    assert row["command_over_bare"] == round(row["command_img_per_s"] / row["bare_step_img_per_s"], 2)
    assert row["runtime"]["torch_threads"] == row["torch_threads"] and row["runtime"]["adamw"] == "fused"
    assert row["peak_rss_mb"] > 100
