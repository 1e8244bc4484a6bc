"""Views are well-formed and deterministic per (seed, epoch, index); the sampler shards like DistributedSampler."""

import torch
from PIL import Image

from must_cli.masking import MaskGenerator
from must_cli.model import Preprocess
from must_cli.views import EpochSampler, TrainViews, eval_view, strong_view

PRE = Preprocess(32, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))


def test_strong_view_survives_every_randaugment_op(unlabeled_images):
    """RandAugment magnitudes near the top once crashed Pillow's posterize (0 bits)."""
    image = Image.open(next(unlabeled_images.iterdir())).convert("RGB")
    view = strong_view(PRE)
    for seed in range(400):
        torch.manual_seed(seed)
        out = view(image)
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_train_views_are_deterministic_per_seed_epoch_index(unlabeled_images):
    paths = sorted(unlabeled_images.iterdir())
    ds = TrainViews(paths, PRE, MaskGenerator(32, 8, 8, 0.5), seed=3)
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
