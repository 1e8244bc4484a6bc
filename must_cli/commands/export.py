"""`must export`: the adapted classifier as one ONNX or TorchScript graph for serving without must-cli.

The graph is image tower + classifier only: ``pixel_values`` (N, 3, H, W) float32, already
normalised, in; ``logits`` and ``probabilities`` out, with a dynamic batch axis. The
preprocessing a server must reproduce travels inside the file as metadata. Every export is
checked against PyTorch fp32 before it replaces the destination, so a broken file never lands.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from must_cli import __version__
from must_cli.method.model_file import load_model, preprocess_of
from must_cli.base.errors import MustError
from must_cli.files.images import display_name
from must_cli.method.model import MustModel

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 18  # the torch.export-based exporter has no lower implementations; 18 runs on onnxruntime >= 1.14
TOLERANCE = {False: 1e-4, True: 1e-2}  # max abs difference on probabilities, fp32 / fp16 export
RESIZE_RULE = "shorter side to image_size, centre crop"
EXTRA_HINT = 'onnx export needs the \'export\' extra: pip install "must-cli[export]"'


class ExportGraph(nn.Module):
    """pixel_values -> (logits, probabilities); with ``half`` the weights are fp16 but inputs/outputs stay fp32."""

    def __init__(self, model: MustModel, half: bool = False):
        super().__init__()
        self.model = copy.deepcopy(model).half() if half else model
        self.dtype = torch.float16 if half else torch.float32

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(pixel_values.to(self.dtype)).float()
        return logits, logits.softmax(dim=-1)


@dataclass
class ExportResult:
    path: Path
    format: str
    fp16: bool
    opset: int | None
    max_diff: float | None  # None with --no-verify
    tolerance: float
    seconds: float


def export_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """What a server needs to feed the graph and read its output, as string key/values (ONNX metadata_props)."""
    pre = preprocess_of(meta)
    return {
        "classnames": json.dumps(list(meta["classnames"]), ensure_ascii=False),
        "image_size": str(pre.image_size),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "interpolation": pre.interpolation,
        "resize": RESIZE_RULE,
        "input": "pixel_values: float32 (N, 3, image_size, image_size) RGB in [0, 1], then (x - mean) / std",
        "outputs": "logits, probabilities: float32 (N, num_classes), columns in classnames order",
        "must_cli_version": __version__,
    }


def default_output(model_path: Path, fmt: str, fp16: bool) -> Path:
    """Next to the model file: model.onnx / model.torchscript.pt (``.fp16`` before the extension for --fp16)."""
    folder = model_path if model_path.is_dir() else model_path.parent
    return folder / f"model{'.fp16' if fp16 else ''}{'.onnx' if fmt == 'onnx' else '.torchscript.pt'}"


def _check_inputs(size: int) -> list[torch.Tensor]:
    """Seeded random-normal batches of 1 and 3: different from the traced batch of 2, so a frozen batch fails."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 3, size, size, generator=g) for n in (1, 3)]


def _max_diff(reference: nn.Module, run: Callable[[torch.Tensor], np.ndarray], inputs: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return max(float(np.abs(run(x) - reference(x)[1].numpy()).max()) for x in inputs)


def _export_onnx(graph: ExportGraph, example: torch.Tensor, dst: Path, opset: int, props: dict[str, str]) -> Callable:
    try:
        import onnx
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise MustError(EXTRA_HINT) from None
    if opset > onnx.defs.onnx_opset_version():
        raise MustError(f"--opset {opset}: the installed onnx knows opsets up to {onnx.defs.onnx_opset_version()}")
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            graph, (example,), dynamo=True, verbose=False, opset_version=opset, input_names=["pixel_values"],
            output_names=["logits", "probabilities"], dynamic_shapes={"pixel_values": {0: batch}},
        )
    except Exception as e:  # the exporter raises its own error types; the gist fits one line
        raise MustError(f"ONNX export failed: {' '.join(str(e).split())[:200]}: rerun with --debug for the full error") from e
    got = program.model.opset_imports.get("")
    if got != opset:
        raise MustError(f"--opset {opset}: this torch exports opset {got}: pass --opset {got}")
    program.model.metadata_props.update(props)
    program.save(dst)  # weights over 2 GB go to a .data file beside it
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["probabilities"], {"pixel_values": x.numpy()})[0]


def _export_torchscript(graph: ExportGraph, example: torch.Tensor, dst: Path, props: dict[str, str]) -> Callable:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still what TorchScript users load
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=Warning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(graph, example)
        torch.jit.save(traced, str(dst), _extra_files={"metadata.json": json.dumps(props, ensure_ascii=False)})
        loaded = torch.jit.load(str(dst))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x)[1].numpy()

    return run


def _write_error(dst: Path, e: OSError) -> MustError:
    return MustError(f"cannot write {display_name(dst)} ({e.strerror or e}): pass --output to a writable place")


def run_export(model_path: Path, fmt: str, output: Path | None = None, opset: int = DEFAULT_OPSET,
               fp16: bool = False, verify: bool = True) -> ExportResult:
    """Export, verify in a temporary folder beside the destination, then move into place."""
    if fmt not in FORMATS:
        raise MustError(f"--format {fmt}: use onnx or torchscript")
    if fmt == "onnx" and opset < DEFAULT_OPSET:
        raise MustError(f"--opset {opset}: the ONNX exporter starts at opset {DEFAULT_OPSET}: pass --opset 18 or higher")
    model, meta = load_model(model_path)
    dst = output or default_output(model_path, fmt, fp16)
    props = export_metadata(meta)
    size = int(props["image_size"])
    graph = ExportGraph(model, half=fp16).eval()
    example = torch.randn(2, 3, size, size)
    start = time.perf_counter()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    except OSError as e:
        raise _write_error(dst, e) from None
    try:
        tmp = tmpdir / dst.name
        if fmt == "onnx":
            run = _export_onnx(graph, example, tmp, opset, props)
        else:
            run = _export_torchscript(graph, example, tmp, props)
        diff = _max_diff(ExportGraph(model).eval(), run, _check_inputs(size)) if verify else None
        if diff is not None and not diff <= TOLERANCE[fp16]:
            raise MustError(
                f"{fmt} export does not match PyTorch: max probability difference {diff:.2e} > {TOLERANCE[fp16]:g}; "
                "nothing was written: try another --opset or report the issue"
            )
        for part in sorted(tmpdir.iterdir(), key=lambda p: p.name == dst.name):  # sidecar data first, graph last
            os.replace(part, dst.parent / part.name)
    except OSError as e:
        raise _write_error(dst, e) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return ExportResult(dst, fmt, fp16, opset if fmt == "onnx" else None, diff, TOLERANCE[fp16],
                        time.perf_counter() - start)
