"""Data-parallel `must adapt` on CPU (gloo): 2 processes x batch B == 1 process x batch 2B.

EpochSampler gives rank r the indices order[r::2], so the two ranks' batches together are the
one-process batch; per-sample seeding makes their views and masks identical, and the fairness
average is all-gathered with its gradient. What is left is float summation order, hence a
tolerance instead of equality: ATOL below on weights, RTOL on the logged loss.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from must_cli.checkpoint import list_checkpoints, load_checkpoint, load_model
from must_cli.cli import app

from conftest import make_color_images

torch.set_num_threads(1)
ATOL = 1e-5  # weights after AdamW steps (observed differences are ~1e-7)
RTOL = 1e-5  # logged losses
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
              "--save-every", "1", "--lr", "1e-2", "--device", "cpu", "--no-guard"]
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
                     "metrics.jsonl", "model.safetensors"]
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
    assert_close(one["student"], two["student"])
    assert_close(one["teacher"], two["teacher"])


def test_final_models_match(runs):
    assert_close(load_file(runs["one"] / "model.safetensors"), load_file(runs["two"] / "model.safetensors"))
    one = load_checkpoint(runs["one"] / "checkpoints" / "step-00000002.pt")
    two = load_checkpoint(runs["two"] / "checkpoints" / "step-00000002.pt")
    assert_close(one["student"], two["student"])
    assert one["state"]["metrics"][0]["loss"] == pytest.approx(two["state"]["metrics"][0]["loss"], rel=RTOL)


def test_two_process_checkpoint_resumes_on_one_process(runs, tmp_path):
    """Same global batch (1 x 6 instead of 2 x 3): the mid-epoch position carries over."""
    run = tmp_path / "run"
    shutil.copytree(runs["two"], run)
    for name in ("checkpoints/step-00000002.pt", "model.safetensors", "metrics.jsonl"):
        (run / name).unlink()
    r = CliRunner().invoke(app, [*runs["common"], "--batch-size", "6", "--output", str(run), "--resume"])
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.output and "step-00000001.pt" in r.output
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000001.pt", "step-00000002.pt"]
    assert_close(load_file(run / "model.safetensors"), load_file(runs["one"] / "model.safetensors"))
