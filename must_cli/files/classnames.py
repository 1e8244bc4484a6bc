"""Class lists and prompt templates: the only supervision MUST gets, so they are checked strictly."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from must_cli.base.errors import MustError
from must_cli.files.images import display_name


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
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
    for number, line in read_lines(path, "class list"):
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
    for number, line in read_lines(path, "prompt template"):
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


def template_sets() -> list[str]:
    """Names of the prompt sets shipped in must_cli/templates (the paper's per-dataset sets)."""
    return sorted(p.name[:-4] for p in resources.files("must_cli.templates").iterdir() if p.name.endswith(".txt"))


def shipped_templates(name: str) -> list[str]:
    """One shipped set, e.g. 'imagenet' (CLIP's 80 prompts) or 'food101' (the one the paper used)."""
    ref = resources.files("must_cli.templates") / f"{name}.txt"
    if not ref.is_file():
        raise MustError(f"unknown template_set '{name}': choose one of {', '.join(template_sets())}, "
                        "or pass --templates FILE")
    return [line for line in ref.read_text(encoding="utf-8").splitlines() if line.strip()]


def resolve_templates(templates_file: Path | None, template_set: str) -> list[str]:
    """The prompts a run uses: the user's --templates file if given, else the config's shipped set."""
    return read_templates(templates_file) if templates_file else shipped_templates(template_set)
