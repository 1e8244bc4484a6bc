"""Build the offline demo: a deliberately weak CLIP plus a few CIFAR-10 images.

The README's quick start must run on a fresh machine with no network, so the demo cannot
download a real CLIP. This script trains a tiny open_clip CLIP from scratch on a small labeled
slice of CIFAR-10 train (300 images per class, captions from 18 prompt templates), which gives
a "weak CLIP": zero-shot accuracy well above chance but far from perfect, i.e. something that
unsupervised adaptation can improve. It writes, under --out:

    demo-model/   open_clip ``local-dir:`` model (config + fp16 safetensors)
    photos/       300 unlabeled train images the model never saw (30 per class, shuffled)
    eval/<class>/ 20 labeled test images per class
    classes.txt   the 10 class names

    python examples/make_demo_model.py --cifar /path/to/cifar10-jpeg.tar.gz --out examples/
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The CIFAR-10 prompt templates of the cifar10-tinyclip proxy (proxy_info.templates).
TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
]

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# No hf_tokenizer_name: open_clip.get_tokenizer("local-dir:...") then returns the default
# SimpleTokenizer (CLIP BPE, vocab 49408) with this context length, as used in training.
MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 6, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
PREPROCESS_CFG = {
    "size": 32,
    "mode": "RGB",
    "mean": list(MEAN),
    "std": list(STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}

TRAIN_PER_CLASS = 300  # labeled train files [0, 300) of each class: the demo model's training set
PHOTOS_START, PHOTOS_PER_CLASS = 500, 30  # train files [500, 530): unseen by the demo model and the proxy
EVAL_PER_CLASS = 20  # test files [0, 20) of each class


def extract_cifar(archive: Path, dest: Path) -> Path:
    """Extract the CIFAR-10 JPEG archive; return the folder holding ``train/`` and ``test/``."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return next(p.parent for p in sorted(dest.rglob("train")) if (p.parent / "test").is_dir())


def class_files(split_dir: Path) -> dict[str, list[Path]]:
    """The JPEG files of each class, sorted by name so that slices are reproducible."""
    return {c: sorted((split_dir / c).glob("*.jpg")) for c in CLASSES}


def load_images(paths: list[Path]) -> torch.Tensor:
    """Decode images into one uint8 tensor (N, 3, 32, 32): the data is small enough to hold."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def labeled_split(files: dict[str, list[Path]], start: int, stop: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and integer labels of files [start, stop) of every class."""
    paths, labels = [], []
    for label, c in enumerate(CLASSES):
        chosen = files[c][start:stop]
        paths += chosen
        labels += [label] * len(chosen)
    return load_images(paths), torch.tensor(labels)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) to the model input, the same arithmetic as ToTensor + Normalize."""
    x = images.float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and 4-pixel-padded random crop: the usual CIFAR augmentation,
    which the tiny training set needs to generalise at all."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    offsets = torch.randint(0, 9, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]).to(torch.uint8)


@torch.no_grad()
def class_text_embeddings(model: open_clip.CLIP, tokenizer) -> torch.Tensor:
    """Zero-shot classifier: per class, the normalised mean of its normalised template embeddings."""
    weights = []
    for c in CLASSES:
        emb = F.normalize(model.encode_text(tokenizer([t.format(c) for t in TEMPLATES])), dim=-1)
        weights.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(weights)


@torch.no_grad()
def zero_shot_accuracy(model: open_clip.CLIP, text_emb: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of logits = image_emb @ text_emb.T on already-preprocessed inputs."""
    correct = 0
    for start in range(0, len(inputs), 500):
        emb = F.normalize(model.encode_image(inputs[start : start + 500]), dim=-1)
        correct += (emb @ text_emb.T).argmax(1).eq(labels[start : start + 500]).sum().item()
    return correct / len(inputs)


