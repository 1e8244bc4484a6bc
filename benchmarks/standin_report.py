"""Property report of a stand-in CLIP: how much a label-free method could gain on it, and why.

Measures, on the first ``--test-per-class`` test files of each class (never used to build or tune
anything), clean and under the five development corruptions (severity 5):

* ``zero_shot_top1``: the 18-template class-name head;
* ``linear_probe_top1``: a logistic-regression probe WITH labels on the features (final image
  embedding, L2-normalised) of ``--probe-per-class`` unlabeled-pool files per class (corrupted
  the same way for the corruption rows); ``headroom`` = probe - zero-shot;
* ``strong_view_agreement``: share of test images whose prediction on the strong view MUST
  uses (``must_cli.method.views.strong_view`` with the default MustConfig, no mask) equals the one on
  the eval view; also with the paper's 224-px view for comparison;
* mean max-softmax and ECE (15 bins) at the model's own logit scale, and that scale.

Writes ``properties.json`` and ``properties.md`` into the model folder.

    python -m benchmarks.standin_report benchmarks/models/cifar10-standin
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import CIFAR, DEV_CORRUPTIONS, SEVERITY
from benchmarks.corruptions import CORRUPTIONS, image_seed
from benchmarks.make_standin import MEAN, STD, class_embeddings, load_split, to_input
from must_cli.base.config import MustConfig
from must_cli.method.model import Preprocess
from must_cli.method.views import strong_view


def corrupt(images: np.ndarray, name: str) -> np.ndarray:
    """Every image corrupted with its own seeded generator (as benchmarks/corruptions.py does per file)."""
    fn = CORRUPTIONS[name]
    return np.stack([fn(img, SEVERITY, np.random.default_rng(image_seed(0, name, str(i))))
                     for i, img in enumerate(images)])


@torch.no_grad()
def features(model: open_clip.CLIP, images: np.ndarray) -> torch.Tensor:
    return torch.cat([F.normalize(model.encode_image(to_input(images[i:i + 500], torch.device("cpu"))), dim=-1)
                      for i in range(0, len(images), 500)])


def probe(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray,
          l2: float = 1e-3) -> float:
    """Multinomial logistic regression (L-BFGS, L2 penalty) on standardised features: test top-1."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    x, t = (train_x - mu) / sd, (test_x - mu) / sd
    y = torch.from_numpy(train_y)
    w = torch.zeros(x.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(((t @ w + b).argmax(1).numpy() == test_y).mean())


def calibration(probs: torch.Tensor, labels: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """(mean max-softmax, expected calibration error)."""
    conf, pred = probs.max(1)
    correct = torch.from_numpy(pred.numpy() == labels).float()
    edges, ece = torch.linspace(0, 1, bins + 1), 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.float().mean().item() * abs(conf[sel].mean().item() - correct[sel].mean().item())
    return conf.mean().item(), ece


@torch.no_grad()
def agreement(model: open_clip.CLIP, head: torch.Tensor, images: np.ndarray, cfg: MustConfig) -> float:
    """Share of images whose strong-view prediction equals the eval-view one."""
    view = strong_view(Preprocess(32, MEAN, STD), cfg)
    random.seed(0)
    np.random.seed(0)  # timm's RandAugment draws magnitudes from numpy
    torch.manual_seed(0)
    strong = torch.stack([view(Image.fromarray(img)) for img in images])
    pre = features(model, images) @ head.T
    post = torch.cat([F.normalize(model.encode_image(strong[i:i + 500]), dim=-1) for i in range(0, len(strong), 500)])
    return float(((post @ head.T).argmax(1) == pre.argmax(1)).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--cifar", type=Path, default=CIFAR)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--probe-per-class", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = json.loads((a.model / "open_clip_config.json").read_text())["proxy_info"]
    model = open_clip.create_model(f"local-dir:{a.model}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{a.model}")
    head = class_embeddings(model, tokenizer, torch.device("cpu"))
    scale = model.logit_scale.exp().item()
    test_x, test_y = load_split(a.cifar / "test", (0, a.test_per_class))
    pool_start = int(info["unlabeled_pool"].split("[")[1].split(":")[0])
    pool_x, pool_y = load_split(a.cifar / "train", (pool_start, pool_start + a.probe_per_class))
    rows = {}
    for name in ("clean", *DEV_CORRUPTIONS):
        tx, px = (test_x, pool_x) if name == "clean" else (corrupt(test_x, name), corrupt(pool_x, name))
        tf, pf = features(model, tx), features(model, px)
        probs = (scale * tf @ head.T).softmax(1)
        zs = float((probs.argmax(1).numpy() == test_y).mean())
        lp = probe(pf, pool_y, tf, test_y)
        conf, ece = calibration(probs, test_y)
        rows[name] = {"zero_shot_top1": round(zs, 4), "linear_probe_top1": round(lp, 4),
                      "headroom": round(lp - zs, 4), "mean_max_softmax": round(conf, 4), "ece": round(ece, 4)}
        print(name, rows[name], flush=True)
    shift = {k: round(float(np.mean([rows[c][k] for c in DEV_CORRUPTIONS])), 4) for k in rows["clean"]}
    report = {
        "model": a.model.name, "logit_scale": round(scale, 3),
        "test_images": len(test_y), "probe_images": len(pool_y), "severity": SEVERITY,
        "clean": rows["clean"], "corruptions": {c: rows[c] for c in DEV_CORRUPTIONS}, "corruption_mean": shift,
        "strong_view_agreement": round(agreement(model, head, test_x, MustConfig()), 4),
        "strong_view_agreement_paper_view": round(agreement(model, head, test_x, MustConfig(low_res_max_size=0)), 4),
    }
    (a.model / "properties.json").write_text(json.dumps(report, indent=2) + "\n")
    (a.model / "properties.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    lines = ["| images | zero-shot top-1 | linear probe top-1 | headroom | mean max-softmax | ECE |",
             "|---|---|---|---|---|---|"]
    for name, row in [("clean test", r["clean"]), *r["corruptions"].items(), ("mean of 5 corruptions", r["corruption_mean"])]:
        lines.append(f"| {name} | {100 * row['zero_shot_top1']:.1f} | {100 * row['linear_probe_top1']:.1f} | "
                     f"{100 * row['headroom']:+.1f} | {row['mean_max_softmax']:.2f} | {100 * row['ece']:.1f} |")
    lines += ["", f"Strong-view agreement (strong view vs eval view, no mask), clean test: "
              f"**{100 * r['strong_view_agreement']:.1f}%** with the low-resolution strong view MUST uses at 32 px; "
              f"{100 * r['strong_view_agreement_paper_view']:.1f}% with the paper's 224-px recipe. "
              f"Logit scale {r['logit_scale']:.2f}. {r['test_images']} test images (first "
              f"{r['test_images'] // 10} of each class), probe fit on {r['probe_images']} pool images; "
              f"corruptions at severity {r['severity']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
