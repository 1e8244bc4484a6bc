"""Mask counts are exact and masks are whole squares aligned to the mask grid."""

import math

import numpy as np
import pytest

from must_cli.method.masking import MaskGenerator, resolve_mask_patch_size


@pytest.mark.parametrize("image,patch,square,ratio", [(224, 16, 32, 0.3), (224, 16, 16, 0.1), (224, 14, 56, 0.3),
                                                      (32, 4, 4, 0.3), (32, 4, 8, 0.5)])
def test_exact_count_and_square_alignment(image, patch, square, ratio):
    gen = MaskGenerator(image, patch, square, ratio)
    rng = np.random.default_rng(0)
    n_squares = (image // square) ** 2
    per_square = (square // patch) ** 2
    grid = image // patch
    for _ in range(20):
        mask = gen(rng)
        assert mask.shape == (grid * grid,) and mask.dtype == bool
        assert mask.sum() == math.ceil(ratio * n_squares) * per_square
        k = square // patch
        blocks = mask.reshape(grid // k, k, grid // k, k).transpose(0, 2, 1, 3).reshape(-1, k * k)
        assert np.all(blocks.all(1) | ~blocks.any(1))  # every square fully masked or fully visible


def test_masks_are_random_but_seeded():
    gen = MaskGenerator(224, 16, 32, 0.3)
    a, b = gen(np.random.default_rng(1)), gen(np.random.default_rng(1))
    c = gen(np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_invalid_square_size_is_rejected():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        MaskGenerator(224, 16, 24, 0.3)


@pytest.mark.parametrize("given,image,patch,expected", [
    (32, 224, 16, 32), (16, 224, 16, 16), (56, 224, 14, 56), (28, 224, 14, 28),
    (32, 32, 4, 4),  # 1/7 of a 32-px image is nearest to one 4-px patch
    (56, 224, 16, 32),  # a ViT-L/14 size on a /16 model: nearest tiling size
    (112, 32, 4, 16),
])
def test_mask_square_rescaling_rule(given, image, patch, expected):
    assert resolve_mask_patch_size(given, image, patch) == expected
