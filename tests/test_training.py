"""training.build_training: which layers train per objective, the optimiser's groups and kind, the teacher."""

from __future__ import annotations

import pytest
import torch

from must_cli.base.config import MustConfig
from must_cli.base.runtime import adamw_kind
from must_cli.training.builder import build_training, mask_generator, trainable_parts

from helpers import tiny_model

CPU = torch.device("cpu")
OPTIONAL = ("decoder", "ln_patch", "mask_token", "classifier")


def build(**cfg_values):
    model = tiny_model(k=4)
    size = model.grid_size * model.patch_size
    return model, build_training(model, MustConfig(**cfg_values), CPU, size)


def optimised_names(training) -> set[str]:
    return {name for group in training.nets.optimizer.param_groups for name in group["names"]}


@pytest.mark.parametrize(("mim", "align", "freeze", "expected"), [
    (True, True, False, {"decoder": True, "ln_patch": True, "mask_token": True, "classifier": True}),
    (False, True, False, {"decoder": False, "ln_patch": True, "mask_token": True, "classifier": True}),
    (True, False, True, {"decoder": True, "ln_patch": True, "mask_token": True, "classifier": False}),
    (False, False, False, {"decoder": False, "ln_patch": False, "mask_token": False, "classifier": True}),
])
def test_the_enabled_objectives_choose_which_layers_train(mim, align, freeze, expected):
    model, training = build(mim=mim, align=align, freeze_classifier=freeze)
    assert trainable_parts(MustConfig(mim=mim, align=align, freeze_classifier=freeze)) == expected
    assert training.trainable == expected
    names = optimised_names(training)
    for part in OPTIONAL:
        module = getattr(model, part)
        params = [module] if isinstance(module, torch.nn.Parameter) else list(module.parameters())
        assert all(p.requires_grad == expected[part] for p in params), part
        assert any(n == part or n.startswith(part + ".") for n in names) == expected[part], part
    assert all(p.requires_grad for p in model.visual.parameters())  # the image tower always trains
    assert (training.masks is None) == (not (mim or align))  # no objective needs masks: the views carry none


def test_asking_for_the_mask_sampler_changes_no_layer():
    model = tiny_model(k=4)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    image_size = model.grid_size * model.patch_size
    masks, size = mask_generator(MustConfig(mim=False, align=True, mask_patch_size=32), image_size, model.patch_size)
    assert masks is not None and size % model.patch_size == 0
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert mask_generator(MustConfig(mim=False, align=False), image_size, model.patch_size)[0] is None


def test_param_groups_carry_layer_decay_and_the_optimiser_is_the_devices_fastest():
    model, training = build(layer_decay=0.5, weight_decay=0.1)
    layers = len(model.visual.transformer.resblocks)
    groups = training.nets.optimizer.param_groups
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == pytest.approx(0.5 ** (layers + 1))  # head 1, patch embedding L+1
    assert all(g["weight_decay"] in (0.0, 0.1) for g in groups)
    embed = next(g for g in groups if "visual.conv1.weight" in g["names"])
    assert embed["lr_scale"] == pytest.approx(0.5 ** (layers + 1)) and embed["weight_decay"] == 0.1
    assert isinstance(training.nets.optimizer, torch.optim.AdamW)
    assert training.nets.runtime == {"adamw": adamw_kind(CPU), "precision": MustConfig().precision, "compile": "off"}


def test_a_named_optimiser_kind_and_a_frozen_teacher():
    model, training = build()
    plain_model = tiny_model(k=4)
    plain = build_training(plain_model, MustConfig(), CPU, plain_model.grid_size * plain_model.patch_size,
                           optimizer_kind="plain")
    assert plain.nets.runtime["adamw"] == "plain"
    assert plain.nets.optimizer.defaults["foreach"] is False and not plain.nets.optimizer.defaults.get("fused")
    teacher = training.nets.teacher
    assert teacher is not model and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), model.state_dict().values()))
    assert training.nets.train_student is model  # no DDP in one process, no compile on CPU by default
