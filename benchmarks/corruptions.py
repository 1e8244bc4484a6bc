"""Deterministic CIFAR-10-C-style corruptions, in pure numpy + PIL.

Re-implements the corruptions of Hendrycks & Dietterich (ICLR 2019, ``make_cifar_c.py``) with
their CIFAR-10 (32x32) parameters, so that robustness benchmarks need neither scipy, OpenCV,
scikit-image nor a download of CIFAR-10-C. Unlike the original (global ``np.random`` state),
every random draw comes from an explicit ``np.random.Generator``, and ``corrupt_folder`` seeds
one per image from a stable hash, so a corrupted folder is reproducible bit for bit.

Like the original, float results are clipped to [0, 255] and truncated (``np.uint8``), not
rounded.

    python -m benchmarks.corruptions SRC DST --corruption gaussian_noise --severity 5 [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _param(values: list, severity: int):
    """Pick the parameter of a severity in 1..5 (fail loudly rather than wrap around)."""
    if not 1 <= severity <= len(values):
        raise ValueError(f"severity must be in 1..{len(values)}, got {severity}")
    return values[severity - 1]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 255] to uint8 by clipping and truncating, as CIFAR-10-C did."""
    return np.clip(x, 0, 255).astype(np.uint8)


def _filter2d(channel: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate a 2-D array with a small kernel, borders mirrored like OpenCV's default.

    OpenCV's BORDER_REFLECT_101 is numpy's ``reflect`` padding; kernels here are symmetric,
    so correlation equals convolution.
    """
    kh, kw = kernel.shape
    padded = np.pad(channel, ((kh // 2, kh // 2), (kw // 2, kw // 2)), mode="reflect")
    h, w = channel.shape
    out = np.zeros((h, w), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * padded[i : i + h, j : j + w]
    return out


def _gaussian_kernel_3(sigma: float) -> np.ndarray:
    """The 3x3 Gaussian that ``cv2.GaussianBlur(ksize=(3, 3), sigmaX=sigma)`` applies."""
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """Anti-aliased disk kernel of CIFAR-10-C's defocus blur (radius <= 8 branch).

    The 17x17 kernel is trimmed to its non-zero support: the result is unchanged, and the
    convolution gets cheaper and works on images smaller than the full kernel.
    """
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    aliased = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    aliased /= aliased.sum()
    kernel = _filter2d(aliased, _gaussian_kernel_3(alias_blur))
    rows = np.flatnonzero(kernel.any(axis=1))
    cols = np.flatnonzero(kernel.any(axis=0))
    return kernel[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's ``rgb2hsv`` for floats in [0, 1] (hue 0 and saturation 0 on grays)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    safe_delta = np.where(delta == 0, 1.0, delta)
    s = np.where(v == 0, 0.0, delta / np.where(v == 0, 1.0, v))
    h = np.where(r == v, (g - b) / safe_delta, 0.0)
    h = np.where(g == v, 2.0 + (b - r) / safe_delta, h)
    h = np.where(b == v, 4.0 + (r - g) / safe_delta, h)
    h = np.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    return np.stack([h, s, v], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's ``hsv2rgb``: the inverse of ``_rgb_to_hsv``."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = sector.astype(np.int64) % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.empty(hsv.shape, dtype=np.float64)
    for c in range(3):
        out[..., c] = np.choose(sector, [row[c] for row in table])
    return out


def _plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1], as in CIFAR-10-C's fog (``mapsize`` a power of 2)."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        # The original's noise term is ``wibble * uniform(-wibble, wibble)``; kept as is.
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squares = corners + np.roll(corners, shift=-1, axis=0)
        squares += np.roll(squares, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squares)

        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(top)

        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def gaussian_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, std in [0, 1] units."""
    c = _param([0.04, 0.06, 0.08, 0.09, 0.10], severity)
    x = img / 255.0
    return _to_uint8(np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255)


def impulse_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise per channel value (scikit-image ``random_noise(mode='s&p')``)."""
    amount = _param([0.01, 0.02, 0.03, 0.05, 0.07], severity)
    x = img / 255.0
    flipped = rng.random(x.shape) <= amount
    salted = rng.random(x.shape) <= 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return _to_uint8(x * 255)


def defocus_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolution with an anti-aliased disk (radius, alias blur sigma)."""
    radius, alias_blur = _param([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], severity)
    kernel = _disk(radius, alias_blur)
    x = img / 255.0
    blurred = np.stack([_filter2d(x[..., c], kernel) for c in range(3)], axis=-1)
    return _to_uint8(np.clip(blurred, 0, 1) * 255)


def contrast(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink every channel towards its mean."""
    c = _param([0.75, 0.5, 0.4, 0.3, 0.15], severity)
    x = img / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(np.clip((x - means) * c + means, 0, 1) * 255)


def brightness(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shift the HSV value channel up."""
    c = _param([0.05, 0.1, 0.15, 0.2, 0.3], severity)
    hsv = _rgb_to_hsv(img / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _to_uint8(np.clip(_hsv_to_rgb(hsv), 0, 1) * 255)


def saturate(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the HSV saturation channel (CIFAR-10-C's extra corruption)."""
    scale, shift = _param([(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)], severity)
    hsv = _rgb_to_hsv(img / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return _to_uint8(np.clip(_hsv_to_rgb(hsv), 0, 1) * 255)


def fog(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a plasma-fractal haze, then rescale to keep the original maximum.

    The fractal is 32x32 for CIFAR; larger images get the next power of two, cropped.
    """
    strength, decay = _param([(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], severity)
    h, w = img.shape[:2]
    mapsize = 1 << max(5, (max(h, w) - 1).bit_length())
    x = img / 255.0
    max_val = x.max()
    x += strength * _plasma_fractal(mapsize, decay, rng)[:h, :w, np.newaxis]
    return _to_uint8(np.clip(x * max_val / (max_val + strength), 0, 1) * 255)


def jpeg_compression(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Re-encode as JPEG with PIL at a low quality."""
    quality = _param([80, 65, 58, 50, 40], severity)
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.uint8)


def pixelate(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample by a factor, then box-upsample back to the original size."""
    c = _param([0.95, 0.9, 0.85, 0.75, 0.65], severity)
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.uint8)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
    "brightness": brightness,
    "saturate": saturate,
    "fog": fog,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
}


def image_seed(seed: int, corruption: str, relpath: str) -> int:
    """Stable per-image seed: the same image gets the same noise on every machine and run."""
    digest = hashlib.sha256(f"{seed}\0{corruption}\0{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def corrupt_folder(src: Path, dst: Path, corruption: str, severity: int, seed: int = 0) -> int:
    """Corrupt every ``src/<class>/<image>`` into ``dst/<class>/<stem>.png``; return the count.

    PNG is lossless, so the pixels evaluated are exactly the corrupted ones.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; choose from {sorted(CORRUPTIONS)}")
    fn = CORRUPTIONS[corruption]
    src, dst = Path(src), Path(dst)
    count = 0
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        out_dir = dst / class_dir.name
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in files:
            relpath = path.relative_to(src).as_posix()
            rng = np.random.default_rng(image_seed(seed, corruption, relpath))
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"), dtype=np.uint8)
            Image.fromarray(fn(img, severity, rng)).save(out_dir / f"{path.stem}.png")
            count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="folder of <class>/<image> files")
    parser.add_argument("dst", type=Path, help="output folder (<class>/<stem>.png)")
    parser.add_argument("--corruption", required=True, choices=sorted(CORRUPTIONS))
    parser.add_argument("--severity", type=int, default=5, choices=range(1, 6))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = corrupt_folder(args.src, args.dst, args.corruption, args.severity, args.seed)
    print(f"wrote {n} images to {args.dst} ({args.corruption}, severity {args.severity})")


if __name__ == "__main__":
    main()
