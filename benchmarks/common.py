"""What the benchmark scripts share, in one place.

* where things are: the repository, ``../shared`` (models, data), the extracted CIFAR-10, the stand-ins;
* image folders built once from CIFAR-10 (balanced or sliced subsets, hard-linked, labeled or flat);
* ``must`` run as a subprocess through the real command line, and ``must eval`` read back;
* what every result file records next to its numbers: the command, the date and the machine.

Scripts run from the repository root as modules, ``python -m benchmarks.NAME`` (benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from must_cli.files.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # models/ (round 1's stand-ins), data/ (the CIFAR-10 JPEG archive), reference/
CIFAR = REPO.parent / "data" / "cifar10"  # an extracted {train,test}/<class>/ copy, where scripts default to one
STANDIN = REPO / "benchmarks" / "models" / "cifar10-standin"
MODELS = {"indomain": STANDIN, "shift": STANDIN}  # one stand-in has both headrooms (its README)
# The first round's stand-ins in <shared>/models, which the long-tail, warm-start and estimator
# benchmarks were measured on: train files [0:500) of each class pretrained cifar10-tinyclip.
SHARED_MODELS = {"indomain": "cifar10-tinyclip", "shift": "cifar10-tinyclip-full"}
SHARED_POOL_SKIP = 500
# The five development corruptions (MUST Table 9's kind of shift) and the severity every benchmark uses.
DEV_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression", "pixelate")
SEVERITY = 5


def log(message: str) -> None:
    """Progress for the person watching; results go to stdout and the JSON file."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- provenance


def device_args(device: str | None) -> list[str]:
    """`must` flags for --device: the named device, or the CPU with one loader worker (2-core machines)."""
    return ["--device", device] if device else ["--device", "cpu", "--workers", "1"]


def machine(device: str | None = None) -> dict:
    """The machine a result was measured on (GPU name when ``device`` is a CUDA device that exists)."""
    import torch

    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device or "cpu"}
    if device and device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def provenance(module: str, argv: Sequence[str] | None, device: str | None = None) -> dict:
    """Command (as a module run: ``python -m benchmarks.NAME ...``), UTC date and machine of a result."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {"command": shlex.join(["python", "-m", module, *args]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(device)}


def write_json(path: Path, data: dict, indent: int = 2) -> None:
    """Atomically, so a stopped script never leaves half a result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


# ---------------------------------------------------------------- image folders


def materialize(dst: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder once; a half-built one (no .done marker, e.g. after Ctrl-C) is rebuilt."""
    if (dst / ".done").exists():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    build(dst)
    (dst / ".done").touch()
    return dst


def link(src: Path, dst: Path) -> None:
    """Hard link (no extra disk), or copy where links are not allowed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def balanced_subset(split: Path, total: int | None, skip: int = 0) -> list[Path]:
    """The first ``total / classes`` files (sorted by name) of each class after ``skip``: deterministic."""
    classes = sorted(p for p in split.iterdir() if p.is_dir())
    per_class = None if total is None else max(1, total // len(classes))
    return [f for c in classes for f in sorted(c.iterdir())[skip:][:per_class]]


def train_slice(cifar: Path, files: Sequence[int], total: int | None) -> list[Path]:
    """Balanced ``total`` images (None: all) from train files [start:end) of each class."""
    start, end = files
    classes = sum(p.is_dir() for p in (cifar / "train").iterdir())
    return balanced_subset(cifar / "train", min(total or 10**9, (end - start) * classes), skip=start)


def link_labeled(files: Sequence[Path], dst: Path) -> None:
    """Labeled copy: <class>/<file>, what `must eval` reads."""
    for f in files:
        link(f, dst / f.parent.name / f.name)


def link_flat(files: Sequence[Path], dst: Path) -> None:
    """Unlabeled copy: names are hashes of <class>/<file>, so neither the name nor the order leaks the class."""
    for f in files:
        digest = hashlib.sha1(f"{f.parent.name}/{f.name}".encode()).hexdigest()[:16]
        link(f, dst / f"{digest}{f.suffix}")


def extract_cifar(shared: Path, work: Path) -> Path:
    """CIFAR-10 as JPEG folders, extracted once from <shared>/data/cifar10-jpeg.tar.gz into ``work``."""
    archive = shared / "data" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        raise SystemExit(f"{archive} not found: pass --shared to the folder holding data/ and models/")

    def build(dst: Path) -> None:
        log(f"extracting {archive} ...")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dst, filter="data")

    return materialize(work / "cifar10-jpeg", build) / "cifar10"


def model_inputs(work: Path, setting: str, folder: Path | None = None) -> tuple[str, Path, Path]:
    """(local-dir spec, classes file, templates file) written from the ``proxy_info`` of a stand-in's folder
    (default: the setting's stand-in)."""
    folder = folder or MODELS[setting]
    info = json.loads((folder / "open_clip_config.json").read_text())["proxy_info"]
    out = work / "prompts" / folder.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(info["classes"]) + "\n")
    (out / "templates.txt").write_text("\n".join(info["templates"]) + "\n")
    return f"local-dir:{folder}", out / "classes.txt", out / "templates.txt"


# ---------------------------------------------------------------- running must


def must(argv: list[str], logfile: Path) -> float:
    """Run `python -m must_cli ...`, output to a log; seconds taken, or exit with the log's tail."""
    start = time.time()
    with open(logfile, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        env = {**os.environ, "COLUMNS": "160"}  # readable tables in the log
        code = subprocess.run([sys.executable, "-m", "must_cli", *argv], stdout=f, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code:
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"`must {shlex.join(argv)}` failed (exit {code}); end of {logfile}:\n{tail}")
    return round(time.time() - start, 1)


def zero_shot_args(model: str, classes: Path, templates: Path) -> list[str]:
    """`must eval` flags that score the base CLIP's text-built classifier instead of an adapted run."""
    return ["--zero-shot", "--model", model, "--classes", str(classes), "--templates", str(templates)]


def evaluate(labeled: Path, out: Path, model_args: list[str], device: str | None, logfile: Path) -> dict:
    """`must eval LABELED MODEL_ARGS --output OUT`, once: an existing OUT is read back. Its report (top1, ...)."""
    if not out.exists():
        must(["eval", str(labeled), *model_args, "--output", str(out), *device_args(device)], logfile)
    return json.loads(out.read_text())
