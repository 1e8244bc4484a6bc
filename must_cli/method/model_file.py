"""The shipped model file: image tower, text-built classifier and everything predict needs offline.

One safetensors file whose header holds the architecture, class names, templates, preprocessing
and config, so predict, eval and export rebuild the net without open_clip's weights or a
network; written atomically (atomic.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from must_cli import __version__
from must_cli.files.atomic import atomic_write
from must_cli.base.errors import MustError
from must_cli.method.clip_loading import build_visual
from must_cli.method.model import MustModel, Preprocess
from must_cli.files.run_dir import existing_model_file

MODEL_FORMAT = "must-cli/1"


WARM_START_PREFIXES = ("mask_token", "ln_patch.", "decoder.")  # what `must adapt --init-from` needs beyond inference


def save_model(path: Path, model: MustModel, meta: dict[str, Any]) -> None:
    """Write the image tower + classifier, and [MSK], ln_patch and the decoder for warm starts.

    ``meta`` must hold vision_config, classnames, templates, preprocess and config; all
    of it goes into the safetensors header so predict/export rebuild the net offline.
    Inference reads only ``visual.*``, ``classifier`` and ``logit_scale``, so files written
    before the warm-start tensors were added load the same way.
    """
    tensors = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    tensors.update({k: v for k, v in model.state_dict().items() if k.startswith(WARM_START_PREFIXES)})
    tensors["classifier"] = model.classifier.detach()
    tensors["logit_scale"] = model.logit_scale.detach()
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    bad = _non_finite(tensors)
    if bad:
        raise MustError(f"{path}: not written: weight '{bad}' holds NaN or infinite values (training diverged): "
                        "rerun with a lower --lr, and keep --guard on")
    header = {"format": MODEL_FORMAT, "must_cli_version": __version__}
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding NaN or +-inf, or None: such a model labels every image the same."""
    return next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


def _is_number_list(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


# What predict/eval/export read from the header, each with the check it must pass and what it should be.
_META_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "vision_config": (lambda v: isinstance(v, dict) and isinstance(v.get("embed_dim"), int)
                      and isinstance(v.get("vision_cfg"), dict), "a JSON object with embed_dim and vision_cfg"),
    "classnames": (lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v),
                   "a JSON list of at least 2 class names"),
    "preprocess": (lambda v: isinstance(v, dict) and isinstance(v.get("image_size"), int) and v["image_size"] > 0
                   and _is_number_list(v.get("mean"), 3) and _is_number_list(v.get("std"), 3)
                   and all(x > 0 for x in v["std"]) and isinstance(v.get("interpolation", "bicubic"), str),
                   "a JSON object with image_size, mean[3], std[3]"),
}


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    for key, (ok, expected) in _META_CHECKS.items():
        if key not in meta:
            problem = "is missing"
        elif not ok(meta[key]):
            problem = f"is not {expected}"
        else:
            continue
        raise MustError(f"{path}: metadata '{key}' {problem}: the file was edited or damaged; "
                        "restore it or re-run `must adapt`")


def read_metadata(path: Path) -> dict[str, Any]:
    """The model file's header, JSON values decoded; one-line errors for anything that is not ours."""
    path = existing_model_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise MustError(
            f"{path}: not a readable must-cli model ({' '.join(str(e).split())[:120]}): "
            "the file is truncated or not a safetensors file; re-run `must adapt`"
        ) from None
    if header.get("format") != MODEL_FORMAT:
        raise MustError(f"{path}: a safetensors file but not a must-cli model: pass the model.safetensors that `must adapt` wrote")
    meta: dict[str, Any] = {}
    for k, v in header.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    _check_metadata(path, meta)
    return meta


def load_model(path: Path) -> tuple[MustModel, dict[str, Any]]:
    """Rebuild the adapted classifier from its file alone (no network, no text tower)."""
    path = existing_model_file(path)
    meta = read_metadata(path)
    try:
        visual = build_visual(meta["vision_config"])
        state = load_file(str(path))
        model = MustModel(visual, state["classifier"], float(state["logit_scale"]))
        visual_state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        visual.load_state_dict(visual_state, strict=True)
    except (KeyError, RuntimeError, ValueError, TypeError, SafetensorError) as e:
        raise MustError(
            f"{path}: weights do not match the architecture in its metadata ({' '.join(str(e).split())[:120]}): "
            "the file is damaged or was edited; re-run `must adapt`"
        ) from None
    if model.num_classes != len(meta["classnames"]):
        raise MustError(f"{path}: the classifier has {model.num_classes} classes but the metadata lists "
                        f"{len(meta['classnames'])} class names: the file was edited; restore it or re-run `must adapt`")
    bad = _non_finite(state)
    if bad:
        raise MustError(f"{path}: weight '{bad}' holds NaN or infinite values, so every prediction would be "
                        "meaningless: re-run `must adapt` with a lower --lr and --guard on")
    model.eval()
    return model, meta


def preprocess_of(meta: dict[str, Any]) -> Preprocess:
    p = meta["preprocess"]
    return Preprocess(int(p["image_size"]), tuple(p["mean"]), tuple(p["std"]), p.get("interpolation", "bicubic"))
