"""Finding and decoding the user's images.

A folder of real-world photos always holds a few bad files (truncated downloads, mislabelled
text files, odd modes); they must cost one warning line each, never a crash mid-training.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from must_cli.base.config import PIXEL_CEILING, MustConfig
from must_cli.base.errors import MustError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
"""Lower-cased suffixes (with the dot, as `Path.suffix` gives them) of the files we look at."""

DEFAULT_MAX_PIXELS: int = MustConfig.default("max_pixels")
LARGE_PIXELS = 89_478_485
"""PIL's own decompression-bomb limit: an image above it is decoded at 1/n of its size, to below it."""
Image.MAX_IMAGE_PIXELS = PIXEL_CEILING  # PIL's global guard becomes our ceiling; max_pixels is checked per file


class ImageReadError(MustError):
    """One image file that cannot be used; `.reason` is short enough for a one-line warning."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"cannot read image {display_name(path)}: {reason}: replace it with a valid image or remove it"
        )
        self.path = path
        self.reason = reason


def _ignore(message: str) -> None:
    """Default `warn` for callers that do not report skipped folders."""


def display_name(path: Path | str) -> str:
    """Printable form of a path.

    Python keeps undecodable bytes of file names as lone surrogates, which make `print` raise;
    they are shown as `\\xNN` instead, while valid UTF-8 (emoji included) is kept as is.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def require_folder(root: Path) -> None:
    """One-line error for an IMAGES argument that is not a folder (cheap: runs before torch loads)."""
    if not root.is_dir():
        raise MustError(f"{display_name(root)} is not a folder: pass a folder of images")


