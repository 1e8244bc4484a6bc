"""EMA arithmetic and ramp, schedules, layer-wise lr decay groups, and one full MUST step."""

import contextlib
import math

import pytest
import torch

from must_cli.config import MustConfig
from must_cli.engine import (
    TrainState, cosine_lr, ema_decay, ema_update, must_step, param_groups, pixel_mask, scaled_lr,
)
from must_cli.model import MustModel

from helpers import tiny_model


def test_ema_update_is_exact_lerp():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), teacher.bias.fill_(0.0)
        student.weight.fill_(3.0), student.bias.fill_(10.0)
    ema_update(teacher, student, decay=0.75)
    assert torch.allclose(teacher.weight, torch.full_like(teacher.weight, 0.75 * 1 + 0.25 * 3))
    assert torch.allclose(teacher.bias, torch.full_like(teacher.bias, 2.5))
    assert torch.allclose(student.weight, torch.full_like(student.weight, 3.0))  # student untouched


def test_ema_decay_ramps_linearly_then_stays():
    assert ema_decay(0, 0.99, 0.9998, 500) == 0.99
    assert math.isclose(ema_decay(250, 0.99, 0.9998, 500), (0.99 + 0.9998) / 2)
    assert math.isclose(ema_decay(500, 0.99, 0.9998, 500), 0.9998)
    assert math.isclose(ema_decay(10_000, 0.99, 0.9998, 500), 0.9998)


def test_lr_scaling_and_cosine():
    assert scaled_lr(2e-5, 1024) == pytest.approx(8e-5)
    assert scaled_lr(2e-5, 64) == pytest.approx(5e-6)
    assert cosine_lr(0, 100, 1.0, 0.1) == 1.0
    assert cosine_lr(50, 100, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_lr(100, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert cosine_lr(200, 100, 1.0, 0.1) == pytest.approx(0.1)


def test_layer_decay_groups_on_tiny_vit():
    model = tiny_model()
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.65)
    layers = len(model.visual.transformer.resblocks)  # 2
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["visual.conv1.weight"] == pytest.approx(0.65 ** (layers + 1))
    assert scale["visual.positional_embedding"] == pytest.approx(0.65 ** (layers + 1))
    assert scale["mask_token"] == pytest.approx(0.65 ** (layers + 1))
    assert scale["visual.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(0.65 ** layers)
    assert scale["visual.transformer.resblocks.1.mlp.c_fc.weight"] == pytest.approx(0.65 ** (layers - 1))
    for head in ("visual.ln_post.weight", "visual.proj", "classifier", "ln_patch.weight", "decoder.0.weight"):
        assert scale[head] == 1.0
    # no weight decay on 1-D tensors (norms, biases, class token, [MSK]); decay on matrices
    for name in ("visual.class_embedding", "mask_token", "visual.ln_pre.weight", "decoder.0.bias"):
        assert decay[name] == 0.0
    for name in ("visual.proj", "classifier", "visual.conv1.weight", "visual.positional_embedding"):
        assert decay[name] == 0.05
    assert len(scale) == sum(p.requires_grad for p in model.parameters())


def test_pixel_mask_upsamples_token_mask():
    mask = torch.tensor([[True, False, False, True]])
    pm = pixel_mask(mask, grid=2, patch=3)
    assert pm.shape == (1, 1, 6, 6)
    assert pm[0, 0, :3, :3].eq(1).all() and pm[0, 0, :3, 3:].eq(0).all() and pm[0, 0, 3:, 3:].eq(1).all()


def test_must_step_combines_the_four_objectives():
    model = tiny_model()
    teacher = tiny_model().eval()
    cfg = MustConfig(threshold=0.3, w_fair=0.5, w_align=0.2)
    b = 4
    grid = model.grid_size
    mask = torch.zeros(b, grid * grid, dtype=torch.bool)
    mask[:, :3] = True
    batch = {"weak": torch.randn(b, 3, 32, 32), "strong": torch.randn(b, 3, 32, 32), "mask": mask}
    loss, metrics, hist = must_step(model, teacher, batch, cfg, TrainState(), contextlib.nullcontext)
    names = dict(zip(["loss", "cls", "fair", "mim", "align"], (metrics[:5] / b).tolist()))
    expected = names["cls"] + 0.5 * names["fair"] + names["mim"] + 0.2 * names["align"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert names["fair"] >= math.log(3) - 1e-6  # fairness is bounded below by log K
    loss.backward()
    assert model.mask_token.grad is not None and model.decoder[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert hist.sum() == metrics[5]  # histogram counts exactly the kept pseudo-labels
