"""The MUST network: a CLIP ViT image tower, a [MSK] token, a pixel decoder and a text-built classifier.

Everything except [MSK], ``ln_patch`` and the decoder comes from CLIP. The text tower is
used once, to turn class names into classifier weights, and is then dropped. Getting the CLIP
from open_clip (hub, cache, offline errors, a stored tower config) is clip_loading.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from must_cli.files.classnames import fill_templates, resolve_templates
from must_cli.base.config import MustConfig
from must_cli.method.clip_loading import check_vit, load_clip


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for this tower; stored with every model so predict needs no network."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_open_clip(cls, visual: nn.Module) -> "Preprocess":
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        return cls(
            image_size=int(size),
            mean=tuple(float(m) for m in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(float(s) for s in cfg.get("std", open_clip.OPENAI_DATASET_STD)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )


@dataclass
class StudentOutput:
    """What the training step needs from one student forward pass."""

    logits: torch.Tensor  # (B, K) at the model's logit scale
    cls_embedding: torch.Tensor  # (B, D) v_c: L2-normalised projected [CLS]
    patch_embeddings: torch.Tensor | None  # (B, N, D) v_m: ln_patch + proj + L2 norm of every patch token
    reconstruction: torch.Tensor | None  # (B, 3, H, W) decoder output


class MustModel(nn.Module):
    """CLIP image tower + [MSK] token + ln_patch/decoder + linear classifier initialised from text."""

    def __init__(self, visual: VisionTransformer, classifier: torch.Tensor, logit_scale: float):
        super().__init__()
        check_vit(visual)
        self.visual = visual
        width = visual.conv1.out_channels
        self.patch_size = visual.conv1.kernel_size[0]
        self.grid_size = visual.grid_size[0]
        self.classifier = nn.Parameter(classifier.detach().clone().float())  # (D, K)
        self.mask_token = nn.Parameter(torch.empty(width).normal_(std=0.02))
        self.ln_patch = nn.LayerNorm(width)
        self.decoder = nn.Sequential(
            nn.Conv2d(width, self.patch_size**2 * 3, kernel_size=1), nn.PixelShuffle(self.patch_size)
        )
        # The checkpoint's own scale, so the threshold tau means what the paper means (100 for OpenAI CLIP).
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    @property
    def num_classes(self) -> int:
        return self.classifier.shape[1]

    def _tokens(self, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        v = self.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)  # (B, N, width)
        if mask is not None:  # [MSK] replaces masked patch embeddings before cls/pos are added
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.transformer(v.ln_pre(x))

    def project(self, tokens: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """h(z) of the paper: a LayerNorm, CLIP's projection, then L2 normalisation.

        Always fp32, also under bf16 autocast: at logit scale 100 a bf16 embedding moves logits
        by ~0.1 and flips confidence decisions near tau (benchmarks/bf16_flips.py). It is cheap.
        """
        with torch.autocast(tokens.device.type, enabled=False):  # the weights' dtype: fp32 unless exported as fp16
            z = norm(tokens.to(norm.weight.dtype))
            if self.visual.proj is not None:
                z = z @ self.visual.proj
            return F.normalize(z, dim=-1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits in the classifier's dtype (fp32 in training), whatever autocast is active."""
        with torch.autocast(embedding.device.type, enabled=False):
            return self.logit_scale * embedding.to(self.classifier.dtype) @ self.classifier

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, *, reconstruct: bool = False,
        embed_patches: bool = False, features: bool = False,
    ) -> torch.Tensor | StudentOutput:
        """Logits for (N, 3, H, W) normalised images (what predict and export run).

        With ``features`` it returns everything a training step needs in one pass, so
        DistributedDataParallel sees every trained parameter inside its forward.
        """
        x = self._tokens(images, mask)
        emb = self.project(x[:, 0], self.visual.ln_post)
        logits = self.classify(emb)
        if not features:
            return logits
        patches = x[:, 1:]
        return StudentOutput(
            logits=logits,
            cls_embedding=emb,
            patch_embeddings=self.project(patches, self.ln_patch) if embed_patches else None,
            reconstruction=self.reconstruct(patches) if reconstruct else None,
        )

    def reconstruct(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Decoder: ln_patch, 1x1 conv to patch_size^2*3 channels, PixelShuffle back to (B, 3, H, W)."""
        b, n, c = patch_tokens.shape
        z = self.ln_patch(patch_tokens).transpose(1, 2).reshape(b, c, self.grid_size, self.grid_size)
        return self.decoder(z)


@torch.no_grad()
def text_classifier(
    clip: nn.Module, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """CLIP's zero-shot head: per class, mean of normalised template embeddings, renormalised -> (D, K)."""
    clip = clip.to(device).eval()
    per_chunk = max(1, 1024 // len(templates))  # ~1k prompts per text forward: fast for 10k classes, bounded memory
    columns = []
    for start in range(0, len(classnames), per_chunk):
        names = classnames[start : start + per_chunk]
        prompts = [p for name in names for p in fill_templates(templates, name)]
        emb = F.normalize(clip.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
        emb = emb.reshape(len(names), len(templates), -1).mean(1)
        columns.append(F.normalize(emb, dim=-1))
    return torch.cat(columns).T.contiguous().cpu()


def build_must_model(
    model: str, pretrained: str | None, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> tuple[MustModel, Preprocess]:
    """From an open_clip spec and class names to a MustModel whose text tower is gone."""
    clip, tokenizer = load_clip(model, pretrained)
    classifier = text_classifier(clip, tokenizer, classnames, templates, device)
    scale = float(clip.logit_scale.exp().item())
    visual = clip.visual.float().cpu()
    preprocess = Preprocess.from_open_clip(visual)
    del clip
    return MustModel(visual, classifier, scale), preprocess


def build_zero_shot(
    model: str | None, pretrained: str | None, classnames: Sequence[str], templates_file: Path | None,
    device: torch.device,
) -> tuple[MustModel, Preprocess]:
    """Plain CLIP as a MustModel (for `--zero-shot` comparisons), with adapt's default model, tag and prompts."""
    templates = resolve_templates(templates_file, MustConfig.default("template_set"))
    built, pre = build_must_model(model or MustConfig.default("model"), pretrained or MustConfig.default("pretrained"),
                                  classnames, templates, device)
    return built.eval(), pre
