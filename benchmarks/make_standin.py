"""Build a stand-in CLIP with real CLIP's headroom, from the CIFAR-10 train split only.

Real CLIP's zero-shot head is a weak linear classifier on strong image features: a linear
probe on its features beats zero-shot by ~10 points (ViT-B/16 on ImageNet: 68 vs ~80), and
that gap is what MUST recovers without labels. This script builds that property on purpose
(design and reasons: benchmarks/models/README.md; properties: benchmarks/standin_report.py):

1. image tower: supervised training (cosine classifier, random class vectors that are then
   thrown away) on a LARGE labeled slice of train (``--image-files``), half of the batches'
   images through the product's own low-resolution strong view so the tower is invariant to it;
2. text tower: aligned contrastively to the frozen image embeddings on a SMALL captioned slice
   (``--caption-files``), with captions that name the class only ``--name-prob`` of the time
   (otherwise a hypernym or attribute shared by several classes), so its class-name head is
   a weak linear head on those strong features.

Train files outside both slices (``proxy_info.unlabeled_pool``, ``proxy_info.validation``)
are never seen in any form. Output: an open_clip ``local-dir:`` folder (fp16 weights).

    python -m benchmarks.make_standin --out benchmarks/models/cifar10-standin [--init local-dir:...] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from must_cli.base.config import MustConfig
from must_cli.method.model import Preprocess
from must_cli.method.views import strong_view

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TEMPLATES = [f"a {a}photo of {d} {{}}." for d in ("a", "the") for a in
             ("", "blurry ", "black and white ", "low contrast ", "high contrast ", "bad ", "good ")] + [
    "a photo of a small {}.", "a photo of a big {}.", "a photo of the small {}.", "a photo of the big {}."]
# Captions that do not name the class: hypernyms and attributes, most shared by several classes.
OTHER_CAPTIONS = {
    "airplane": ["an aircraft", "a vehicle", "something that flies", "something in the sky"],
    "automobile": ["a vehicle", "something on the road", "a car", "a small vehicle"],
    "bird": ["an animal", "something that flies", "something with wings", "a small animal"],
    "cat": ["an animal", "a pet", "a mammal", "something furry"],
    "deer": ["an animal", "a wild animal", "a mammal", "something with four legs"],
    "dog": ["an animal", "a pet", "a mammal", "something furry"],
    "frog": ["an animal", "a small animal", "an amphibian", "a wild animal"],
    "horse": ["an animal", "a farm animal", "a mammal", "something with four legs"],
    "ship": ["a vehicle", "something on the water", "a boat", "a big vehicle"],
    "truck": ["a vehicle", "something on the road", "a big vehicle", "a lorry"],
}
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 6, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
PREPROCESS_CFG = {"size": 32, "mode": "RGB", "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                  "resize_mode": "shortest", "fill_color": 0}
PRE = Preprocess(32, MEAN, STD)


def file_range(text: str) -> tuple[int, int]:
    start, end = (int(x) for x in text.split(":"))
    return start, end


def load_split(root: Path, files: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images and labels: files [start:end) (sorted by name) of each class."""
    images, labels = [], []
    for i, c in enumerate(CLASSES):
        for f in sorted((root / c).iterdir())[files[0]:files[1]]:
            images.append(np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BICUBIC)))
            labels.append(i)
    return np.stack(images), np.array(labels)


def to_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN, device=device)[:, None, None]) / torch.tensor(STD, device=device)[:, None, None]


def augment(batch: np.ndarray, rng: random.Random, p_strong: float, device: torch.device) -> torch.Tensor:
    """Each image: the product's low-resolution strong view with probability p_strong, else flip + 4-px shift."""
    strong, out = strong_view(PRE, MustConfig()), []
    weak = strong_view(PRE, MustConfig(randaugment="", low_res_cutout=0.0))
    for img in batch:
        view = strong if rng.random() < p_strong else weak
        out.append(view(Image.fromarray(img)))
    return torch.stack(out).to(device)


