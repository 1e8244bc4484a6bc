"""Copy the offline demo's images: unlabeled photos from the stand-in's pool, labeled eval images from test.

The demo model is the in-domain stand-in CLIP ``benchmarks/models/cifar10-standin`` (built by
benchmarks/make_standin.py; ``examples/demo-model`` links to it). This script writes, under --out:

    photos/       --photos-per-class unlabeled train files from the stand-in's unseen pool
                  (the first ones of each class), shuffled and renamed img_0000.jpg ...
    eval/<class>/ the first --eval-per-class test files of each class
    classes.txt   the 10 class names;  templates.txt  the stand-in's 18 prompt templates

    python examples/make_demo_data.py --cifar /work/data/cifar10 --out examples/
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "cifar10-standin"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar", type=Path, required=True, help="folder with train/ and test/ <class>/*.jpg")
    p.add_argument("--out", type=Path, required=True, help="normally examples/")
    p.add_argument("--photos-per-class", type=int, default=100)
    p.add_argument("--eval-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    info = json.loads((MODEL / "open_clip_config.json").read_text())["proxy_info"]
    start, end = info["pool_files"]
    if a.photos_per_class > end - start:
        raise SystemExit(f"--photos-per-class is at most {end - start} (the stand-in's pool)")
    photos = [f for c in info["classes"] for f in sorted((a.cifar / "train" / c).iterdir())[start:start + a.photos_per_class]]
    random.Random(a.seed).shuffle(photos)
    for folder in (a.out / "photos", a.out / "eval"):
        shutil.rmtree(folder, ignore_errors=True)
    (a.out / "photos").mkdir(parents=True)
    for i, src in enumerate(photos):
        shutil.copyfile(src, a.out / "photos" / f"img_{i:04d}.jpg")
    for c in info["classes"]:
        (a.out / "eval" / c).mkdir(parents=True)
        for src in sorted((a.cifar / "test" / c).iterdir())[:a.eval_per_class]:
            shutil.copyfile(src, a.out / "eval" / c / src.name)
    (a.out / "classes.txt").write_text("# CIFAR-10 class names, one per line (the labels of examples/eval/).\n"
                                       + "\n".join(info["classes"]) + "\n")
    (a.out / "templates.txt").write_text("# The prompt templates of the stand-in (one per line, {} = class name).\n"
                                         + "\n".join(info["templates"]) + "\n")
    print(f"{len(photos)} photos (train files [{start}:{start + a.photos_per_class}) of each class), "
          f"{a.eval_per_class * len(info['classes'])} eval images")


if __name__ == "__main__":
    main()