def warmup_cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup (stabilises a randomly initialised transformer), then cosine decay to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def train(
    model: open_clip.CLIP,
    tokenizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    wd: float,
    seed: int,
) -> None:
    """Contrastive image-text training (symmetric InfoNCE, learnable logit scale), AdamW with
    one epoch of linear warmup then cosine decay. Each image gets a random template caption."""
    gen = torch.Generator().manual_seed(seed)
    captions = tokenizer([t.format(c) for c in CLASSES for t in TEMPLATES])  # row = class * 18 + template
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms, biases, class token, logit scale
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )
    steps_per_epoch = len(images) // batch_size
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    step = 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        start_time, epoch_loss = time.perf_counter(), 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            caption_ids = labels[idx] * len(TEMPLATES) + torch.randint(0, len(TEMPLATES), (len(idx),), generator=gen)
            x = normalize(augment(images[idx], gen))
            # Encode each distinct caption once; duplicates share (and sum) the gradient.
            unique_ids, inverse = torch.unique(caption_ids, return_inverse=True)
            text = F.normalize(model.encode_text(captions[unique_ids]), dim=-1)[inverse]
            image = F.normalize(model.encode_image(x), dim=-1)
            logits = model.logit_scale.exp() * image @ text.T
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(step, lr, warmup, total)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            epoch_loss += loss.item()
            step += 1
        print(
            f"epoch {epoch + 1}/{epochs}  loss {epoch_loss / steps_per_epoch:.3f}  "
            f"logit scale {model.logit_scale.exp().item():.2f}  {time.perf_counter() - start_time:.0f}s",
            flush=True,
        )
    model.eval()


