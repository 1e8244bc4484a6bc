"""What `must --version` reports, and the one line for a torch stack that cannot be imported.

The torch / torchvision / open_clip trio breaks in ways a traceback explains badly: a
torchvision built for another torch (or another build of it, +cpu against the default CUDA
one) dies with `operator torchvision::nms does not exist`. Versions come from the installed
packages' metadata, so they are known even when importing fails. This module returns text
and data; the cli layer prints.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass, field

from must_cli import __version__
from must_cli.base.config import AUTO_DEVICE

STACK = {"torch": "torch", "torchvision": "torchvision", "open_clip": "open_clip_torch"}  # module -> package
TORCHVISION_OFFSET = 15  # torchvision 0.(N + 15) is built for torch 2.N (0.15 for 2.0 ... 0.29 for 2.14)
WHEEL_INDEX = "https://download.pytorch.org/whl/"


def installed(package: str) -> str | None:
    """The installed version of ``package`` from its metadata, without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _minor_and_build(version: str) -> tuple[int, str]:
    base, _, build = version.partition("+")
    parts = base.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1), build


def mismatch(torch_version: str | None, vision_version: str | None) -> str | None:
    """Why this torchvision cannot run on this torch (another release, or another build), or None."""
    if not torch_version or not vision_version or not torch_version.startswith("2."):
        return None
    torch_minor, torch_build = _minor_and_build(torch_version)
    vision_minor, vision_build = _minor_and_build(vision_version)
    if vision_minor != torch_minor + TORCHVISION_OFFSET:
        return (f"torchvision {vision_version} is built for torch 2.{vision_minor - TORCHVISION_OFFSET}, "
                f"not torch {torch_version}")
    if torch_build != vision_build:
        builds = [f"+{b}" if b else "the default build" for b in (torch_build, vision_build)]
        return f"torch {torch_version} ({builds[0]}) and torchvision {vision_version} ({builds[1]}) are different builds"
    return None


def fix_command(torch_version: str | None) -> str:
    """The pip command that installs a matching torch and torchvision (same release, same build and index)."""
    if not torch_version:
        return "pip install torch torchvision"
    base, _, build = torch_version.partition("+")
    minor, _ = _minor_and_build(torch_version)
    index = f" --index-url {WHEEL_INDEX}{build}" if build else ""
    vision = f"torchvision==0.{minor + TORCHVISION_OFFSET}.*" if torch_version.startswith("2.") else "torchvision"
    return f'pip install --force-reinstall "torch=={base}" "{vision}"{index}'


def stack_versions() -> str:
    return ", ".join(f"{package} {installed(package) or 'not installed'}" for package in STACK.values())


def import_failure(module: str, error: BaseException) -> str:
    """One line: what failed to import and why, the installed versions, and the command that fixes it."""
    torch_version, vision_version = installed("torch"), installed("torchvision")
    why = (str(error).strip().splitlines() or [""])[0][:200]
    broken_pair = mismatch(torch_version, vision_version)
    if module == "open_clip" and not broken_pair:
        package = STACK[module]
        fix = f"pip install --force-reinstall {package}" + (f"=={installed(package)}" if installed(package) else "")
    else:
        fix = fix_command(torch_version)
    return (f"cannot import {module} ({type(error).__name__}: {why}); installed: {stack_versions()}"
            + (f"; {broken_pair}" if broken_pair else "") + f": fix with `{fix}`")


def stack_problem() -> str | None:
    """The import_failure line for the first of torch, torchvision, open_clip that fails to import, or None."""
    for module in STACK:
        try:
            importlib.import_module(module)
        except Exception as e:  # a broken build raises RuntimeError, OSError, AttributeError... not only ImportError
            return import_failure(module, e)
    return None


@dataclass
class Environment:
    """What `must --version` shows: versions, the device a run would use, and what that device offers."""

    versions: dict[str, str] = field(default_factory=dict)  # package -> version ("not installed")
    problem: str | None = None  # the import_failure line; the rest is then unknown
    mismatch: str | None = None
    cuda: str = ""  # torch's CUDA version, or why there is none
    gpus: list[str] = field(default_factory=list)
    device: str = ""
    features: dict[str, str] = field(default_factory=dict)  # bf16, torch.compile, fused AdamW -> yes/no and why
    weights_cache: str = ""


def weights_cache() -> str:
    """Where open_clip's downloads go: the Hugging Face hub cache (HF_HUB_CACHE, HF_HOME, ~/.cache)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


def describe_environment() -> Environment:
    """Versions from metadata; then, if the stack imports, CUDA, GPUs, the device and its features."""
    env = Environment({"must-cli": __version__, **{package: installed(package) or "not installed"
                                                   for package in STACK.values()}})
    env.mismatch = mismatch(installed("torch"), installed("torchvision"))
    env.weights_cache = weights_cache()
    env.problem = stack_problem()
    if env.problem:
        return env
    import torch

    from must_cli.base.runtime import pick_device

    env.cuda = torch.version.cuda or "none (a CPU build of torch)"
    env.gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    device = pick_device(AUTO_DEVICE)
    env.device = str(device)
    env.features = {"bf16": bf16_support(device), "torch.compile": compile_support(device),
                    "fused AdamW": fused_adamw_support(device)}
    return env


def bf16_support(device) -> str:  # noqa: ANN001 (torch is imported lazily)
    import torch

    if device.type == "cuda":
        return "yes (used by --precision auto)" if torch.cuda.is_bf16_supported() else "no: fp32 on this GPU"
    return "not used on CPU (fp32; --precision bf16 forces it)"


def compile_support(device) -> str:  # noqa: ANN001
    if device.type == "cuda":
        return "yes (triton found)" if importlib.util.find_spec("triton") else "no: triton is not installed"
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    return ("possible (C++ compiler found), off by default on CPU" if compiler
            else "no: no C++ compiler for inductor on CPU")


def fused_adamw_support(device) -> str:  # noqa: ANN001
    """Tried, not guessed: one fused AdamW step on a one-element tensor on ``device``."""
    import torch

    try:
        weight = torch.zeros(1, device=device, requires_grad=True)
        weight.grad = torch.ones(1, device=device)
        torch.optim.AdamW([weight], fused=True).step()
        return "yes"
    except (RuntimeError, TypeError, ValueError) as e:
        return f"no ({(str(e).splitlines() or [''])[0][:80]})"