def cosine_lr(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_image_tower(model: open_clip.CLIP, head: torch.Tensor, images: np.ndarray, labels: np.ndarray,
                      args: argparse.Namespace, device: torch.device) -> None:
    """Cosine-classifier cross-entropy on the normalised image embedding (scale 16, label smoothing 0.1);
    the class vectors ``head`` are trained along and thrown away."""
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    head = torch.nn.Parameter(head.clone().to(device))
    params = list(model.visual.parameters()) + [head]
    opt = torch.optim.AdamW(params, lr=args.image_lr, weight_decay=0.05)
    total = args.image_steps
    model.visual.train()
    y_all = torch.from_numpy(labels).to(device)
    order = torch.cat([torch.randperm(len(images), generator=gen) for _ in range(-(-total * args.batch_size // len(images)))])
    start, correct, seen = time.time(), 0, 0
    for step in range(args.stop_after or total):  # --stop-after: the first steps of the same schedule
        idx = order[step * args.batch_size:(step + 1) * args.batch_size].numpy()
        x, y = augment(images[idx], rng, args.p_strong, device), y_all[idx]
        logits = 16 * F.normalize(model.encode_image(x), dim=-1) @ F.normalize(head, dim=-1).T
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, max(1, total // 10), args.image_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        correct, seen = correct + (logits.argmax(1) == y).sum().item(), seen + len(y)
        if step % 10 == 0:
            print(f"image step {step}/{total} loss {loss.item():.3f} "
                  f"train acc {correct / seen:.3f} {time.time() - start:.0f}s", flush=True)
            correct, seen = 0, 0
        if args.save_every and (step + 1) % args.save_every == 0:  # a long CPU build can be inspected midway
            save(model, args.out, {"stage": f"image tower step {step + 1}/{total} (text tower random)"})
    model.visual.eval().requires_grad_(False)


def caption(label: int, rng: random.Random, name_prob: float) -> str:
    if rng.random() < name_prob:
        return rng.choice(TEMPLATES).format(CLASSES[label])
    return f"a photo of {rng.choice(OTHER_CAPTIONS[CLASSES[label]])}."


@torch.no_grad()
def embed_images(model: open_clip.CLIP, images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.cat([F.normalize(model.encode_image(to_input(images[i:i + 500], device)), dim=-1)
                      for i in range(0, len(images), 500)])


def train_text_tower(model: open_clip.CLIP, tokenizer, feats: torch.Tensor, labels: np.ndarray,
                     args: argparse.Namespace, device: torch.device) -> None:
    """Image-to-caption InfoNCE against the frozen image embeddings; images sharing a caption share its target."""
    rng = random.Random(args.seed)
    params = list(model.transformer.parameters()) + list(model.ln_final.parameters()) + [
        model.token_embedding.weight, model.positional_embedding, model.text_projection, model.logit_scale]
    opt = torch.optim.AdamW(params, lr=args.text_lr, weight_decay=0.1)
    model.transformer.train()
    for step in range(args.text_steps):
        idx = rng.sample(range(len(feats)), min(args.batch_size, len(feats)))
        texts = [caption(int(labels[i]), rng, args.name_prob) for i in idx]
        unique = sorted(set(texts))
        target = torch.tensor([unique.index(t) for t in texts], device=device)
        text = F.normalize(model.encode_text(tokenizer(unique).to(device)), dim=-1)
        logits = model.logit_scale.exp() * feats[idx] @ text.T
        loss = F.cross_entropy(logits, target)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.text_steps, args.text_steps // 10, args.text_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0:
            print(f"text step {step}/{args.text_steps} loss {loss.item():.3f} "
                  f"scale {model.logit_scale.exp().item():.1f}", flush=True)
    model.eval()


@torch.no_grad()
def class_embeddings(model: open_clip.CLIP, tokenizer, device: torch.device) -> torch.Tensor:
    """The zero-shot head: per class, the normalised mean of its normalised template embeddings."""
    return torch.stack([F.normalize(F.normalize(model.encode_text(tokenizer([t.format(c) for t in TEMPLATES])
                                                                  .to(device)), dim=-1).mean(0), dim=-1)
                        for c in CLASSES])


def zero_shot(model: open_clip.CLIP, tokenizer, feats: torch.Tensor, labels: np.ndarray,
              device: torch.device) -> float:
    text = class_embeddings(model, tokenizer, device)
    return float(((feats @ text.T).argmax(1).cpu().numpy() == labels).mean())


def build(args: argparse.Namespace, device: torch.device) -> tuple[open_clip.CLIP, object, torch.Tensor]:
    """A random CLIP of this architecture (random text tower: the text side learns only from the small
    captioned slice), with --init's image tower; the class vectors start from --init's own zero-shot
    head (its image space) when there is one, else random."""
    MODEL_CFG["text_cfg"]["context_length"] = args.context_length
    scratch = Path(tempfile.mkdtemp(prefix="standin-config-"))  # weights-less: open_clip builds it random
    (scratch / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG,
                                                               "preprocess_cfg": PREPROCESS_CFG}))
    model = open_clip.create_model(f"local-dir:{scratch}").to(device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{scratch}")
    if not args.init:
        return model, tokenizer, torch.randn(len(CLASSES), MODEL_CFG["embed_dim"])
    init = open_clip.create_model(args.init).to(device)
    model.visual.load_state_dict(init.visual.state_dict())
    return model, tokenizer, class_embeddings(init, open_clip.get_tokenizer(args.init), device)


def save(model: open_clip.CLIP, out: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG, "proxy_info": info}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar", type=Path, default=Path(__file__).resolve().parents[2] / "data" / "cifar10", help="folder with train/<class>/*.jpg")
    p.add_argument("--out", type=Path, required=True, help="output model folder")
    p.add_argument("--init", help="local-dir:PATH of a CLIP whose image tower (this architecture) to start from")
    p.add_argument("--image-files", type=file_range, default=(0, 3500), help="labeled slice for the image tower")
    p.add_argument("--caption-files", type=file_range, default=(0, 4), help="captioned slice for the text tower (4 per class: zero-shot CLIP ~ a 4-shot probe)")
    p.add_argument("--pool-files", type=file_range, default=(3500, 4500), help="recorded: the unseen unlabeled pool")
    p.add_argument("--val-files", type=file_range, default=(4500, 5000), help="recorded: unseen validation files")
    p.add_argument("--image-steps", type=int, default=3000, help="optimiser steps, each batch new (0: keep --init's tower)")
    p.add_argument("--image-lr", type=float, default=1e-3)
    p.add_argument("--stop-after", type=int, default=0, help="stop the image tower after N steps of its --image-steps schedule (0: all)")
    p.add_argument("--save-every", type=int, default=0, help="also save the image tower every N steps (0: at the end)")
    p.add_argument("--p-strong", type=float, default=0.5, help="share of images through the strong view")
    p.add_argument("--text-steps", type=int, default=300)
    p.add_argument("--context-length", type=int, default=77, help="text tokens (captions are short; 77 is CLIP's)")
    p.add_argument("--text-lr", type=float, default=5e-4)
    p.add_argument("--name-prob", type=float, default=0.3, help="share of captions that name the class")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    seen = [("--caption-files", args.caption_files)] + ([("--image-files", args.image_files)] if args.image_steps else [])
    for unseen in ("pool_files", "val_files"):
        for flag, (start, end) in seen:
            a, b = getattr(args, unseen)
            if a < end and start < b:
                p.error(f"--{unseen.replace('_', '-')} {a}:{b} overlaps {flag} {start}:{end}: "
                        "the pool and validation files must never be seen")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    t0, c0 = time.time(), time.process_time()
    model, tokenizer, head = build(args, device)
    if args.image_steps:
        images, labels = load_split(args.cifar / "train", args.image_files)
        train_image_tower(model, head, images, labels, args, device)
        save(model, args.out, {"stage": "image tower only (text tower random)"})  # a text-only rerun can start here
    model.visual.eval().requires_grad_(False)
    cap_images, cap_labels = load_split(args.cifar / "train", args.caption_files)
    train_text_tower(model, tokenizer, embed_images(model, cap_images, device), cap_labels, args, device)
    seconds, cpu = time.time() - t0, time.process_time() - c0
    model.half().float()
    val_images, val_labels = load_split(args.cifar / "train", (args.val_files[0], args.val_files[0] + 100))
    val_zs = zero_shot(model, tokenizer, embed_images(model, val_images, device), val_labels, device)
    rng = "[{}:{}) of each class"
    info = {
        "description": "Stand-in CLIP with headroom (benchmarks/make_standin.py): supervised image tower on a "
                       "large train slice, text tower aligned on a small, partly unnamed captioned slice.",
        "image_tower_files": "train " + rng.format(*args.image_files),
        "caption_files": "train " + rng.format(*args.caption_files),
        "unlabeled_pool": "train " + rng.format(*args.pool_files) + " (never seen)",
        "validation": "train " + rng.format(*args.val_files) + " (never seen; for choosing hyperparameters)",
        "pool_files": list(args.pool_files), "val_files": list(args.val_files),
        "init": args.init or "random",
        "classes": CLASSES, "templates": TEMPLATES,
        "args": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()},
        "train_seconds": round(seconds), "train_cpu_seconds": round(cpu),
        "zero_shot_validation_top1": round(val_zs, 4),  # first 100 validation files of each class
        "logit_scale": round(model.logit_scale.exp().item(), 3),
    }
    save(model, args.out, info)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
