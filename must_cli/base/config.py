"""The single source of truth for every hyperparameter.

A run's configuration is built in layers: the defaults below, then a preset from
``must_cli/presets/*.toml``, then the user's ``--config FILE.toml``, then command-line flags.
The resolved object is written as ``config.toml`` next to every model.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from must_cli.base.errors import MustError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# ---- runtime defaults shared by adapt (below), eval and predict (arch)
AUTO_DEVICE = "auto"  # CUDA when a GPU is visible, else CPU
AUTO_WORKERS = -1  # the cores this process may use, less one
INFERENCE_BATCH = 256  # images per forward when only predicting: memory, not accuracy
PIXEL_CEILING = 1_000_000_000
"""No image above this many pixels is ever decoded (3 GB as RGB), whatever max_pixels says."""


class MustConfig(BaseModel):
    """Hyperparameters of one `must adapt` run (defaults: the paper's ImageNet ViT-B/16 row)."""

    # strict: a TOML `seed = true` or `epochs = "1"` is an error, not a silent coercion (ints still fill
    # float fields); allow_inf_nan=False: `--lr inf` would otherwise train every weight into NaN.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    # Backbone
    model: str = Field("ViT-B-16", description="open_clip model name, hf-hub:org/repo or local-dir:PATH")
    pretrained: str = Field("openai", description="open_clip pretrained tag (ignored for hf-hub: and local-dir:)")
    template_set: str = Field("imagenet", description="prompt templates shipped with must-cli (imagenet, food101, dtd, ...: the paper's per-dataset sets); --templates FILE overrides")

    # Schedule
    epochs: int = Field(30, ge=1, description="passes over the unlabeled images")
    batch_size: int = Field(64, ge=2, description="images per step per process (global batch = this x processes x accum_steps)")
    accum_steps: int = Field(1, ge=1, description="gradient accumulation steps per optimiser step")
    base_lr: float = Field(2e-5, gt=0, description="learning rate per 256 images (--base-lr/--lr); the run's peak lr = base_lr x global batch / 256")
    min_lr: float = Field(1e-6, ge=0, description="cosine floor per 256 images, scaled like base_lr")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (never on norms, biases, [CLS]; on [MSK] as in the reference)")
    layer_decay: float = Field(0.65, gt=0, le=1, description="layer-wise lr decay: block i of L gets layer_decay^(L-i)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1 (first-moment decay)")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2 (second-moment decay)")

    # Self-training
    threshold: float = Field(0.7, gt=0, lt=1, description="pseudo-label confidence threshold tau, at the model's own logit scale")
    ema_mu0: float = Field(0.999, gt=0, lt=1, description="EMA teacher decay at step 0")
    ema_mu_final: float = Field(0.9998, gt=0, lt=1, description="EMA teacher decay after the ramp")
    ema_mu_steps: int = Field(2000, ge=1, description="optimiser steps (of ema_ref_batch images) over which the decay ramps linearly to ema_mu_final")
    ema_ref_batch: int = Field(1024, ge=0, description="global batch the EMA values are stated for; at batch B a step decays by mu^(B/ema_ref_batch) (0: per step, whatever B)")

    # Objectives
    fairness: bool = Field(True, description="use the fairness regulariser")
    w_fair: float = Field(1.0, ge=0, description="weight of the fairness regulariser")
    mim: bool = Field(True, description="use masked image modeling (pixel reconstruction)")
    align: bool = Field(True, description="use [CLS]/[MSK] global-local alignment (needs masking)")
    w_align: float = Field(0.2, ge=0, description="weight of the alignment loss")
    mask_ratio: float = Field(0.3, ge=0, lt=1, description="fraction of mask squares replaced by [MSK]")
    mask_patch_size: int = Field(32, ge=1, description="side of a mask square in pixels at 224-px input (rescaled for other sizes)")
    fair_running_classes: int = Field(512, ge=2, description="classes from which p_bar becomes a running average")
    fair_ref_batch: int = Field(1024, ge=0, description="global batch the fairness mean is stated for (the paper's 16 x 64); a smaller batch averages p_bar over that many recent images (0: over each micro-batch)")

    # Augmentation (views.py). Paper: weak = Resize + RandomCrop; strong = RandomResizedCrop(0.3-1)
    # + flip + RandAugment. Low-resolution rule: inputs of at most low_res_max_size px replace the
    # strong view's crop by FixMatch's CIFAR recipe (translate, Cutout), keeping flip and RandAugment.
    weak_translate: float = Field(0.0, ge=0, lt=0.5, description="weak view: random shift up to this fraction of the side (reflect padding; paper 0)")
    weak_flip: bool = Field(False, description="weak view: random horizontal flip (paper: no)")
    strong_crop_min: float = Field(0.3, gt=0, le=1, description="strong view: smallest RandomResizedCrop area (paper 0.3)")
    strong_crop_max: float = Field(1.0, gt=0, le=1, description="strong view: largest RandomResizedCrop area (paper 1)")
    randaugment: str = Field("rand-n2-m9-mstd0.5-inc1", description="strong view: timm RandAugment spec ('' for none)")
    low_res_max_size: int = Field(64, ge=0, description="inputs of at most this side (px) use the low-resolution strong view (0: never)")
    low_res_translate: float = Field(0.125, ge=0, lt=0.5, description="low-resolution strong view: shift up to this fraction of the side (FixMatch 0.125)")
    low_res_cutout: float = Field(0.5, ge=0, le=1, description="low-resolution strong view: Cutout side up to this fraction of the side (FixMatch 0.5)")

    # Class prior and warm start (docs/presets.md: which prior when)
    class_prior: str = Field("uniform", min_length=1, description="fairness target: uniform, estimate (EM on the zero-shot predictions) or a file of 'class share' lines")
    freeze_classifier: bool = Field(False, description="keep the text-built classifier fixed (the paper's warm-up)")

    # Safety net
    guard: bool = Field(True, description="keep the zero-shot classifier if the adapted model collapses (label-free check)")
    guard_min_balance: float = Field(0.993, gt=0, le=1, description="ship zero-shot when the adapted model's prediction balance falls below this fraction of zero-shot's on the same images (0.993: a drop of 0.7% or more, which 10 of the 11 runs that lost over a point on the preset grid showed, docs/presets.md; 0.5: only a collapse)")

    # Runtime
    seed: int = Field(0, description="random seed for shuffling, augmentation and masks")
    device: str = Field(AUTO_DEVICE, description="auto, cpu, cuda or cuda:N")
    workers: int = Field(AUTO_WORKERS, ge=-1, description="DataLoader worker processes (-1: the cores, split among local processes, less one)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile the student and teacher (auto: on CUDA only; true: also on CPU, where inductor needs a C++ compiler and measured no faster); a failure at the first step falls back to eager")
    grad_checkpointing: bool = Field(False, description="trade compute for memory in the transformer blocks")
    cache: bool = Field(True, description="store a resized copy of large photos so later epochs decode small files")
    cache_dir: str = Field("", description="folder for that copy (empty: <output>/cache); share it between runs")
    eval_every: int = Field(1, ge=1, description="with --eval-dir: evaluate every N epochs")
    save_every: int = Field(500, ge=1, description="write a resumable checkpoint every N optimiser steps")
    keep_checkpoints: int = Field(1, ge=1, description="resumable checkpoints kept once the run finishes (while it runs, at least 2)")

    # Input safety
    max_pixels: int = Field(
        250_000_000, ge=1, le=PIXEL_CEILING,
        description="images with more pixels are skipped as decompression bombs; very large ones below it are decoded reduced",
    )

    @model_validator(mode="after")
    def _crop_range(self) -> "MustConfig":
        """RandomResizedCrop needs min <= max; torchvision would only warn and crop oddly."""
        if self.strong_crop_min > self.strong_crop_max:
            raise ValueError(f"strong_crop_min ({self.strong_crop_min}) is above strong_crop_max ({self.strong_crop_max})")
        return self

    @classmethod
    def default(cls, name: str) -> Any:
        """One field's default, for commands (eval, predict) that fall back to adapt's choice."""
        return cls.model_fields[name].default


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise MustError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise MustError(f"{path}: not valid TOML ({e}): fix the syntax") from None
    except OSError as e:
        raise MustError(f"{path}: cannot read ({e.strerror})") from None


def _check_keys(data: dict[str, Any], source: str) -> None:
    unknown = sorted(set(data) - set(MustConfig.model_fields))
    if unknown:
        raise MustError(
            f"{source}: unknown key(s) {', '.join(unknown)}: see `must init` for every valid key"
        )


def preset_names() -> list[str]:
    """Names accepted by --preset, from the TOML files shipped in the package."""
    return sorted(p.name[:-5] for p in resources.files("must_cli.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """Read a shipped preset's values (its [meta] table, documentation only, is dropped)."""
    ref = resources.files("must_cli.presets") / f"{name}.toml"
    if not ref.is_file():
        raise MustError(f"unknown preset '{name}': choose one of {', '.join(preset_names())}")
    data = tomllib.loads(ref.read_text(encoding="utf-8"))
    data.pop("meta", None)
    _check_keys(data, f"preset {name}")
    return data


def resolve_config(
    preset: str | None = None, config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> MustConfig:
    """Defaults < preset < config file < flags; unknown keys and bad values are one-line errors."""
    values: dict[str, Any] = {}
    if preset:
        values.update(load_preset(preset))
    if config_file is not None:
        data = _read_toml(config_file)
        data.pop("meta", None)
        _check_keys(data, str(config_file))
        values.update(data)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return MustConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise MustError(f"config value '{where}' = {err['input']!r}: {err['msg']}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def to_toml(cfg: MustConfig, comments: bool = False) -> str:
    """Serialise a config; with comments, each key carries its one-line description."""
    lines = []
    for name, field in MustConfig.model_fields.items():
        if comments and field.description:
            lines.append(f"# {field.description}")
        lines.append(f"{name} = {_toml_value(getattr(cfg, name))}")
        if comments:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
