"""A resized on-disk copy of large photos, so only the first epoch pays for decoding them.

A 12-megapixel JPEG takes ~100x longer to decode than an ImageNet-sized one, yet the views
only need a few hundred pixels a side. The first read decodes it at reduced scale (JPEG
draft mode), shrinks it and stores a small JPEG; later epochs read that file instead. The
store lives on disk so every DataLoader worker, rank and resumed run shares it, and each
entry is keyed by the source's path, size and mtime, so an edited photo is decoded afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from must_cli.files.images import ImageReadError, image_size, load_rgb

VERSION = 1  # bump when what is stored changes, so old entries are never read
# JPEG at quality 95 without chroma subsampling: ~2/255 mean difference from decoding the
# original in full and resizing (4:2:0 would triple it); half the time and size of a PNG to read.
QUALITY = 95


def cached_side(input_size: int) -> int:
    """Shorter side of a cached image: 1.5x the model's input.

    The strong view crops 30-100% of the area, so its smallest crops span ~0.47 of the
    shorter side; at 1.5x they are upscaled <= 1.4x, about what an ImageNet photo (shorter
    side ~1.6x 224) gives, and decoding plus augmenting such a file costs what an
    ImageNet-sized JPEG costs (measured in docs/benchmarks.md). Larger would be slower for no
    visible gain at the model's resolution; the weak view only needs 1x.
    """
    return round(1.5 * input_size)


class ResizedCache:
    """Loads images like `load_rgb`, but serves large ones from a reduced copy under `root`.

    An image is cached when its shorter side is at least twice `side` (decoding it costs
    >= 4x the stored copy); smaller images are read directly, untouched. Picklable, so
    DataLoader workers each get one; writes are atomic, so concurrent workers never see a
    partial file. A cache that cannot be written only costs speed.
    """

    def __init__(self, root: Path, input_size: int):
        self.root = Path(root)
        self.side = cached_side(input_size)

    def entry(self, path: Path) -> Path:
        """Where the copy of `path`, as it is now (size, mtime), is stored."""
        st = os.stat(path)
        stamp = str((st.st_size, st.st_mtime_ns, self.side, VERSION)).encode()
        ident = os.fsencode(os.path.abspath(path)) + b"\0" + stamp
        key = hashlib.blake2b(ident, digest_size=16).hexdigest()
        return self.root / key[:2] / f"{key}.jpg"

    def load(self, path: Path) -> Image.Image:
        """The upright RGB image: the stored copy if it exists, else decoded (and stored if large)."""
        if min(image_size(path)) < 2 * self.side:
            return load_rgb(path)
        entry = self.entry(path)
        if entry.is_file():
            try:
                return load_rgb(entry)
            except ImageReadError:  # damaged (e.g. by a crash before it reached the disk): rebuild
                pass
        image = load_rgb(path, draft=self.side)
        scale = self.side / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=QUALITY, subsampling=0)
        self._write(entry, buffer.getvalue())
        # Return what a later read returns, so an image's pixels never depend on the cache's state.
        return Image.open(buffer).convert("RGB")

    @staticmethod
    def _write(entry: Path, data: bytes) -> None:
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, entry)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
