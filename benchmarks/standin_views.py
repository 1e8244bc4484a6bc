"""Which part of the low-resolution strong view costs a stand-in its strong-view agreement.

Agreement = share of images whose zero-shot prediction on the strong view equals the one on
the eval view (no mask), as in standin_report.py, for the product's low-res view and variants
of it (config fields of MustConfig), on the first 100 test files of each class.

    python -m benchmarks.standin_views benchmarks/models/cifar10-standin [--cifar ../data/cifar10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import torch

from benchmarks.common import CIFAR
from benchmarks.make_standin import class_embeddings, load_split
from benchmarks.standin_report import agreement
from must_cli.base.config import MustConfig

VARIANTS: dict[str, dict] = {  # name: MustConfig fields changed from the defaults
    "product low-res view (flip, shift 12.5%, Cutout 0.5, RandAugment n2 m9)": {},
    "without Cutout": {"low_res_cutout": 0.0},
    "Cutout 0.25": {"low_res_cutout": 0.25},
    **{f"RandAugment m{m}": {"randaugment": f"rand-n2-m{m}-mstd0.5-inc1"} for m in (5, 3, 2, 1)},
    "without RandAugment": {"randaugment": ""},
    "without RandAugment and Cutout": {"randaugment": "", "low_res_cutout": 0.0},
    "paper's 224-px view (0.3-1 area crop, RandAugment n2 m9)": {"low_res_max_size": 0},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--cifar", type=Path, default=CIFAR)
    a = p.parse_args()
    model = open_clip.create_model(f"local-dir:{a.model}").eval()
    head = class_embeddings(model, open_clip.get_tokenizer(f"local-dir:{a.model}"), torch.device("cpu"))
    images, _ = load_split(a.cifar / "test", (0, 100))
    print("| strong view (32 px) | agreement |\n|---|---|")
    for name, fields in VARIANTS.items():
        with torch.no_grad():
            print(f"| {name} | {100 * agreement(model, head, images, MustConfig(**fields)):.1f} |", flush=True)


if __name__ == "__main__":
    main()
