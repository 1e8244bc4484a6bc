"""`must predict --sort-into DIR`: images copied or linked into one folder per predicted class.

Folder names are portable (no path escapes, no Windows device names, no case clashes), nothing
is ever overwritten, and a rerun adds nothing: an identical copy already in place is skipped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

from must_cli.base.errors import MustError
from must_cli.files.images import display_name

UNCERTAIN = "_uncertain"
MAX_FOLDER_BYTES = 100
# Device names Windows refuses as file or folder names, with or without an extension.
WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10))})
# Path separators plus the characters Windows forbids, so a sorted folder can be copied to any disk.
UNSAFE_CHARS = frozenset('/\\<>:"|?*')
HARDLINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP}


def _clean_folder_name(name: str, index: int) -> str:
    """One class name as a portable folder name, before clashes with other classes are resolved."""
    text = unicodedata.normalize("NFC", name)
    text = "".join("_" if c in UNSAFE_CHARS or unicodedata.category(c) == "Cc" else c for c in text)
    text = text.encode("utf-8")[:MAX_FOLDER_BYTES].decode("utf-8", "ignore").strip(". ")
    if not text.strip("._ "):  # '.', '..', '///': nothing that names the class is left
        return f"class_{index}"
    head, dot, tail = text.partition(".")
    if head.rstrip(" ").upper() in WINDOWS_RESERVED:
        text = f"{head}_{dot}{tail}"
    return text


def _fit(base: str, suffix: str) -> str:
    """``base + suffix`` within the byte cap, trimming the base rather than the disambiguating suffix."""
    room = MAX_FOLDER_BYTES - len(suffix.encode("utf-8"))
    return base.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(". ") + suffix


def safe_folder_names(classnames: list[str]) -> dict[str, str]:
    """Class name -> a folder name that cannot escape DIR, clash with another class, or break on Windows.

    Clashes after cleaning (case-insensitively, for macOS/Windows disks) get ``_2``, ``_3`` in
    class order, so the same class list always gives the same folders. ``_uncertain`` is kept
    for low-confidence images.
    """
    taken = {UNCERTAIN.casefold()}
    mapping: dict[str, str] = {}
    for index, name in enumerate(classnames):
        base = _clean_folder_name(name, index)
        folder, n = _fit(base, ""), 2
        while folder.casefold() in taken:
            folder, n = _fit(base, f"_{n}"), n + 1
        taken.add(folder.casefold())
        mapping[name] = folder
    return mapping


class Sorter:
    """Copies or links each image into DIR/<class folder>/; never outside DIR, never over an existing file."""

    def __init__(self, root: Path, classnames: list[str], link: str | None, min_confidence: float | None):
        mapping = safe_folder_names(classnames)
        self.root, self.link, self.min_confidence = root, link, min_confidence
        self.folders = [mapping[c] for c in classnames]
        self.renamed = {c: f for c, f in mapping.items() if c != f}
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []
        self._next_suffix: dict[Path, int] = {}
        self.already_there = 0  # images whose identical copy (or link) was in place from an earlier run
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MustError(f"--sort-into {display_name(root)}: cannot create it ({e.strerror}): pick a writable folder") from None
        real = root.resolve()
        for folder in {*self.folders, UNCERTAIN}:  # second line of defence, e.g. a symlink planted in DIR
            target = (root / folder).resolve()
            if target == real or not target.is_relative_to(real):
                raise MustError(
                    f"--sort-into: class folder {display_name(folder)!r} would resolve to {display_name(target)}, "
                    f"outside {display_name(real)}: remove that link or pick another folder"
                )

    def place(self, src: Path, class_index: int, confidence: float) -> None:
        """Copy or link ``src`` into its class folder (``_uncertain`` below --min-confidence), unless it is there."""
        uncertain = self.min_confidence is not None and confidence < self.min_confidence
        folder = UNCERTAIN if uncertain else self.folders[class_index]
        dst = self.root / folder
        try:
            dst.mkdir(exist_ok=True)
            free = self._free_name(dst, src)
            if free is None:
                self.already_there += 1
            else:
                dst = free
                self._transfer(src, dst)
        except OSError as e:  # a full disk or a read-only DIR: name both files
            raise MustError(f"--sort-into: cannot {'link' if self.link else 'copy'} {display_name(src)} to "
                            f"{display_name(dst)} ({e.strerror or e}): check free space and permissions") from None
        self.counts[folder] += 1

    def _free_name(self, folder: Path, src: Path) -> Path | None:
        """``name``, else ``stem_2.ext``, ``stem_3.ext``...; None if one of them already holds ``src``.

        Same-named images from different subfolders all survive, and a rerun adds nothing: a file
        with the same name and the same content (or a link to ``src``) counts as ``src`` in place.
        """
        name = src.name
        stem, ext = os.path.splitext(name)
        n = self._next_suffix.get(folder / name, 1)
        while os.path.lexists(candidate := folder / (name if n == 1 else f"{stem}_{n}{ext}")):
            if same_file(src, candidate):
                return None
            n += 1
        self._next_suffix[folder / name] = n + 1
        return candidate

    def _transfer(self, src: Path, dst: Path) -> None:
        if self.link == "sym":
            os.symlink(src.resolve(), dst)
            return
        if self.link == "hard":
            try:
                os.link(src, dst)
                return
            except OSError as e:
                if e.errno not in HARDLINK_FALLBACK:
                    raise
                if not self.notes:
                    self.notes.append(f"cannot hard-link into {display_name(self.root)} ({e.strerror}): copied instead")
        with open(src, "rb") as fin, open(dst, "xb") as fout:  # "x": fail rather than overwrite
            shutil.copyfileobj(fin, fout)
        shutil.copystat(src, dst)


def same_file(src: Path, placed: Path) -> bool:
    """``placed`` is ``src`` sorted before: a link to it, or a copy of the same size and the same bytes."""
    try:
        if placed.is_symlink():
            return placed.resolve() == src.resolve()
        if os.path.samefile(src, placed):
            return True
        return placed.stat().st_size == src.stat().st_size and file_digest(placed) == file_digest(src)
    except OSError:  # a dangling link or an unreadable file is not this image
        return False


def file_digest(path: Path) -> bytes:
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()
