"""Patch-aligned random masking (SimMIM), the masking MUST uses for its [MSK] tokens."""

from __future__ import annotations

import math

import numpy as np

REFERENCE_IMAGE_SIZE = 224


def resolve_mask_patch_size(mask_patch_size: int, image_size: int, patch_size: int) -> int:
    """Fit a mask square size, given in pixels at 224-px input, to this model.

    The paper's mask sizes (16-56 px) are for 224-px ViTs. A square must be a whole
    number of model patches and tile the image, so we keep the same *fraction of the
    image side*: scale to the model's input size, then take the nearest (in ratio)
    size ``k * patch_size`` with ``k`` dividing the token grid. At 224 px with a valid
    size this is the identity; on 32-px images with 4-px patches, 32 becomes 4.
    """
    grid = image_size // patch_size
    target = mask_patch_size * image_size / REFERENCE_IMAGE_SIZE
    candidates = [k * patch_size for k in range(1, grid + 1) if grid % k == 0]
    return min(candidates, key=lambda c: (abs(math.log(c / target)), c))


class MaskGenerator:
    """Draws boolean token masks: ``ceil(ratio * squares)`` whole squares masked per image."""

    def __init__(self, image_size: int, patch_size: int, mask_patch_size: int, ratio: float):
        if mask_patch_size % patch_size or image_size % mask_patch_size:
            raise ValueError(
                f"mask patch size {mask_patch_size} must be a multiple of the patch size {patch_size} "
                f"and divide the image size {image_size}"
            )
        self.squares_per_side = image_size // mask_patch_size
        self.scale = mask_patch_size // patch_size
        self.num_squares = self.squares_per_side**2
        self.num_masked = math.ceil(ratio * self.num_squares)

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """Return a flat (grid*grid,) bool mask over the model's patch tokens, row-major."""
        squares = np.zeros(self.num_squares, dtype=bool)
        squares[rng.choice(self.num_squares, self.num_masked, replace=False)] = True
        squares = squares.reshape(self.squares_per_side, self.squares_per_side)
        return squares.repeat(self.scale, axis=0).repeat(self.scale, axis=1).reshape(-1)
