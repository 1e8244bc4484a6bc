"""How strong a head k labeled images per class give on a stand-in's image features (validation files).

The design rule of benchmarks/models/README.md (a text tower aligned on 4 captioned images per
class, because zero-shot CLIP matches a 4-shot probe) is checked here: class-mean prototypes of
k images of the captioned slice, averaged over 5 draws, against a logistic-regression probe on
2,000 pool images, all scored on the first 100 validation files of each class. Never the test split.

    python -m benchmarks.standin_kshot benchmarks/models/cifar10-standin [--cifar ../data/cifar10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from benchmarks.common import CIFAR
from benchmarks.make_standin import embed_images, load_split
from benchmarks.standin_report import probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--cifar", type=Path, default=CIFAR)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16, 100])
    a = p.parse_args()
    info = json.loads((a.model / "open_clip_config.json").read_text())["proxy_info"]
    model = open_clip.create_model(f"local-dir:{a.model}").eval()
    train, cpu = a.cifar / "train", torch.device("cpu")
    val_x, val_y = load_split(train, (info["val_files"][0], info["val_files"][0] + 100))
    pool_x, pool_y = load_split(train, (info["pool_files"][0], info["pool_files"][0] + 200))
    cap_x, cap_y = load_split(train, (0, max(a.shots)))  # the captioned slice starts at train file 0
    val, pool, cap = (embed_images(model, x, cpu) for x in (val_x, pool_x, cap_x))
    for k in a.shots:
        accs = []
        for draw in range(5 if k < max(a.shots) else 1):
            rng = np.random.default_rng(draw)
            picks = [rng.choice(np.where(cap_y == c)[0], k, replace=False) for c in range(10)]
            protos = F.normalize(torch.stack([cap[i].mean(0) for i in picks]), dim=-1)
            accs.append(float(((val @ protos.T).argmax(1).numpy() == val_y).mean()))
        print(f"{k}-shot prototypes: {100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}")
    print(f"probe on {len(pool_y)} pool images: {100 * probe(pool, pool_y, val, val_y):.1f}")


if __name__ == "__main__":
    main()
