"""Warm start (MUST paper §4.4): begin a run from an adapted run's image tower, [MSK] token and decoder.

The adapted run may have had other classes, so its classifier is not reused: the new class
list's classifier is built from the base CLIP's text tower, which the shipped model file does
not carry. The base weights therefore have to be loadable here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from must_cli.method.model_file import read_metadata, WARM_START_PREFIXES
from must_cli.base.errors import MustError
from must_cli.files.images import display_name
from must_cli.method.model import MustModel, Preprocess, build_must_model
from must_cli.files.run_dir import existing_model_file


@dataclass
class WarmStart:
    """The model to train, its preprocessing, the base CLIP it came from, and whether the heads were restored."""

    model: MustModel
    preprocess: Preprocess
    base_model: str
    base_pretrained: str
    heads_restored: bool  # False for model files written before they carried [MSK] and the decoder


def load_warm_start(run: Path, classnames: Sequence[str], templates: Sequence[str],
                    device: torch.device) -> WarmStart:
    """A fresh MustModel with the run's image tower (and [MSK]/decoder) and a text-built head for ``classnames``."""
    path = existing_model_file(run)
    meta = read_metadata(path)
    source = meta.get("source_model") or {}
    base, tag = source.get("model"), source.get("pretrained")
    if not base:
        raise MustError(f"--init-from {display_name(path)}: the file does not name its base CLIP: "
                        "re-run that adaptation with this must-cli version")
    try:
        model, pre = build_must_model(base, tag, classnames, templates, device)
    except MustError as e:
        raise MustError(f"--init-from {display_name(path)}: the new classifier needs the text tower of {base} "
                        f"(pretrained {tag}), which cannot be loaded here ({e}): make those base weights available "
                        "(open_clip cache or the same local-dir path) on this machine") from None
    state = load_file(str(path))
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    heads = {k: v for k, v in state.items() if k.startswith(WARM_START_PREFIXES)}
    try:
        model.visual.load_state_dict(visual, strict=True)
        if heads:
            model.load_state_dict(heads, strict=False)
    except RuntimeError as e:
        raise MustError(f"--init-from {display_name(path)}: its image tower does not fit {base} "
                        f"({' '.join(str(e).split())[:120]}): pass a run adapted from the same base model") from None
    return WarmStart(model, pre, base, tag, bool(heads))
