"""The fairness mean at the reference batch (engine.fairness_mean, docs/method.md "Fairness").

The paper averages p_bar over its global batch of 1,024 images. Here the same loss and
gradients must come out whether a step of G images is one batch, G/8 images accumulated 8 times,
or two processes accumulating 4 times each; and a batch below the reference batch must see the
mean of the recent reference batch's worth of images, with its own gradient weight.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from must_cli.base.config import MustConfig
from must_cli.method.engine import METRIC_NAMES, TrainState, accumulate, must_step, reference_batch_mean
from must_cli.method.losses import fairness_loss

from helpers import tiny_model

FAIR = METRIC_NAMES.index("loss_fair")
G = 32  # images per optimiser step in every layout below
TOL = dict(rtol=1e-5, atol=1e-7)  # float32 summation order is all that differs


def _images(n: int = G) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _cfg(accum: int, ref: int = G) -> MustConfig:
    # threshold 0.9999: nothing is kept (asserted), so L_cls is an exact 0 and the loss is the fairness term alone
    return MustConfig(threshold=0.9999, mim=False, align=False, accum_steps=accum, fair_ref_batch=ref)


def _one_step(images: torch.Tensor, micro: int, accum: int, wrap=lambda m: m) -> tuple[float, dict]:
    """Fairness values of each micro-batch and the gradients after one accumulated step."""
    model, teacher = tiny_model(), tiny_model().eval()
    student = wrap(model)
    group = [{"weak": images[i:i + micro], "strong": images[i:i + micro]} for i in range(0, micro * accum, micro)]
    metrics, _ = accumulate(student, teacher, group, _cfg(accum), TrainState(), contextlib.nullcontext)
    assert metrics[METRIC_NAMES.index("kept")] == 0  # so L_cls adds nothing
    value = (metrics[FAIR] / metrics[METRIC_NAMES.index("images")]).item()  # f(p_bar) on every micro-batch
    return value, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulated_step_equals_one_big_batch():
    images = _images()
    big_value, big_grads = _one_step(images, G, 1)
    acc_value, acc_grads = _one_step(images, G // 8, 8)
    assert acc_value == pytest.approx(big_value, rel=1e-5)
    assert big_grads.keys() == acc_grads.keys() and big_grads
    for name in big_grads:
        torch.testing.assert_close(acc_grads[name], big_grads[name], **TOL, msg=name)


def test_the_old_per_micro_batch_mean_differs_so_the_test_above_can_fail():
    images = _images()
    _, big_grads = _one_step(images, G, 1)
    model, teacher = tiny_model(), tiny_model().eval()
    cfg = MustConfig(threshold=0.9999, mim=False, align=False, accum_steps=8, fair_ref_batch=0)
    group = [{"weak": images[i:i + 4], "strong": images[i:i + 4]} for i in range(0, G, 4)]
    accumulate(model, teacher, group, cfg, TrainState(), contextlib.nullcontext)
    differs = [not torch.allclose(p.grad, big_grads[n], **TOL)
               for n, p in model.named_parameters() if p.grad is not None]
    assert any(differs)


def _worker(rank: int, world: int, init: str, images: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        per_rank = G // world  # together the ranks' micro-batches hold each of the G images once
        own = images[rank * per_rank:(rank + 1) * per_rank]
        ddp = lambda m: torch.nn.parallel.DistributedDataParallel(m, find_unused_parameters=True)  # noqa: E731
        value, grads = _one_step(own, per_rank // 4, 4, wrap=ddp)
        if rank == 0:
            out.update({"value": value, "grads": grads})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_accumulating_equal_one_big_batch(tmp_path):
    images = _images()
    big_value, big_grads = _one_step(images, G, 1)
    with mp.Manager() as manager:
        out = manager.dict()
        init = f"file://{tmp_path / 'store'}"
        mp.start_processes(_worker, args=(2, init, images, out), nprocs=2, start_method="spawn", join=True)
        value, grads = out["value"], dict(out["grads"])
    assert value == pytest.approx(big_value, rel=1e-5)
    for name in big_grads:
        torch.testing.assert_close(grads[name], big_grads[name], **TOL, msg=name)


def test_small_batches_see_the_mean_of_recent_reference_batch_images():
    """Weights 1, 1/2, 1/3, 1/4 make the estimate the plain mean until R images, then an EMA over ~R."""
    model, teacher = tiny_model(), tiny_model().eval()
    cfg = MustConfig(threshold=0.9999, mim=False, align=False, fair_ref_batch=16)
    assert reference_batch_mean(cfg, 4) and not reference_batch_mean(cfg, 16)
    batches = [{"weak": x, "strong": x} for x in _images(24).split(4)]
    means = [model(b["strong"]).softmax(1).mean(0).detach() for b in batches]
    state = TrainState()
    for i, batch in enumerate(batches):
        model.zero_grad()
        loss, metrics, _ = must_step(model, teacher, batch, cfg, state, contextlib.nullcontext)
        if i < 4:
            expected_mean = torch.stack(means[:i + 1]).mean(0)
        else:
            expected_mean = 0.75 * expected_mean + 0.25 * means[i]
        assert (metrics[FAIR] / 4).item() == pytest.approx(fairness_loss(expected_mean).item(), rel=1e-6)
        loss.backward()
        got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        # the gradient is this batch's own, taken at the estimate: d/dtheta <grad f(p_hat), m(theta)>
        model.zero_grad()
        m = model(batch["strong"]).softmax(1).mean(0)
        (-(m / expected_mean).sum() / 3).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)
        state.batches_done += 1
    assert math.isfinite(metrics[FAIR].item())


def test_a_new_epoch_restarts_the_estimate_from_its_first_batch():
    model, teacher = tiny_model(), tiny_model().eval()
    cfg = MustConfig(threshold=0.9999, mim=False, align=False, fair_ref_batch=16)
    first, second = [{"weak": x, "strong": x} for x in _images(8).split(4)]
    state = TrainState()
    must_step(model, teacher, first, cfg, state, contextlib.nullcontext)
    state.batches_done = 0  # what a new epoch starts with
    metrics = must_step(model, teacher, second, cfg, state, contextlib.nullcontext)[1]
    alone = model(second["strong"]).softmax(1).mean(0)
    assert (metrics[FAIR] / 4).item() == pytest.approx(fairness_loss(alone).item(), rel=1e-6)


def test_at_the_authors_shape_the_term_is_their_batch_mean_unchanged():
    model, teacher = tiny_model(), tiny_model().eval()
    cfg = MustConfig(threshold=0.9999, mim=False, align=False, fair_ref_batch=8)
    x = _images(8)
    state = TrainState()
    for _ in range(2):  # the second step must not mix in the first
        metrics = must_step(model, teacher, {"weak": x, "strong": x}, cfg, state, contextlib.nullcontext)[1]
        state.batches_done += 1
    assert state.fair_running is None
    assert (metrics[FAIR] / 8).item() == pytest.approx(fairness_loss(model(x).softmax(1).mean(0)).item(), rel=1e-6)
