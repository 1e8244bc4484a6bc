"""How often bf16 autocast changes the teacher's decision (pseudo-label or keep at tau), before and after the fp32 head.

    python -m benchmarks.bf16_flips [--images 512] [--threshold 0.7]

The stand-in CLIP (cifar10-tinyclip) labels CIFAR-10 test images three ways: fp32 (the
reference, as the authors' code runs), bf16 autocast with the head in bf16 as must-cli did
before (LayerNorm, projection, normalisation and classifier under autocast), and bf16 autocast
with today's fp32 head (model.MustModel.project/classify). A flip is an image whose pseudo-label
or keep decision (confidence > tau) differs from fp32. At the model's own logit scale (13.9)
and at OpenAI CLIP's 100, where the same embedding error moves logits 7x more.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import CIFAR, SHARED
from must_cli.method.labeled import labeled_images
from must_cli.method.model import MustModel, build_must_model
from must_cli.method.transforms import eval_view
from must_cli.files.images import load_rgb

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def old_head_logits(model: MustModel, images: torch.Tensor) -> torch.Tensor:
    """The head as it was: every op after the transformer under the caller's autocast."""
    x = model._tokens(images, None)
    z = model.visual.ln_post(x[:, 0]) @ model.visual.proj
    return model.logit_scale * F.normalize(z, dim=-1) @ model.classifier


def decisions(logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    conf, label = logits.float().softmax(dim=1).max(dim=1)
    return label, conf > tau


@torch.no_grad()
def measure(model: MustModel, images: torch.Tensor, tau: float) -> dict[str, float]:
    label32, keep32 = decisions(model(images), tau)
    logits32 = model(images)
    out = {"kept_fp32": keep32.float().mean().item()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runs = {"before": old_head_logits(model, images), "after": model(images)}
    for name, logits in runs.items():
        label, keep = decisions(logits, tau)
        out[f"flips_{name}"] = ((label != label32) | (keep != keep32)).float().mean().item()
        out[f"max_logit_err_{name}"] = (logits.float() - logits32).abs().max().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--shared", type=Path, default=SHARED)
    args = p.parse_args()
    torch.manual_seed(0)
    model, pre = build_must_model(f"local-dir:{args.shared / 'models' / 'cifar10-tinyclip'}", None, CLASSES,
                                  ["a photo of a {}."], torch.device("cpu"))
    model.eval()
    paths = labeled_images(CIFAR / "test", CLASSES, lambda m: None)[0]
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]
    view = eval_view(pre)
    images = torch.stack([view(load_rgb(p)) for p in paths])
    print(f"{len(images)} CIFAR-10 test images, tau {args.threshold}, torch {torch.__version__}, {platform.processor()}")
    own = float(model.logit_scale)
    for scale in (own, 100.0):
        model.logit_scale.fill_(scale)
        r = measure(model, images, args.threshold)
        print(f"logit scale {scale:5.1f}: kept (fp32) {r['kept_fp32']:.1%}; decisions flipped by bf16: "
              f"before {r['flips_before']:.2%} (max logit error {r['max_logit_err_before']:.3f}), "
              f"after {r['flips_after']:.2%} (max logit error {r['max_logit_err_after']:.3f})")


if __name__ == "__main__":
    main()
