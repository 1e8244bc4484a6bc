"""Loading open_clip: a CLIP by name, hub id or folder, and an image tower rebuilt from its stored config.

Offline or with an unknown tag, loading fails in one line that names the cure instead of a
minute of hub retries; any tower that is not a plain [CLS]-token ViT is refused (check_vit),
since the [MSK] token and the decoder work on its patch tokens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import open_clip
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from must_cli.base.errors import MustError


def check_vit(visual: nn.Module) -> None:
    """MUST needs a plain ViT with a class token; reject other towers with a clear message."""
    if not isinstance(visual, VisionTransformer):
        raise MustError(
            f"the image tower is {type(visual).__name__}: must-cli supports open_clip ViT image towers only "
            "(e.g. ViT-B-16, ViT-L-14)"
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise MustError("this ViT pools without a class token: must-cli needs a [CLS]-token ViT such as ViT-B-16")


QUIET_LOGGERS = ("huggingface_hub", "open_clip")  # library loggers whose retry warnings load_clip replaces


class _FromOpenClip(logging.Filter):
    """Drops records that open_clip's own code logs through the root logger (``logging.error(...)``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(str(Path(open_clip.__file__).parent))


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub and open_clip log a warning per retry; the user gets one clear line instead.

    Only those libraries' records are held back, and only while loading: no logger's level
    changes for anyone else (the root logger gets a filter that matches open_clip's files alone).
    """
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    root, only_others = logging.getLogger(), _FromOpenClip()
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    root.addFilter(only_others)
    try:
        yield
    finally:
        root.removeFilter(only_others)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


HUB_TIMEOUT_S = 3.0  # how long to wait for the model hub before saying there is no network


def _weights_cached(model: str, tag: str) -> bool:
    """Whether open_clip will find ``model``'s ``tag`` weights in the Hugging Face cache (no download)."""
    from huggingface_hub import try_to_load_from_cache

    hub = (open_clip.get_pretrained_cfg(model, tag) or {}).get("hf_hub", "")
    if not hub:
        return True  # a URL or a local file: open_clip reports its own failure quickly
    repo, filename = os.path.split(hub)
    stem = os.path.splitext(filename or "open_clip_pytorch_model.bin")[0]
    names = [filename or "open_clip_pytorch_model.bin", f"{stem}.safetensors", "open_clip_model.safetensors"]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _hub_reachable() -> bool:
    """A short connection attempt to the hub, instead of the minute of retries a download makes offline."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _offline_error(model: str, pretrained: str | None) -> MustError:
    return MustError(
        f"cannot download weights for {model} ({pretrained}): no network or unknown tag. "
        "On a connected machine run `python -c \"import open_clip; open_clip.create_model('"
        f"{model}', pretrained='{pretrained}')\"` to fill the cache, or save the model and pass "
        "--model local-dir:PATH"
    )


def load_clip(model: str, pretrained: str | None) -> tuple[nn.Module, Any]:
    """Load an open_clip CLIP and its tokenizer; one-line errors for offline or unknown weights."""
    is_local = model.startswith(("local-dir:", "hf-hub:"))
    try:
        with _quiet_hub():
            tag = None if is_local else (pretrained or None)
            if tag and not _weights_cached(model, tag) and not _hub_reachable():
                raise _offline_error(model, pretrained)
            # OpenAI weights were trained with QuickGELU; open_clip only matches that when asked.
            quick = bool(tag and open_clip.get_pretrained_cfg(model, tag).get("quick_gelu", False))
            clip = open_clip.create_model(model, pretrained=tag, force_quick_gelu=quick)
            tokenizer = open_clip.get_tokenizer(model)
    except MustError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError/hub errors alike
        msg = " ".join(str(e).split())
        if model.startswith("local-dir:"):
            raise MustError(
                f"cannot load {model}: {msg[:200]}: the folder needs open_clip_config.json and "
                "open_clip_model.safetensors"
            ) from None
        if "download" in msg.lower() or "connection" in msg.lower() or "hub" in msg.lower():
            raise _offline_error(model, pretrained) from None
        raise MustError(
            f"cannot create {model} ({pretrained}): {msg[:200]}: see `open_clip.list_pretrained()` for valid "
            "names and tags"
        ) from None
    check_vit(clip.visual)
    return clip, tokenizer


def vision_config(model: str, visual: nn.Module) -> dict[str, Any]:
    """The open_clip tower config (embed_dim + vision_cfg + activation) so predict can rebuild it offline."""
    if model.startswith("hf-hub:"):
        model_cfg = open_clip.factory._get_hf_config(model[len("hf-hub:"):])["model_cfg"]
    elif model.startswith("local-dir:"):
        path = Path(model[len("local-dir:"):]) / "open_clip_config.json"
        model_cfg = json.loads(path.read_text(encoding="utf-8"))["model_cfg"]
    else:
        model_cfg = open_clip.get_model_config(model)
    quick_gelu = isinstance(visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    return {"embed_dim": model_cfg["embed_dim"], "vision_cfg": model_cfg["vision_cfg"], "quick_gelu": quick_gelu}


def build_visual(vcfg: dict[str, Any]) -> VisionTransformer:
    """Rebuild just the image tower from a stored config: no text tower, no download."""
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(vcfg["embed_dim"], vcfg["vision_cfg"], quick_gelu=vcfg.get("quick_gelu", False))