def discover_images(root: Path, warn: Callable[[str], None] = _ignore, exclude: Path | None = None) -> list[Path]:
    """Every image file under `root`, sorted by relative path so runs are reproducible.

    Symlinked files and folders are followed, but each real folder is read once, so a link
    back to a parent cannot loop. Hidden files and folders (editor, OS and VCS clutter) are
    skipped; an unreadable folder costs one `warn` line instead of the whole run. The folder
    `exclude` (and what is under it) is never entered.
    """
    require_folder(root)
    found: list[Path] = []
    visited: set[str] = {os.path.realpath(exclude)} if exclude is not None else set()
    pending = [root]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            warn(f"skipping folder {display_name(folder)}: {exc.strerror or exc}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            try:
                if entry.is_dir():
                    pending.append(path)
                elif entry.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(path)
            except OSError:  # a symlink that points at itself (ELOOP): nothing to read there
                continue
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


class _TooLarge(Exception):
    """A header over the caller's max_pixels: refused before any pixel is decoded."""


@contextmanager
def _open_image(path: Path, max_pixels: int = PIXEL_CEILING) -> Iterator[Image.Image]:
    """Open `path` with PIL, turning every way a user's file can be bad into ImageReadError.

    Errors raised while the caller decodes inside the `with` block are translated too.
    Decompression bombs (a header over `max_pixels`) are refused from the header alone;
    PIL's own limit, the ceiling, only warns below twice itself, so its warning is an error here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise _TooLarge(f"{image.width} x {image.height} pixels")
                yield image
                return
    except PermissionError:
        reason = "permission denied"
    except _TooLarge as exc:
        reason = f"too large: {exc}, over --max-pixels {max_pixels:,} (a decompression-bomb guard): raise it if you trust the file"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        reason = f"too large: over the decompression-bomb ceiling of {PIXEL_CEILING:,} pixels"
    except UnidentifiedImageError:
        reason = "not an image" if path.stat().st_size else "empty file"
    except Exception as exc:  # on corrupt input PIL raises OSError, ValueError, SyntaxError, ...
        reason = f"unreadable: {exc}"
    raise ImageReadError(path, reason)


def reduction(size: tuple[int, int]) -> int:
    """The per-side divisor that brings an image of `size` under LARGE_PIXELS (1: decoded as is)."""
    return max(1, math.ceil(math.sqrt(size[0] * size[1] / LARGE_PIXELS)))


def probe_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why `path` cannot be used, or None if its header is fine.

    Only the header is read (no pixel decode), so every file can be checked at startup;
    truncated pixel data is caught later by `load_rgb`.
    """
    try:
        image_size(path, max_pixels)
        return None
    except ImageReadError as exc:
        return exc.reason


def image_size(path: Path, max_pixels: int = PIXEL_CEILING) -> tuple[int, int]:
    """(width, height) as stored, from the header alone: cheap enough to ask before every decode."""
    with _open_image(path, max_pixels) as image:
        return image.size


def load_rgb(path: Path, draft: int | None = None) -> Image.Image:
    """Fully decode `path` into an 8-bit RGB image, upright as the camera meant it.

    The EXIF orientation is applied, animations give their first frame, and transparency is
    composited onto white (how transparent images are normally displayed). A truncated file
    raises ImageReadError (PIL's LOAD_TRUNCATED_IMAGES is left False) instead of being
    silently padded with grey.

    With `draft`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that keeps
    both sides >= `draft`: a 12-megapixel photo then costs a fraction of a full decode.
    Other formats ignore it. An image over LARGE_PIXELS (a large scan that passed the
    max_pixels check at scan time) is decoded reduced, so it never costs more memory than that.
    Only the ceiling is checked here: every path comes from `scan_images`, which applied max_pixels.
    """
    with _open_image(path) as image:
        factor = reduction(image.size)
        if draft or factor > 1:
            image.draft("RGB", (draft, draft) if draft else (image.width // factor, image.height // factor))
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    factor = reduction(rgb.size)  # what a JPEG draft did not already remove (other formats decode in full)
    return rgb.reduce(factor) if factor > 1 else rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB without clipping high-bit-depth values at 255."""
    if image.mode.startswith("I;16"):
        return _gray_to_rgb(np.asarray(image, dtype=np.float64) / 257.0)
    if image.mode in ("I", "F"):
        return _gray_to_rgb(_wide_to_8bit(np.asarray(image, dtype=np.float64), image.mode))
    if {"A", "a"} & set(image.getbands()) or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Guess the range of a 32-bit integer or float image from its values, and map it to 0..255.

    These modes carry no declared bit depth: floats in 0..1, values that fit 8 bits, and values
    that fit 16 bits (how some readers hand over 16-bit files) keep their meaning; anything
    else is stretched from its minimum to its maximum.
    """
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0 and high <= 1:
        return values * 255.0
    if low >= 0 and high <= 255:
        return values
    if low >= 0 and high <= 65535:
        return values / 257.0
    return (values - low) * (255.0 / ((high - low) or 1.0))


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    """Round 0..255 floats to a uint8 grey image and copy it into three channels."""
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def scan_images(
    root: Path, warn: Callable[[str], None], max_pixels: int = DEFAULT_MAX_PIXELS, exclude: Path | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Discover the images under `root` and check every header before any work starts.

    Returns (usable paths, skipped (path, reason) pairs); each skipped file gets one `warn`
    line, and so does each image large enough to be decoded reduced. `exclude` is a folder
    left out of the scan (e.g. where `--sort-into` copies images inside `root`). Raises
    MustError when nothing usable is left, since there is nothing to adapt to.
    """
    good: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in discover_images(root, warn, exclude):
        try:
            size = image_size(path, max_pixels)
        except ImageReadError as exc:
            skipped.append((path, exc.reason))
            warn(f"skipping {display_name(path)}: {exc.reason}")
            continue
        good.append(path)
        if reduction(size) > 1:
            warn(f"{display_name(path)}: {size[0]} x {size[1]} pixels, decoded at 1/{reduction(size)} of each side "
                 f"to stay under {LARGE_PIXELS:,} pixels")
    if not good:
        formats = ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
        raise MustError(
            f"no readable image in {display_name(root)}: supported formats are {formats}"
        )
    return good, skipped
