"""EMA arithmetic and ramp, schedules, layer-wise lr decay groups, and one full MUST step."""

import contextlib
import math

import pytest
import torch

from must_cli.base.config import MustConfig
from must_cli.method.engine import METRIC_NAMES, TrainState, must_step, pixel_mask, train_epoch
from must_cli.method.schedule import cosine_lr, ema_batch_ratio, ema_decay, ema_update, param_groups, scaled_lr
from must_cli.method.losses import fairness_loss

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


def test_ema_decay_is_stated_per_reference_batch():
    # 16 steps of 64 images decay and ramp like one step of 1024 images
    assert ema_decay(0, 0.99, 0.9998, 500, 1 / 16) ** 16 == pytest.approx(0.99, rel=1e-12)
    assert ema_decay(250 * 16, 0.99, 0.9998, 500, 1 / 16) ** 16 == pytest.approx((0.99 + 0.9998) / 2, rel=1e-12)
    assert ema_decay(500 * 16, 0.99, 0.9998, 500, 1 / 16) == pytest.approx(0.9998 ** (1 / 16), rel=1e-12)
    assert ema_decay(250, 0.99, 0.9998, 500, 2.0) == pytest.approx(0.9998**2, rel=1e-12)  # bigger batch: faster
    assert ema_batch_ratio(MustConfig(ema_ref_batch=0), 64) == 1.0  # per step, the old reading
    assert ema_batch_ratio(MustConfig(ema_ref_batch=1024, accum_steps=2), 32) == 1 / 16


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
    # no weight decay on 1-D tensors (norms, biases, class token); decay on matrices and on [MSK],
    # which the reference stores (1, 1, width) and so decays
    for name in ("visual.class_embedding", "visual.ln_pre.weight", "decoder.0.bias"):
        assert decay[name] == 0.0
    for name in ("visual.proj", "classifier", "visual.conv1.weight", "visual.positional_embedding", "mask_token"):
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


def _batches(n: int, b: int = 4) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    grid = tiny_model().grid_size
    out = []
    for _ in range(n):
        mask = torch.rand(b, grid * grid, generator=gen) < 0.3
        out.append({"weak": torch.randn(b, 3, 32, 32, generator=gen), "strong": torch.randn(b, 3, 32, 32, generator=gen),
                    "mask": mask})
    return out


def test_fairness_running_average_halves_restarts_each_epoch_and_is_scaled_by_two():
    model, teacher = tiny_model(), tiny_model().eval()
    cfg = MustConfig(threshold=0.3, mim=False, align=False, fair_running_classes=3)
    first, second = _batches(2)
    fair = METRIC_NAMES.index("loss_fair")
    state = TrainState()
    p1 = model(first["strong"], first["mask"]).softmax(1).mean(0)
    m1 = must_step(model, teacher, first, cfg, state, contextlib.nullcontext)[1]
    assert (m1[fair] / 4).item() == pytest.approx(2 * fairness_loss(p1).item(), rel=1e-6)
    state.batches_done = 1
    p2 = model(second["strong"], second["mask"]).softmax(1).mean(0)
    m2 = must_step(model, teacher, second, cfg, state, contextlib.nullcontext)[1]
    assert (m2[fair] / 4).item() == pytest.approx(2 * fairness_loss(0.5 * (p1 + p2)).item(), rel=1e-6)
    state.batches_done = 0  # a new epoch: the average starts again from this batch
    m3 = must_step(model, teacher, second, cfg, state, contextlib.nullcontext)[1]
    assert (m3[fair] / 4).item() == pytest.approx(2 * fairness_loss(p2).item(), rel=1e-6)


def _train(state: TrainState, model, teacher, opt, batches, cfg) -> list[list[float]]:
    seen: list[list[float]] = []

    def on_step(st, m, h, lr):
        seen.append(m.tolist())
        return False

    train_epoch(model, teacher, opt, batches, cfg, state, 8, 1e-3, 1e-5, torch.device("cpu"),
                contextlib.nullcontext, on_step)
    return seen


def _fresh(cfg):
    model = tiny_model()
    teacher = tiny_model().eval()
    teacher.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=1e-3)
    return model, teacher, opt


def test_resume_mid_epoch_gives_the_uninterrupted_loss_values_with_the_running_fairness(tmp_path):
    cfg = MustConfig(threshold=0.3, fair_running_classes=3, ema_ref_batch=8)
    batches = _batches(4)
    model, teacher, opt = _fresh(cfg)
    straight = _train(TrainState(), model, teacher, opt, batches, cfg)

    model, teacher, opt = _fresh(cfg)
    state = TrainState()
    before = _train(state, model, teacher, opt, batches[:2], cfg)
    torch.save({"student": model.state_dict(), "teacher": teacher.state_dict(), "optimizer": opt.state_dict(),
                "state": state.__dict__}, tmp_path / "ck.pt")  # what adapt's checkpoint holds
    ck = torch.load(tmp_path / "ck.pt", weights_only=False)
    model, teacher, opt = _fresh(cfg)
    model.load_state_dict(ck["student"]), teacher.load_state_dict(ck["teacher"]), opt.load_state_dict(ck["optimizer"])
    resumed = TrainState(**ck["state"])
    assert resumed.fair_running is not None and resumed.batches_done == 2
    after = _train(resumed, model, teacher, opt, batches[2:], cfg)
    assert before + after == straight  # every loss term of every step, bit for bit

    lost = TrainState(**{**ck["state"], "fair_running": None})  # a resume that forgot the average differs
    model, teacher, opt = _fresh(cfg)
    model.load_state_dict(ck["student"]), teacher.load_state_dict(ck["teacher"]), opt.load_state_dict(ck["optimizer"])
    fair = METRIC_NAMES.index("loss_fair")
    assert _train(lost, model, teacher, opt, batches[2:], cfg)[0][fair] != straight[2][fair]