def write_config(model_dir: Path, demo_info: dict | None = None) -> None:
    """Write open_clip_config.json (the file ``local-dir:`` loading reads)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    if demo_info is not None:
        config["demo_info"] = demo_info
    (model_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_demo_images(cifar_root: Path, out: Path, seed: int) -> None:
    """Copy the unlabeled photos, the labeled eval images and classes.txt (JPEG bytes as is)."""
    train_files, test_files = class_files(cifar_root / "train"), class_files(cifar_root / "test")
    photos = [p for c in CLASSES for p in train_files[c][PHOTOS_START : PHOTOS_START + PHOTOS_PER_CLASS]]
    random.Random(seed).shuffle(photos)
    for folder in (out / "photos", out / "eval"):
        shutil.rmtree(folder, ignore_errors=True)
    (out / "photos").mkdir(parents=True)
    for i, src in enumerate(photos):
        shutil.copyfile(src, out / "photos" / f"img_{i:04d}.jpg")
    for c in CLASSES:
        (out / "eval" / c).mkdir(parents=True)
        for src in test_files[c][:EVAL_PER_CLASS]:
            shutil.copyfile(src, out / "eval" / c / src.name)
    header = "# CIFAR-10 class names, one per line (the labels of examples/eval/ and of the demo model).\n"
    (out / "classes.txt").write_text(header + "\n".join(CLASSES) + "\n")


@torch.no_grad()
def reloaded_accuracy(model_dir: Path, folder: Path) -> float:
    """Zero-shot accuracy of the saved model loaded the way users load it (open_clip's own
    preprocessing and tokenizer) on a ``<class>/<image>`` folder."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    text_emb = class_text_embeddings(model, tokenizer)
    files = class_files(folder)
    inputs = torch.stack([preprocess(Image.open(p)) for c in CLASSES for p in files[c]])
    labels = torch.tensor([i for i, c in enumerate(CLASSES) for _ in files[c]])
    return zero_shot_accuracy(model, text_emb, inputs, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the weak demo CLIP and write the offline demo files.")
    parser.add_argument("--cifar", type=Path, required=True, help="cifar10-jpeg.tar.gz (train/ and test/ <class>/*.jpg)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, normally examples/")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_dir = args.out / "demo-model"
    with tempfile.TemporaryDirectory() as tmp:
        cifar_root = extract_cifar(args.cifar, Path(tmp))
        train_files = class_files(cifar_root / "train")
        train_images, train_labels = labeled_split(train_files, 0, TRAIN_PER_CLASS)
        test_images, test_labels = labeled_split(class_files(cifar_root / "test"), 0, None)

        # Build from the config file itself so that training and users see the same architecture
        # and tokenizer (a scratch folder: no weights in it, so the init is random).
        cfg_dir = Path(tmp) / "config"
        write_config(cfg_dir)
        model = open_clip.create_model(f"local-dir:{cfg_dir}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{cfg_dir}")

        # CPU time as well as wall time: on a shared machine only the former measures the work.
        start, start_cpu = time.perf_counter(), time.process_time()
        train(model, tokenizer, train_images, train_labels, args.epochs, args.batch_size, args.lr, args.wd, args.seed)
        train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu

        # Evaluate the weights as shipped: rounded to fp16.
        model.half().float()
        text_emb = class_text_embeddings(model, tokenizer)
        test_acc = zero_shot_accuracy(model, text_emb, normalize(test_images), test_labels)
        train_acc = zero_shot_accuracy(model, text_emb, normalize(train_images), train_labels)
        logit_scale = model.logit_scale.exp().item()

        write_demo_images(cifar_root, args.out, args.seed)
        photos_images, photos_labels = labeled_split(train_files, PHOTOS_START, PHOTOS_START + PHOTOS_PER_CLASS)
        photos_acc = zero_shot_accuracy(model, text_emb, normalize(photos_images), photos_labels)
        eval_images, eval_labels = labeled_split(class_files(args.out / "eval"), 0, None)
        eval_acc = zero_shot_accuracy(model, text_emb, normalize(eval_images), eval_labels)

        demo_info = {
            "description": "Weak stand-in for a pretrained CLIP: a tiny CLIP trained from scratch, "
            "contrastively, on a small labeled CIFAR-10 slice with templated captions.",
            "trained_on": f"CIFAR-10 train split, first {TRAIN_PER_CLASS} files (sorted by name) of each class "
            f"({TRAIN_PER_CLASS * len(CLASSES)} images), captions from the 18 templates below",
            "photos": f"photos/: train files [{PHOTOS_START}:{PHOTOS_START + PHOTOS_PER_CLASS}] of each class, "
            "shuffled and renamed (never seen in training)",
            "classes": CLASSES,
            "templates": TEMPLATES,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "wd": args.wd,
            "seed": args.seed,
            "augmentation": "horizontal flip, 4-pixel reflect-padded random crop",
            "weights_dtype": "float16",
            "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu_seconds, 1),
            "train_threads": args.threads,
            "logit_scale": round(logit_scale, 4),
            "zeroshot_acc": {
                "cifar10_test": round(test_acc, 4),
                "examples_eval": round(eval_acc, 4),
                "examples_photos": round(photos_acc, 4),
                "train_subset": round(train_acc, 4),
            },
            "zeroshot_protocol": "18-template ensemble, logits = image_emb @ text_emb.T, top-1",
        }
        write_config(model_dir, demo_info)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(model_dir / "open_clip_model.safetensors"))

        reload_test_acc = reloaded_accuracy(model_dir, cifar_root / "test")
    reload_eval_acc = reloaded_accuracy(model_dir, args.out / "eval")

    print(f"training: {train_seconds:.0f}s wall, {train_cpu_seconds:.0f}s CPU on {args.threads} threads, "
          f"logit scale {logit_scale:.2f}")
    print(f"zero-shot top-1: CIFAR-10 test {test_acc:.2%} (reloaded {reload_test_acc:.2%}), "
          f"examples/eval {eval_acc:.2%} (reloaded {reload_eval_acc:.2%}), "
          f"examples/photos {photos_acc:.2%}, train subset {train_acc:.2%}")
    if abs(reload_test_acc - test_acc) > 1e-3 or abs(reload_eval_acc - eval_acc) > 1e-3:
        raise SystemExit("reloaded model does not reproduce the in-process accuracy")


if __name__ == "__main__":
    main()
