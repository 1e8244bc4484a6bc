"""`must verify RUN --choose zero-shot|adapted`: which classifier the run ships, after labels said which is better.

Choosing zero-shot keeps the adapted model beside it (RUN/model-adapted.safetensors), never
deletes it, and writes zero-shot CLIP (rebuilt from the run's source model, classes and
templates) as RUN/model.safetensors, which `must predict` and `must export` read. Choosing adapted
puts it back. Either way the model's metadata records the choice and the verified gain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from must_cli import __version__
from must_cli.files.atomic import atomic_write
from must_cli.files.checkpoint import load_checkpoint
from must_cli.method.model_file import MODEL_FORMAT, read_metadata, save_model
from must_cli.base.errors import MustError
from must_cli.method.model import MustModel, build_must_model
from must_cli.files.record import read_record
from must_cli.files.run_dir import RunDir
from must_cli.commands.verify.stats import GainEstimate

CHOICES = ("zero-shot", "adapted")
VERIFIED = "must verify"  # how the metadata's "chosen" names a choice made here


def gain_record(est: GainEstimate, source: str) -> dict[str, Any]:
    """The verified gain as the model's metadata keeps it, in accuracy points."""
    pts = lambda x: None if x is None else round(100 * x, 2)  # noqa: E731
    return {"gain": pts(est.gain), "low": pts(est.low), "high": pts(est.high), "confidence": 0.9,
            "labels": est.tally.labels, "skipped": est.tally.skipped, "changed": est.changed,
            "predicted": est.predicted, "share_changed": pts(est.share_changed), "source": source}


def _zero_shot(meta: dict[str, Any]) -> MustModel:
    """Zero-shot CLIP as the run started from it: source model, classes and templates from the metadata."""
    source = meta.get("source_model") or {}
    try:
        model, _ = build_must_model(source["model"], source.get("pretrained"), list(meta["classnames"]),
                                    list(meta["templates"]), torch.device("cpu"))
    except KeyError:
        raise MustError("this run's model file does not name its source CLIP: re-run `must adapt`") from None
    return model


def _adapted_from_checkpoint(run: Path, meta: dict[str, Any]) -> MustModel:
    """The EMA teacher of the newest checkpoint: the adapted model of a run whose guard shipped zero-shot."""
    latest = RunDir(run).latest_checkpoint()
    if latest is None:
        raise MustError(f"{run}: the guard shipped zero-shot and no checkpoint of the adapted model is left: "
                        "re-run `must adapt` (with --keep-checkpoints 1 or more)")
    model = _zero_shot(meta)
    model.load_state_dict(load_checkpoint(latest)["teacher"])
    return model


def refuse_warm_start(run: Path) -> None:
    """A warm-started run's "zero-shot" labels came from the warm tower with a text head, not from the base CLIP
    that --choose would rebuild: refuse rather than ship a model verify never compared."""
    try:
        command = read_record(run).command
    except MustError:
        return
    if any(arg.startswith("--init-from") for arg in command.split()):
        raise MustError(f"{run} was warm-started (--init-from): verify compared it with the warm-start model, not "
                        "with the base CLIP --choose zero-shot would ship; ship that run's model instead")


def _rewrite(src: Path, dst: Path, meta: dict[str, Any]) -> None:
    """Write ``src``'s tensors, unchanged, to ``dst`` with ``meta`` as header (atomic: a kill keeps the old file)."""
    tensors = load_file(str(src))
    header = {"format": MODEL_FORMAT, "must_cli_version": __version__,
              **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    atomic_write(dst, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def choose_model(run: Path, which: str, est: GainEstimate, source: str) -> str:
    """Ship ``which`` from ``run``; returns what was done, in words. Never deletes a model it has not copied."""
    if which not in CHOICES:
        raise MustError(f"--choose {which}: pick zero-shot or adapted")
    shipped, kept = RunDir(run).model_file, RunDir(run).adapted_model_file
    meta = read_metadata(shipped)
    ships_zero_shot = str(meta.get("chosen", "")).startswith("zero-shot")
    meta = {k: v for k, v in meta.items() if k not in ("format", "must_cli_version")}
    meta["verified_gain"] = gain_record(est, source)
    if ships_zero_shot == (which == "zero-shot"):  # nothing to swap: record the verified gain
        meta["chosen"] = f"{'zero-shot' if ships_zero_shot else 'ema-teacher'} ({VERIFIED})"
        _rewrite(shipped, shipped, meta)
        return f"{shipped} already was the {which} classifier: the verified gain is now recorded in it"
    if which == "zero-shot":
        refuse_warm_start(run)
        _rewrite(shipped, kept, {**meta, "chosen": "ema-teacher (kept beside the shipped zero-shot)"})
        save_model(shipped, _zero_shot(meta), {**meta, "chosen": f"zero-shot ({VERIFIED})"})
        return f"{shipped} is now the zero-shot classifier; the adapted model is kept in {kept}"
    meta["chosen"] = f"ema-teacher ({VERIFIED})"
    if kept.is_file():
        _rewrite(kept, shipped, meta)
        os.remove(kept)  # its weights are the shipped model now
    else:
        save_model(shipped, _adapted_from_checkpoint(run, meta), meta)
    return f"{shipped} is the adapted model again"
