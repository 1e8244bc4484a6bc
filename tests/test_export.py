"""`must export`: ONNX and TorchScript graphs match PyTorch, carry their preprocessing, take any batch size."""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from must_cli import __version__
from must_cli.commands import export as export_mod
from must_cli.method.model_file import load_model
from must_cli.cli import app
from must_cli.base.errors import MustError
from must_cli.commands.export import ExportGraph, run_export


def reference(adapted_run, x: torch.Tensor) -> np.ndarray:
    model, _ = load_model(adapted_run)
    with torch.no_grad():
        return ExportGraph(model)(x)[1].numpy()


def check_metadata(props: dict[str, str], adapted_run) -> None:
    _, meta = load_model(adapted_run)
    assert json.loads(props["classnames"]) == meta["classnames"]
    assert props["image_size"] == "32" and props["interpolation"] == "bicubic"
    assert json.loads(props["mean"]) == pytest.approx(meta["preprocess"]["mean"])
    assert json.loads(props["std"]) == pytest.approx(meta["preprocess"]["std"])
    assert props["resize"] == "shorter side to image_size, centre crop"
    assert props["must_cli_version"] == __version__


@pytest.mark.slow
def test_onnx_matches_pytorch_with_metadata_and_dynamic_batch(adapted_run, tmp_path):
    pytest.importorskip("onnx", reason="onnx export tests need the 'export' extra")
    ort = pytest.importorskip("onnxruntime", reason="onnx export tests need the 'export' extra")
    pytest.importorskip("onnxscript", reason="onnx export tests need the 'export' extra")
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", "--model", str(adapted_run), "--format", "onnx", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "max |probability difference|" in result.output and "opset 18" in result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch axis
    check_metadata(session.get_modelmeta().custom_metadata_map, adapted_run)
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        probs = session.run(["probabilities"], {"pixel_values": x.numpy()})[0]
        assert probs.shape == (n, 3)
        assert np.abs(probs - reference(adapted_run, x)).max() <= 1e-4


@pytest.mark.slow
def test_onnx_fp16_within_its_tolerance(adapted_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnx export tests need the 'export' extra")
    pytest.importorskip("onnxscript", reason="onnx export tests need the 'export' extra")
    result = run_export(adapted_run, "onnx", tmp_path / "half.onnx", fp16=True)
    assert result.tolerance == 1e-2 and result.max_diff is not None and result.max_diff <= 1e-2


def test_torchscript_matches_pytorch_with_metadata(adapted_run, tmp_path):
    shutil.copy(adapted_run / "model.safetensors", tmp_path / "model.safetensors")
    result = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "model.safetensors"), "--format", "torchscript"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "model.torchscript.pt"  # default: next to the model
    extra = {"metadata.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), _extra_files=extra)
    check_metadata(json.loads(extra["metadata.json"]), adapted_run)
    for n in (1, 4):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            logits, probs = loaded(x)
        assert logits.shape == (n, 3) and np.abs(probs.numpy() - reference(adapted_run, x)).max() <= 1e-4


def test_failed_verification_leaves_no_file(adapted_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "_max_diff", lambda *a: 0.5)
    with pytest.raises(MustError, match="does not match PyTorch"):
        run_export(adapted_run, "torchscript", tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_is_one_line(adapted_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = CliRunner().invoke(app, ["export", "--model", str(adapted_run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert result.output.strip() == 'error: onnx export needs the \'export\' extra: pip install "must-cli[export]"'
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "use onnx or torchscript"),
    (["--format", "onnx", "--opset", "13"], "opset 18 or higher"),
])
def test_bad_options_are_one_line(adapted_run, args, message):
    result = CliRunner().invoke(app, ["export", "--model", str(adapted_run), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
