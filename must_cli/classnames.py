"""Class lists and prompt templates: the only supervision MUST gets, so they are checked strictly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from must_cli.errors import MustError
from must_cli.images import display_name


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, text) of each line that is neither blank nor a '#' comment.

    Files made by hand come from any editor, so a UTF-8 BOM and Windows line endings are accepted.
    """
    name = display_name(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MustError(f"{name} does not exist: pass the path of your {what} file") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise MustError(f"{name} line {line}: not UTF-8 text: save the file as UTF-8") from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise MustError(f"cannot read {name}: {reason}: check the path and its permissions") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.split("\n"), start=1)]
    return [(number, line) for number, line in lines if line and not line.startswith("#")]


def read_class_file(path: Path) -> list[str]:
    """Class names, one per line, with runs of whitespace collapsed to one space.

    Duplicates (ignoring case) are refused because two identical text prototypes would split
    one class's images at random. Names may hold '/' or '..': they are labels, not paths.
    """
    name = display_name(path)
    classes: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in _read_lines(path, "class list"):
        label = " ".join(line.split())
        if "\0" in label:
            raise MustError(f"{name} line {number}: the class name contains a NUL character: remove it")
        key = label.casefold()
        if key in first_line:
            raise MustError(
                f"{name} line {number}: {label!r} repeats line {first_line[key]}: class names must be unique"
            )
        first_line[key] = number
        classes.append(label)
    if len(classes) < 2:
        raise MustError(f"{name} lists {len(classes)} class(es): list at least 2 classes, one per line")
    return classes


def read_templates(path: Path) -> list[str]:
    """Prompt templates, one per line, each with exactly one '{}' where the class name goes."""
    name = display_name(path)
    templates: list[str] = []
    for number, line in _read_lines(path, "prompt template"):
        if line.count("{}") != 1:
            raise MustError(
                f"{name} line {number}: {line!r} must contain '{{}}' exactly once, where the class name goes"
            )
        templates.append(line)
    if not templates:
        raise MustError(f"{name} has no template: write at least one prompt such as 'a photo of a {{}}.'")
    return templates


def fill_templates(templates: Sequence[str], classname: str) -> list[str]:
    """The prompts for one class; `replace`, not `format`, so braces in names or templates are harmless."""
    return [template.replace("{}", classname) for template in templates]


IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)
"""CLIP's 80 ImageNet prompts (OpenAI's CLIP notebook; open_clip's OPENAI_IMAGENET_TEMPLATES)."""
