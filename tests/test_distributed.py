"""Data-parallel `must adapt` on CPU (gloo): 2 processes x batch B == 1 process x batch 2B.

EpochSampler gives rank r the indices order[r::2], so the two ranks' batches together are the
one-process batch; per-sample seeding makes their views and masks identical, and the fairness
average is all-gathered with its gradient. What is left is float summation order, hence
tolerances instead of equality:

- logged loss: relative 1e-5;
- gradient of the first step (AdamW's first moment / 0.1): absolute 1e-6 (observed 4e-7, max |g| ~1);
- updated weights: absolute 1e-5 (observed 2e-8) wherever |gradient| > 1e-6. Below that the
  gradient is rounding noise (e.g. the attention key bias, whose exact gradient is 0) and
  AdamW's g / (|g| + 1e-8) turns noise into a step of up to lr in either direction, so there
  only |difference| <= 2 lr is asserted;
- EMA teachers and the shipped model: absolute 1e-5.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from must_cli.files.checkpoint import load_checkpoint
from must_cli.method.model_file import load_model
from must_cli.files.runs import list_checkpoints
from must_cli.cli import app

from helpers import make_color_images

pytestmark = pytest.mark.slow  # every test shares the module's real 2-process `must adapt --gpus 2` run
torch.set_num_threads(1)
ATOL = 1e-5
RTOL = 1e-5
GRAD_ATOL = NOISE = 1e-6
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_spec, classes_file) -> dict:
    """The same 2-step run twice: in this process with batch 6, and as `--gpus 2 --device cpu` with batch 3."""
    root = tmp_path_factory.mktemp("ddp")
    images = make_color_images(root / "images", per_class=4)  # 12 images: 2 steps of 6 either way
    (root / "templates.txt").write_text("a photo of a {}.\n")
    (root / "cfg.toml").write_text("threshold = 0.34\n")  # the tiny model's pseudo-labels pass: L_cls is exercised
    common = ["adapt", str(images), "--classes", str(classes_file), "--templates", str(root / "templates.txt"),
              "--model", tiny_spec, "--config", str(root / "cfg.toml"), "--epochs", "1", "--workers", "0",
              "--save-every", "1", "--keep-checkpoints", "2", "--lr", "1e-2", "--device", "cpu", "--no-guard"]
    one = CliRunner().invoke(app, [*common, "--batch-size", "6", "--output", str(root / "one")])
    assert one.exit_code == 0, one.output
    work = root / "work"  # no --output: rank 0 names runs/<timestamp> for everyone
    work.mkdir()
    two = subprocess.run([sys.executable, "-m", "must_cli", *common, "--batch-size", "3", "--gpus", "2"],
                         cwd=work, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    return {"root": root, "common": common, "one": root / "one", "work": work, "two": (work / "runs" / "latest").resolve(),
            "stderr": two.stderr}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=0, msg=k)


def loss_of(checkpoint: dict) -> float:
    sums = checkpoint["state"]["epoch_sums"]
    return float(sums[0] / sums[-1])  # METRIC_NAMES: "loss" first, "images" last


def test_only_rank_zero_writes_and_draws(runs):
    runs_dir = runs["work"] / "runs"
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(["latest", runs["two"].name])
    assert list(runs["work"].iterdir()) == [runs_dir]
    files = sorted(str(p.relative_to(runs["two"])) for p in runs["two"].rglob("*") if p.is_file())
    assert files == ["checkpoints/step-00000001.pt", "checkpoints/step-00000002.pt", "config.toml",
                     "metrics.jsonl", "model.safetensors", "predictions-both.json", "report.html", "run-record.json"]
    model, meta = load_model(runs["two"])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert runs["stderr"].count("2 process(es) x batch 3 x accum 1 = 6") == 1
    assert runs["stderr"].count("epoch 1: loss") == 1
    assert "Traceback" not in runs["stderr"] and "Warning" not in runs["stderr"]


def test_one_step_matches_one_process_with_the_union_batch(runs):
    one = load_checkpoint(runs["one"] / "checkpoints" / "step-00000001.pt")
    two = load_checkpoint(runs["two"] / "checkpoints" / "step-00000001.pt")
    assert loss_of(two) == pytest.approx(loss_of(one), rel=RTOL)
    assert one["state"]["epoch_sums"][5] > 0  # some pseudo-labels were kept
    assert_close(one["teacher"], two["teacher"])
    for g1, g2 in zip(one["optimizer"]["param_groups"], two["optimizer"]["param_groups"]):
        for index, name in zip(g1["params"], g1["names"]):
            grad = one["optimizer"]["state"][index]["exp_avg"] / 0.1
            torch.testing.assert_close(two["optimizer"]["state"][index]["exp_avg"] / 0.1, grad,
                                       atol=GRAD_ATOL, rtol=1e-4, msg=name)
            diff = (one["student"][name] - two["student"][name]).abs()
            signal = grad.abs() > NOISE
            assert (diff[signal] <= ATOL).all(), name
            assert diff.max() <= 2 * g1["lr"], name


def test_final_models_match(runs):
    assert_close(load_file(runs["one"] / "model.safetensors"), load_file(runs["two"] / "model.safetensors"))
    one = load_checkpoint(runs["one"] / "checkpoints" / "step-00000002.pt")
    two = load_checkpoint(runs["two"] / "checkpoints" / "step-00000002.pt")
    assert_close(one["teacher"], two["teacher"])
    for key in ("loss", "loss_cls", "loss_fair", "loss_mim", "loss_align", "kept", "agree"):
        assert one["state"]["metrics"][0][key] == pytest.approx(two["state"]["metrics"][0][key], rel=RTOL), key


def test_two_process_checkpoint_resumes_on_one_process(runs, tmp_path):
    """Same global batch (1 x 6 instead of 2 x 3): the mid-epoch position carries over."""
    run = tmp_path / "run"
    shutil.copytree(runs["two"], run)
    for name in ("checkpoints/step-00000002.pt", "model.safetensors", "metrics.jsonl"):
        (run / name).unlink()
    r = CliRunner().invoke(app, [*runs["common"], "--batch-size", "6", "--resume", "--output", str(run)])
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.output and "step-00000001.pt" in r.output
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000001.pt", "step-00000002.pt"]
    assert_close(load_file(run / "model.safetensors"), load_file(runs["one"] / "model.safetensors"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for machines without a GPU")
def test_gpus_without_a_gpu_says_how_to_test_on_cpu(runs, tmp_path):
    argv = [a for a in runs["common"] if a != "--device" and a != "cpu"]
    r = CliRunner().invoke(app, [*argv, "--gpus", "2", "--output", str(tmp_path / "out")])
    assert r.exit_code == 1 and r.output.strip() == (
        "error: --gpus 2: no CUDA GPU is visible: drop --gpus, or add --device cpu to run 2 CPU processes "
        "(gloo) for testing"), r.output
    assert not (tmp_path / "out").exists()
