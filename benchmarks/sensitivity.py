"""Is a proxy CLIP fragile to small weight changes? Accuracy after random sign perturbations.

Each weight moves by +-delta x its layer-decay lr scale (what AdamW's first steps can do at lr
delta), so a drop here would mean optimiser noise alone explains the decline under
self-training; docs/benchmarks.md ("What we found") cites this run.

    python -m benchmarks.sensitivity --model SHARED/models/cifar10-tinyclip-full --test CORRUPTED_TEST_BY_CLASS
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from must_cli.method.schedule import param_groups
from must_cli.method.inference import predict_labels
from must_cli.method.model import build_must_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a proxy model folder (local-dir format with proxy_info)")
    ap.add_argument("--test", required=True, help="labeled images, one folder per class")
    ap.add_argument("--deltas", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    a = ap.parse_args()
    info = json.loads((Path(a.model) / "open_clip_config.json").read_text())["proxy_info"]
    model, pre = build_must_model(f"local-dir:{a.model}", None, info["classes"], info["templates"], torch.device("cpu"))
    paths: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(info["classes"]):
        files = sorted((Path(a.test) / c).iterdir())
        paths += files
        labels += [i] * len(files)
    truth = torch.tensor(labels)

    def accuracy() -> float:
        return float((predict_labels(model, paths, pre, torch.device("cpu"), batch_size=500) == truth).float().mean())

    print(json.dumps({"delta": 0.0, "top1": accuracy()}))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    for delta in a.deltas:
        torch.manual_seed(0)
        with torch.no_grad():
            for group in param_groups(model, 0.05, 0.65):
                for p in group["params"]:
                    p.add_(torch.randn_like(p).sign() * delta * group["lr_scale"])
        print(json.dumps({"delta": delta, "top1": accuracy()}))
        model.load_state_dict(original)


if __name__ == "__main__":
    main()
