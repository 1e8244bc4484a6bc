"""Views are well-formed and deterministic per (seed, epoch, index); the sampler shards like DistributedSampler."""

import random

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import _RAND_INCREASING_TRANSFORMS, RandAugment
from torchvision import transforms as T

from must_cli.base.config import MustConfig
from must_cli.method.masking import MaskGenerator
from must_cli.method.model import Preprocess
from must_cli.method.transforms import eval_view
from must_cli.method.views import Cutout, EpochSampler, is_low_res, strong_view, TrainViews, weak_view

PRE = Preprocess(32, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))


def randaugment_ops(view: T.Compose) -> list:
    """The RandAugment ops inside a strong view (timm's AugmentOp objects)."""
    (randaugment,) = [t for t in view.transforms if isinstance(t, RandAugment)]
    return randaugment.ops


def test_every_randaugment_op_changes_the_image_at_the_strongest_magnitude_the_view_draws(unlabeled_images):
    """At magnitude 10 timm's posterize keeps 0 bits, which once crashed Pillow (or, where allowed, blacks the
    image out); the view caps magnitudes at 9.99. Each op, forced on at the cap, must do what it says."""
    image = Image.open(next(unlabeled_images.iterdir())).convert("RGB")
    pixels = np.asarray(image)
    ops = randaugment_ops(strong_view(PRE, MustConfig()))
    assert {op.name for op in ops} == set(_RAND_INCREASING_TRANSFORMS)  # every op of "inc1", none dropped
    for op in ops:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 100.0, 0.0  # always applied, clipped to the view's cap
        random.seed(0)
        out = op(image)
        assert out.size == image.size and out.mode == "RGB", op.name
        changed = np.asarray(out)
        assert (changed != pixels).any(), f"{op.name} left the image unchanged"
        if op.name == "Invert":
            assert np.array_equal(changed, 255 - pixels)
        if op.name == "PosterizeIncreasing":  # 1 bit kept, not 0: values 0 and 128, both present
            assert set(np.unique(changed)) == {0, 128}


def test_the_strong_view_is_well_formed_under_random_draws(unlabeled_images):
    image = Image.open(next(unlabeled_images.iterdir())).convert("RGB")
    view = strong_view(PRE, MustConfig())
    outs = []
    for seed in range(100):
        random.seed(seed)
        torch.manual_seed(seed)
        outs.append(view(image))
        assert outs[-1].shape == (3, 32, 32) and torch.isfinite(outs[-1]).all()
    assert len({o.sum().item() for o in outs}) > 90  # the draws differ: the view is not stuck on one output


def test_train_views_are_deterministic_per_seed_epoch_index(unlabeled_images):
    paths = sorted(unlabeled_images.iterdir())
    ds = TrainViews(paths, PRE, MaskGenerator(32, 8, 8, 0.5), MustConfig(seed=3))
    a, b = ds[(2, 0)], ds[(2, 0)]
    for key in ("weak", "strong", "mask"):
        assert torch.equal(a[key], b[key])
    c = ds[(2, 1)]
    assert not torch.equal(a["strong"], c["strong"])  # a new epoch draws new augmentations
    assert a["mask"].sum() == 8 and a["bad"] == -1
    assert set(a) == {"weak", "strong", "mask", "bad"}  # only what the training step reads travels to the device


def test_eval_view_is_a_deterministic_centre_crop(unlabeled_images):
    image = Image.open(next(unlabeled_images.iterdir())).convert("RGB")
    first, second = eval_view(PRE)(image), eval_view(PRE)(image)
    assert first.shape == (3, 32, 32) and torch.equal(first, second)


def test_sampler_shards_one_permutation_and_resumes_mid_epoch():
    full = [i for i, _ in EpochSampler(10, seed=1)]
    assert sorted(full) == list(range(10))
    r0 = [i for i, _ in EpochSampler(10, seed=1, rank=0, world=2)]
    r1 = [i for i, _ in EpochSampler(10, seed=1, rank=1, world=2)]
    assert r0 == full[0::2] and r1 == full[1::2]
    s = EpochSampler(10, seed=1)
    s.set_epoch(0, start=4)
    assert [i for i, _ in s] == full[4:] and len(s) == 6
    s.set_epoch(1)
    assert [i for i, _ in s] != full and all(e == 1 for _, e in s)


def test_low_resolution_rule_swaps_the_crop_for_translate_and_cutout():
    """At <= low_res_max_size px: no 0.3-area crop; at 224 px (or with the rule off) the paper's view."""
    big = Preprocess(224, PRE.mean, PRE.std)
    assert is_low_res(PRE, MustConfig()) and not is_low_res(big, MustConfig())
    assert not is_low_res(PRE, MustConfig(low_res_max_size=0))
    kinds = lambda view: [type(t).__name__ for t in view.transforms]  # noqa: E731
    low = kinds(strong_view(PRE, MustConfig()))
    assert "RandomResizedCrop" not in low and {"RandomCrop", "Cutout", "RandomHorizontalFlip"} <= set(low)
    paper = strong_view(big, MustConfig(strong_crop_min=0.5))
    assert paper.transforms[0].scale == (0.5, 1.0) and "Cutout" not in kinds(paper)
    assert "RandAugment" not in kinds(strong_view(big, MustConfig(randaugment="")))


def test_cutout_paints_one_mean_coloured_square_and_translate_shifts():
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    random.seed(1)
    out = np.asarray(Cutout(0.5, (10, 20, 30))(image)).reshape(-1, 3)
    painted = (out == (10, 20, 30)).all(1)
    assert 0 < painted.sum() <= 16 * 16 and (painted | (out == 255).all(1)).all()
    ramp = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).convert("RGB")
    shifted = [weak_view(PRE, MustConfig(weak_translate=0.125))(ramp) for _ in range(20)]
    assert any(not torch.equal(shifted[0], v) for v in shifted)
    assert torch.equal(weak_view(PRE, MustConfig())(ramp), eval_view(PRE)(ramp))
    assert isinstance(weak_view(PRE, MustConfig(weak_flip=True)).transforms[2], T.RandomHorizontalFlip)


def test_view_fields_are_config_with_a_one_line_error():
    from must_cli.base.config import resolve_config
    from must_cli.base.errors import MustError

    cfg = resolve_config(overrides={"randaugment": "rand-n1-m5", "strong_crop_min": 0.5, "low_res_max_size": 0})
    assert cfg.randaugment == "rand-n1-m5" and not is_low_res(PRE, cfg)
    try:
        resolve_config(overrides={"strong_crop_min": 0.6, "strong_crop_max": 0.5})
    except MustError as e:
        assert "strong_crop_min (0.6) is above strong_crop_max (0.5)" in str(e)
    else:
        raise AssertionError("min > max accepted")
