"""Training dynamics probe: teacher and student accuracy every N steps of MUST on a proxy CLIP.

Used to find out why adaptation does not reach the issue's gain targets on the 32-px proxy
models (docs/benchmarks.md, "What we found"). It drives the real engine (must_step,
train_epoch, EMA) in-process and evaluates teacher and student on labeled images every
--eval-every optimiser steps, which `must adapt --eval-dir` only does once per epoch.
The views come from MustConfig like `must adapt`'s: set them with --cfg (e.g.
'{"randaugment": "rand-n2-m5-mstd0.5-inc1", "strong_crop_min": 0.5}', "randaugment": "" for
none; "low_res_max_size": 0 for the paper's view at 32 px); --freeze-cls freezes the text-built
classifier. What trains, the teacher and AdamW come from training.build_training, as in `must adapt`
(runs before 2026-12-07 built them by hand with torch's default AdamW: the same update, unfused).

    python -m benchmarks.dynamics --model SHARED/models/cifar10-tinyclip --pool POOL \\
        --test TEST_BY_CLASS --lr 2.5e-5 --epochs 8 --eval-every 30 --cfg '{"mim": false, "align": false}'

Each run prints (step, teacher top-1, student top-1, kept share, agreement) rows and one
RESULT line of JSON; benchmarks/results/dynamics/*.log are the runs docs/benchmarks.md cites.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from must_cli.method import views
from must_cli.base.config import MustConfig
from must_cli.method.engine import METRIC_NAMES, TrainState, train_epoch
from must_cli.method.inference import predict_labels
from must_cli.files.images import discover_images
from must_cli.method.model import build_must_model
from must_cli.training.builder import build_training


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a proxy model folder (local-dir format with proxy_info)")
    ap.add_argument("--pool", required=True, help="unlabeled images (searched recursively)")
    ap.add_argument("--test", required=True, help="labeled images, one folder per class")
    ap.add_argument("--n", type=int, default=1000, help="pool images used (evenly spaced)")
    ap.add_argument("--ntest", type=int, default=500, help="test images (first ntest/K of each class)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2.5e-5, help="peak lr (absolute, not per 256)")
    ap.add_argument("--eval-every", type=int, default=15)
    ap.add_argument("--freeze-cls", action="store_true", help="keep the text-built classifier fixed (freeze_classifier)")
    ap.add_argument("--name", default="run")
    ap.add_argument("--cfg", default="{}", help="JSON object of MustConfig fields")
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    torch.set_num_threads(1)
    cfg = MustConfig(**{**json.loads(a.cfg), **({"freeze_classifier": True} if a.freeze_cls else {})})
    info = json.loads((Path(a.model) / "open_clip_config.json").read_text())["proxy_info"]
    classes, templates = info["classes"], info["templates"]
    pool = discover_images(Path(a.pool))
    pool = pool[:: max(1, len(pool) // a.n)][: a.n]
    test: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        files = sorted((Path(a.test) / c).iterdir())[: a.ntest // len(classes)]
        test += files
        labels += [i] * len(files)
    truth = torch.tensor(labels)

    torch.manual_seed(0)
    model, pre = build_must_model(f"local-dir:{a.model}", None, classes, templates, torch.device("cpu"))
    training = build_training(model, cfg, torch.device("cpu"), pre.image_size)  # what adapt trains, as adapt does
    masks, teacher, optimizer = training.masks, training.nets.teacher, training.nets.optimizer
    sampler = views.EpochSampler(len(pool), cfg.seed)
    loader = DataLoader(views.TrainViews(pool, pre, masks, cfg), batch_size=a.bs, sampler=sampler,
                        num_workers=1, drop_last=True, persistent_workers=True)
    steps_per_epoch = len(pool) // a.bs
    total = steps_per_epoch * a.epochs

    def accuracy(m: torch.nn.Module) -> float:
        preds = predict_labels(m, test, pre, torch.device("cpu"), batch_size=500, workers=0)
        m.train()
        return round(float((preds == truth).float().mean()) * 100, 1)

    zero_shot = accuracy(model)
    print(a.name, "zs", zero_shot, flush=True)
    rows: list[tuple] = []
    start = time.time()

    def on_step(st: TrainState, m: torch.Tensor, h: torch.Tensor, lr: float) -> bool:
        if st.step % a.eval_every == 0 or st.step == total:
            sums = dict(zip(METRIC_NAMES, m.tolist()))
            n = sums["images"]
            row = (st.step, accuracy(teacher), accuracy(model), round(sums["kept"] / n, 2), round(sums["agree"] / n, 2))
            rows.append(row)
            print(a.name, row, round(time.time() - start), flush=True)
        return False

    state = TrainState()
    for epoch in range(a.epochs):
        sampler.set_epoch(epoch)
        train_epoch(model, teacher, optimizer, itertools.islice(loader, steps_per_epoch), cfg, state, total,
                    a.lr, a.lr * 0.04, torch.device("cpu"), contextlib.nullcontext, on_step)
    print("RESULT", a.name, json.dumps({"zs": zero_shot, "hist": rows, "args": vars(a)}), flush=True)


if __name__ == "__main__":
    main()
