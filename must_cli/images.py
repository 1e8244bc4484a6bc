"""Finding and decoding the user's images.

A folder of real-world photos always holds a few bad files (truncated downloads, mislabelled
text files, odd modes); they must cost one warning line each, never a crash mid-training.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from must_cli.errors import MustError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
"""Lower-cased suffixes (with the dot, as `Path.suffix` gives them) of the files we look at."""


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


def discover_images(root: Path, warn: Callable[[str], None] = _ignore) -> list[Path]:
    """Every image file under `root`, sorted by relative path so runs are reproducible.

    Symlinked files and folders are followed, but each real folder is read once, so a link
    back to a parent cannot loop. Hidden files and folders (editor, OS and VCS clutter) are
    skipped; an unreadable folder costs one `warn` line instead of the whole run.
    """
    if not root.is_dir():
        raise MustError(f"{display_name(root)} is not a folder: pass a folder of images")
    found: list[Path] = []
    visited: set[str] = set()
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


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """Open `path` with PIL, turning every way a user's file can be bad into ImageReadError.

    Errors raised while the caller decodes inside the `with` block are translated too.
    Decompression bombs (over PIL's default `Image.MAX_IMAGE_PIXELS`) are refused: PIL only
    warns below twice the limit, so the warning is made an error here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
                return
    except PermissionError:
        reason = "permission denied"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        reason = f"too large: exceeds the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels"
    except UnidentifiedImageError:
        reason = "not an image" if path.stat().st_size else "empty file"
    except Exception as exc:  # on corrupt input PIL raises OSError, ValueError, SyntaxError, ...
        reason = f"unreadable: {exc}"
    raise ImageReadError(path, reason)


def probe_image(path: Path) -> str | None:
    """Why `path` cannot be used, or None if its header is fine.

    Only the header is read (no pixel decode), so every file can be checked at startup;
    truncated pixel data is caught later by `load_rgb`.
    """
    try:
        with _open_image(path):
            return None
    except ImageReadError as exc:
        return exc.reason


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as stored, from the header alone: cheap enough to ask before every decode."""
    with _open_image(path) as image:
        return image.size


def load_rgb(path: Path, draft: int | None = None) -> Image.Image:
    """Fully decode `path` into an 8-bit RGB image, upright as the camera meant it.

    The EXIF orientation is applied, animations give their first frame, and transparency is
    composited onto white (how transparent images are normally displayed). A truncated file
    raises ImageReadError (PIL's LOAD_TRUNCATED_IMAGES is left False) instead of being
    silently padded with grey.

    With `draft`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that keeps
    both sides >= `draft`: a 12-megapixel photo then costs a fraction of a full decode.
    Other formats ignore it.
    """
    with _open_image(path) as image:
        if draft:
            image.draft("RGB", (draft, draft))
        return _to_rgb(ImageOps.exif_transpose(image))


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
    root: Path, warn: Callable[[str], None]
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Discover the images under `root` and check every header before any work starts.

    Returns (usable paths, skipped (path, reason) pairs); each skipped file gets one `warn`
    line. Raises MustError when nothing usable is left, since there is nothing to adapt to.
    """
    good: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in discover_images(root, warn):
        reason = probe_image(path)
        if reason is None:
            good.append(path)
        else:
            skipped.append((path, reason))
            warn(f"skipping {display_name(path)}: {reason}")
    if not good:
        formats = ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
        raise MustError(
            f"no readable image in {display_name(root)}: supported formats are {formats}"
        )
    return good, skipped
