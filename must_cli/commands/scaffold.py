"""`must init`: a starting must.toml and classes.txt, and a quick survey of the user's images.

A first run fails most often on setup (a bad class file, an unknown config key, the wrong
schedule for the folder's size), so `init` writes files that are valid as they stand and
says which preset fits the images. This module returns data; the cli layer prints it.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from must_cli.base.config import MustConfig, resolve_config, to_toml
from must_cli.base.errors import MustError
from must_cli.files.images import display_name, scan_images

CONFIG_NAME = "must.toml"
CLASSES_NAME = "classes.txt"

SMALL_MAX = 5_000
"""Below this many images: small-dataset (the paper's DTD, Pets and Caltech101 have 3-4k)."""
MEDIUM_MAX = 50_000
"""Below this many images: medium-dataset (UCF101 10k, GTSRB 27k); above: large-dataset (SUN397, Food101, ImageNet)."""
TINY_SIDE = 64
"""Median shorter side at most this many pixels: tiny-images (docs/presets.md: low-resolution input, <= 64 px)."""

CLASSES_TEMPLATE = """\
# Class names for `must adapt IMAGES --classes classes.txt`: one class per line.
# Blank lines and lines starting with # are ignored; list at least 2 classes, each once.
# Write names as you would say them ("golden retriever", not "n02099601"):
# each one fills prompts such as "a photo of a {}.".
# Replace the two example names below with your own classes.
cat
dog
"""


@dataclass(frozen=True)
class ImageSurvey:
    """What `must init --images` learned about a folder, from file headers only."""

    root: Path
    readable: int
    skipped: int
    formats: dict[str, int]
    """Readable images per lower-cased file extension (without the dot), most common first."""
    smallest: tuple[int, int]
    median: tuple[int, int]
    largest: tuple[int, int]
    """(width, height) of the smallest, median and largest image by pixel count."""
    preset: str
    reason: str


def suggest_preset(count: int, median: tuple[int, int] | None = None) -> tuple[str, str]:
    """The preset for `count` images of `median` (width, height), and a one-line reason to show the user.

    Low resolution decides first: 32-px photos gain nothing from the long 224-px schedules.
    """
    if median is not None and min(median) <= TINY_SIDE:
        return "tiny-images", (f"median image {median[0]} x {median[1]}, at most {TINY_SIDE} px a side: "
                               "low-resolution photos, short schedule (like CIFAR's 32-px images)")
    if count < SMALL_MAX:
        return "small-dataset", f"{count:,} images, under {SMALL_MAX:,}: long schedule, short EMA ramp (like DTD, Pets, Caltech101)"
    if count < MEDIUM_MAX:
        return "medium-dataset", f"{count:,} images, between {SMALL_MAX:,} and {MEDIUM_MAX:,} (like UCF101, GTSRB)"
    return "large-dataset", f"{count:,} images, over {MEDIUM_MAX:,}: slow EMA teacher (like ImageNet, Food101, SUN397)"


def survey_images(root: Path, warn: Callable[[str], None]) -> ImageSurvey:
    """Count, check and measure the images under `root` without decoding any pixels.

    Headers are enough for sizes (PIL reads them lazily), so even a large folder is
    surveyed in seconds; each unusable file costs one `warn` line, as in `must adapt`.
    """
    good, skipped = scan_images(root, warn)
    sizes: list[tuple[int, int]] = []
    for path in good:
        with Image.open(path) as image:
            sizes.append(image.size)
    sizes.sort(key=lambda wh: (wh[0] * wh[1], wh))
    formats = Counter(path.suffix.lower().lstrip(".") for path in good)
    median = sizes[(len(sizes) - 1) // 2]
    preset, reason = suggest_preset(len(good), median)
    return ImageSurvey(
        root=root, readable=len(good), skipped=len(skipped),
        formats=dict(formats.most_common()), smallest=sizes[0],
        median=median, largest=sizes[-1], preset=preset, reason=reason,
    )


def model_input_size(model: str) -> int | None:
    """The input side of an open_clip model name, from the config open_clip ships (found, not imported)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            return int(json.loads((Path(folder) / "model_configs" / f"{model}.json").read_text())["vision_cfg"]
                       ["image_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def model_note(cfg: MustConfig, survey: ImageSurvey) -> str:
    """Comment lines on whether the config's model suits the surveyed photos, and what to change if not."""
    width, height = survey.median
    side = model_input_size(cfg.model)
    photos = f"median {width} x {height} px"
    if side is None:
        return f"# The model: check that {cfg.model}'s input size suits your photos ({photos}).\n"
    if survey.preset != "tiny-images":
        return (f"# The model: {cfg.model} takes {side}-px input: your photos ({photos}) are resized to it,\n"
                "# as CLIP itself was trained.\n")
    by_size, _ = suggest_preset(survey.readable)
    return (f"# The model: your photos are small ({photos}) and {cfg.model} takes {side}-px input,\n"
            f"# so each photo is upscaled about {side // max(min(width, height), 1)}x. The tiny-images values below were\n"
            f"# tuned for a model whose input is {TINY_SIDE} px or less: to keep them, set model to a CLIP whose\n"
            f"# input is {TINY_SIDE} px or less (e.g. local-dir:PATH). To keep {cfg.model}, adapt without this\n"
            f"# file, with --preset {by_size} (the preset for {survey.readable:,} images at full size).\n")


def config_text(cfg: MustConfig, preset: str | None, survey: ImageSurvey | None = None) -> str:
    """must.toml: a header saying how to use it, a word on the model for the surveyed photos, then every key."""
    origin = (
        f"# Values: the '{preset}' preset (suggested by `must init --images`; see docs/presets.md),\n"
        "# written out in full so you can edit any of them.\n"
        if preset else
        "# Values: the built-in defaults (the paper's ImageNet ViT-B/16 row).\n"
    )
    header = (
        "# MUST hyperparameters, written by `must init`. Use with:\n"
        f"#   must adapt IMAGES --classes {CLASSES_NAME} --config {CONFIG_NAME}\n"
        + origin +
        "# Precedence: defaults < --preset < --config (this file) < command-line flags.\n"
        "# Delete a line to fall back to its default; unknown keys are an error.\n"
        + (model_note(cfg, survey) if survey else "") + "\n"
    )
    return header + to_toml(cfg, comments=True).rstrip("\n") + "\n"


def init_project(directory: Path, survey: ImageSurvey | None = None, force: bool = False) -> list[Path]:
    """Write must.toml (with the survey's preset, if any) and classes.txt into `directory`, returning their paths.

    Existing files are checked before anything is written, so a refusal leaves the
    folder exactly as it was.
    """
    if directory.exists() and not directory.is_dir():
        raise MustError(f"{display_name(directory)} is not a folder: pass a folder for must.toml and classes.txt")
    config_path, classes_path = directory / CONFIG_NAME, directory / CLASSES_NAME
    if not force:
        for path in (config_path, classes_path):
            if path.exists():
                raise MustError(f"{display_name(path)} already exists: pass --force to overwrite it")
    preset = survey.preset if survey else None
    cfg = resolve_config(preset=preset)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        config_path.write_text(config_text(cfg, preset, survey), encoding="utf-8")
        classes_path.write_text(CLASSES_TEMPLATE, encoding="utf-8")
    except OSError as exc:
        raise MustError(f"cannot write into {display_name(directory)}: {exc.strerror or exc}") from None
    return [config_path, classes_path]
