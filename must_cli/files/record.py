"""What a run is started with besides hyperparameters, and its record in RUN/config.toml.

config.toml is written when a run starts (resolved hyperparameters, then a [meta] table with
the image folder, class file, templates, preset and command line), so a killed run documents
itself and `must adapt --resume RUN` needs nothing else. Imports no torch.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from must_cli import __version__
from must_cli.base.config import MustConfig, resolve_config, to_toml
from must_cli.base.errors import MustError
from must_cli.files.run_dir import CONFIG_FILE, RunDir
from must_cli.files.runs import resolve_output

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCAL_DIR = "local-dir:"
RESUME_MAY_CHANGE = ("workers", "device", "epochs")  # flags `--resume RUN` accepts (--epochs: only more)


def absolute_model(spec: str) -> str:
    """A local-dir: model spec with an absolute path, so the record works from any folder."""
    if spec.startswith(LOCAL_DIR):
        return LOCAL_DIR + str(Path(spec[len(LOCAL_DIR):]).expanduser().resolve())
    return spec


@dataclass(frozen=True)
class RunInputs:
    """What a run was started with besides hyperparameters: enough to continue it with `--resume RUN` alone."""

    images: Path
    classes: Path
    templates: Path | None = None
    eval_dir: Path | None = None
    preset: str | None = None
    config_file: Path | None = None
    command: str = ""  # the full command line, as typed

    def absolute(self) -> "RunInputs":
        resolve = lambda p: p.expanduser().resolve() if p is not None else None  # noqa: E731
        return RunInputs(resolve(self.images), resolve(self.classes), resolve(self.templates),
                         resolve(self.eval_dir), self.preset, resolve(self.config_file), self.command)


def record_text(folder: Path, cfg: MustConfig, inputs: RunInputs) -> str:
    """config.toml's text: the resolved hyperparameters, then a [meta] table with the run's inputs.

    `must adapt --config RUN/config.toml` reads it like any config file ([meta] is documentation there).
    """
    meta = {key: str(value) for key, value in asdict(inputs.absolute()).items() if value not in (None, "")}
    meta["must_cli_version"] = __version__
    meta["started"] = datetime.now().isoformat(timespec="seconds")
    lines = [f"# must adapt run in {folder}; continue it with `must adapt --resume {folder}`", to_toml(cfg),
             "[meta]", *(f"{key} = {json.dumps(value)}" for key, value in meta.items())]
    return "\n".join(lines) + "\n"


def read_record(folder: Path) -> RunInputs:
    """The inputs a run recorded in its config.toml, for `must adapt --resume RUN`."""
    path = RunDir(folder).config_file
    try:
        meta = tomllib.loads(path.read_text(encoding="utf-8")).get("meta", {})
        as_path = lambda key: Path(meta[key]) if key in meta else None  # noqa: E731
        return RunInputs(Path(meta["images"]), Path(meta["classes"]), as_path("templates"), as_path("eval_dir"),
                         meta.get("preset"), as_path("config_file"), meta.get("command", ""))
    except FileNotFoundError:
        raise MustError(f"{path}: no record of this run: pass IMAGES and --classes as the run was started, "
                        "with --output and --resume") from None
    except (OSError, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MustError(f"{path}: cannot read the run's record ({e}): pass IMAGES and --classes as the run "
                        "was started, with --output and --resume") from None


def check_inputs(inputs: RunInputs) -> None:
    """Fail in a second, before torch loads, on a missing folder or a bad class or template file."""
    from must_cli.files.classnames import read_class_file, read_templates

    for flag, folder in (("IMAGES", inputs.images), ("--eval-dir", inputs.eval_dir)):
        if folder is not None and not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise MustError(f"{flag} {folder} {what}: pass a folder of images")
    read_class_file(inputs.classes)
    if inputs.templates is not None:
        read_templates(inputs.templates)


def recorded_run(output: Path | None, resume_from: Path | None, flags: dict[str, Any]) -> tuple[Path, RunInputs]:
    """For `must adapt --resume RUN` without IMAGES: the run folder and the inputs it recorded.

    ``flags`` are the other options as given (None: not given); any of them is refused, since the
    run continues exactly as it was started.
    """
    changed = sorted(f"--{name.replace('_', '-')}" for name, value in flags.items() if value is not None)
    if changed:
        raise MustError(f"--resume without IMAGES continues the run as its {CONFIG_FILE} records it: only "
                        f"{', '.join('--' + f for f in RESUME_MAY_CHANGE)} may be given; drop {', '.join(changed)}")
    folder = resolve_output(output, True, resume_from)
    return folder, read_record(folder)


@dataclass(frozen=True)
class AdaptOptions:
    """`must adapt`'s flags as given (None: not given), built by the CLI and read by name from here on.

    The hyperparameter flags carry MustConfig's field names, so `overrides` hands them to resolve_config.
    """

    images: Path | None = None
    classes: Path | None = None
    templates: Path | None = None
    preset: str | None = None
    config: Path | None = None
    output: Path | None = None
    overwrite: bool = False
    eval_dir: Path | None = None
    resume: str | None = None  # "" (a bare --resume): the output's newest run
    init_from: Path | None = None
    predict: bool | None = None
    gpus: int | None = None
    tensorboard: Path | None = None
    model: str | None = None
    pretrained: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    base_lr: float | None = None
    device: str | None = None
    seed: int | None = None
    workers: int | None = None
    mim: bool | None = None
    align: bool | None = None
    fairness: bool | None = None
    guard: bool | None = None
    accum_steps: int | None = None
    grad_checkpointing: bool | None = None
    compile: bool | None = None
    cache: bool | None = None
    cache_dir: str | None = None
    precision: str | None = None
    save_every: int | None = None
    max_pixels: int | None = None
    keep_checkpoints: int | None = None
    class_prior: str | None = None
    freeze_classifier: bool | None = None

    @property
    def resuming(self) -> bool:
        return self.resume is not None

    @property
    def resume_from(self) -> Path | None:
        """The run folder or checkpoint after --resume; None for a bare --resume or none."""
        return Path(self.resume) if self.resume else None

    def overrides(self, names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The hyperparameter flags (MustConfig fields; only ``names`` if given), None where not given."""
        wanted = names if names is not None else tuple(MustConfig.model_fields)
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in wanted}


def inputs_from_flags(opts: AdaptOptions, argv: list[str]) -> tuple[RunInputs, MustConfig, Path | None]:
    """The run's inputs, resolved config and output folder from `must adapt`'s flags; checked without torch.

    Without IMAGES, --resume RUN reads them back from the run's config.toml.
    """
    if opts.images is None:
        if not opts.resuming:
            raise MustError("missing IMAGES: pass the folder of unlabeled images, or --resume RUN to continue a run")
        if opts.overwrite:
            raise MustError("--overwrite starts a run over and --resume continues one: pick one")
        fixed = {"images", "output", "resume", "gpus", "overwrite", *RESUME_MAY_CHANGE}
        others = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in fixed}
        folder, inputs = recorded_run(opts.output, opts.resume_from, others)
        cfg = resolve_config(config_file=RunDir(folder).config_file, overrides=opts.overrides(RESUME_MAY_CHANGE))
        check_inputs(inputs)
        return inputs, cfg, folder
    if opts.classes is None:
        raise MustError("missing --classes FILE: a text file with one class name per line")
    cfg = resolve_config(opts.preset, opts.config, opts.overrides())
    inputs = RunInputs(opts.images, opts.classes, opts.templates, opts.eval_dir, opts.preset, opts.config,
                       shlex.join(["must", "adapt", *argv]))
    check_inputs(inputs)
    return inputs, cfg, opts.output
