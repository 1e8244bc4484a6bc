"""bf16 end to end: `must adapt --precision bf16` on the 32-px stand-in finishes, its loss curve follows fp32's,
and the weights it trains (the head included) stay fp32. On CPU (slow) and, gpu-marked, on CUDA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from must_cli.cli import app
from must_cli.files.run_dir import METRICS_FILE, RunDir

REPO = Path(__file__).resolve().parents[1]
STANDIN, EXAMPLES = REPO / "benchmarks" / "models" / "cifar10-standin", REPO / "examples"
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# bf16 keeps 8 mantissa bits; measured on CPU: epoch losses 0.4% and 0.8% from fp32 (docs/benchmarks.md).
LOSS_RTOL, KEPT_ATOL = 0.03, 0.05


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((EXAMPLES / "photos").glob("*.jpg"))[:96]:
        shutil.copyfile(path, folder / path.name)
    return folder


def adapt(photos: Path, out: Path, precision: str, device: str) -> list[dict]:
    result = CliRunner().invoke(app, [
        "adapt", str(photos), "--classes", str(EXAMPLES / "classes.txt"), "--templates", str(EXAMPLES / "templates.txt"),
        "--model", f"local-dir:{STANDIN}", "--preset", "tiny-images", "--epochs", "2", "--batch-size", "16",
        "--workers", "0", "--no-guard", "--device", device, "--precision", precision, "--output", str(out)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=[pytest.mark.gpu, GPU])])
def test_bf16_adapt_finishes_with_fp32_weights_and_a_loss_curve_within_tolerance_of_fp32(photos, tmp_path, device):
    fp32 = adapt(photos, tmp_path / "fp32", "fp32", device)
    bf16 = adapt(photos, tmp_path / "bf16", "bf16", device)
    assert len(fp32) == len(bf16) == 2 and (tmp_path / "bf16" / "model.safetensors").is_file()
    for a, b in zip(fp32, bf16):
        assert abs(b["loss"] - a["loss"]) <= LOSS_RTOL * abs(a["loss"]), (a["loss"], b["loss"])
        assert abs(b["kept"] - a["kept"]) <= KEPT_ATOL, (a["kept"], b["kept"])
    assert [r["loss"] for r in fp32] != [r["loss"] for r in bf16]  # autocast really changed the arithmetic
    saved = torch.load(RunDir(tmp_path / "bf16").latest_checkpoint(), map_location="cpu", weights_only=False)
    assert saved["student"]["classifier"].dtype == torch.float32  # the head trains in fp32 under autocast
    assert {t.dtype for t in saved["student"].values() if t.is_floating_point()} == {torch.float32}
    moments = [s["exp_avg"] for s in saved["optimizer"]["state"].values()]
    assert moments and {m.dtype for m in moments} == {torch.float32}
