"""`must adapt` end to end on a tiny local-dir CLIP: outputs, metadata, errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from must_cli.files.checkpoint import load_checkpoint
from must_cli.method.model_file import load_model
from must_cli.cli import app
from must_cli.base.config import MustConfig, resolve_config
from must_cli.method.schedule import cosine_lr
from must_cli.files.runs import list_checkpoints

from helpers import CLASSES, one_line_error

runner = CliRunner()


def adapt(*args):
    return runner.invoke(app, ["adapt", *map(str, args)])


def test_run_writes_a_loadable_model_with_metadata(adapted_run, tiny_spec):
    path = adapted_run / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    for key in ("format", "vision_config", "classnames", "templates", "preprocess", "config", "must_cli_version"):
        assert key in header
    model, meta = load_model(adapted_run)
    assert meta["classnames"] == CLASSES
    assert meta["preprocess"]["image_size"] == 32 and meta["chosen"] == "ema-teacher"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    # What shipped is the EMA teacher of the last step, tensor for tensor ([MSK] and decoder for --init-from).
    teacher = load_checkpoint(list_checkpoints(adapted_run / "checkpoints")[-1])["teacher"]
    shipped = load_file(str(path))
    heads = {k for k in teacher if k.startswith(("mask_token", "ln_patch.", "decoder."))}
    assert set(shipped) == {"classifier", "logit_scale"} | {f"visual.{k}" for k in model.visual.state_dict()} | heads
    for key, value in shipped.items():
        assert torch.equal(value, teacher[key].float()), key


def test_run_writes_resolved_config_and_metrics(adapted_run):
    cfg = resolve_config(config_file=adapted_run / "config.toml")
    assert isinstance(cfg, MustConfig) and cfg.epochs == 2 and cfg.batch_size == 8
    lines = (adapted_run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 3), (2, 6)]  # 24 images / batch 8 = 3 steps an epoch
    peak, floor = 1e-3 * 8 / 256, cfg.min_lr * 8 / 256  # --lr is per 256 images; the log shows the absolute lr
    for r in records:
        assert r["lr"] == pytest.approx(cosine_lr(r["step"] - 1, 6, peak, floor))  # the epoch's last step
        assert r["loss"] == pytest.approx(r["loss_cls"] + cfg.w_fair * r["loss_fair"] + r["loss_mim"]
                                          + cfg.w_align * r["loss_align"], rel=1e-5)
        for share in ("kept", "agree"):  # per-image fractions of the 24 images
            assert r[share] * 24 == pytest.approx(round(r[share] * 24)) and 0 <= r[share] <= 1
        assert 0 <= r["balance"] <= 1
    assert not list(adapted_run.glob(".*tmp"))  # atomic writes leave no temp files


@pytest.mark.slow
def test_eval_dir_tracks_zero_shot_teacher_and_student(tmp_path, tiny_spec, classes_file, unlabeled_images,
                                                       labeled_images):
    out = tmp_path / "run"
    r = adapt(unlabeled_images, "--classes", classes_file, "--model", tiny_spec, "--epochs", 1, "--batch-size", 8,
              "--workers", 0, "--output", out, "--eval-dir", labeled_images, "--no-mim", "--no-align")
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(records[0]["eval"]) == {"zero_shot"}
    assert set(records[1]["eval"]) == {"teacher", "student"}
    assert 0 <= records[1]["eval"]["teacher"]["mean_per_class"] <= 1


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_spec, classes_file, unlabeled_images):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(adapt(empty, "--classes", classes_file, "--model", tiny_spec), "no readable image", "empty")
    one_line_error(adapt(tmp_path / "nope", "--classes", classes_file, "--model", tiny_spec), "nope")
    one_line_error(adapt(unlabeled_images, "--classes", tmp_path / "missing.txt", "--model", tiny_spec), "missing.txt")
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ndog\nCat\n")
    one_line_error(adapt(unlabeled_images, "--classes", dup, "--model", tiny_spec), "dup.txt", "line 3")
    one_line_error(adapt(unlabeled_images, "--classes", classes_file, "--preset", "nosuch"), "unknown preset")
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("epochs = 2\nlearning_rate = 0.1\n")
    one_line_error(adapt(unlabeled_images, "--classes", classes_file, "--config", bad_cfg), "learning_rate", "bad.toml")
    one_line_error(adapt(unlabeled_images, "--classes", classes_file, "--model", f"local-dir:{tmp_path}"),
                   str(tmp_path), "open_clip_config.json")
    one_line_error(adapt(unlabeled_images, "--classes", classes_file, "--model", tiny_spec, "--epochs", 0), "epochs")


@pytest.mark.slow
def test_offline_download_is_a_one_line_error(tmp_path, classes_file, unlabeled_images):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "must_cli", "adapt", str(unlabeled_images), "--classes", str(classes_file),
         "--model", "ViT-B-16", "--pretrained", "openai", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert "cannot download weights for ViT-B-16" in err and "local-dir:" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_non_vit_tower_is_rejected(tmp_path, classes_file, unlabeled_images):
    one_line_error(adapt(unlabeled_images, "--classes", classes_file, "--model", "RN50", "--pretrained", ""),
                   "ViT image towers only")


def test_adapt_predict_skips_what_training_skipped_with_a_warning(tmp_path, tiny_spec, classes_file,
                                                                  unlabeled_images):
    """--predict scans the folder again, under the run's --max-pixels: an unreadable or too-large file is the same
    warning there, not a crash after training nor a label for an image the run never adapted to."""
    images = tmp_path / "images"
    shutil.copytree(unlabeled_images, images)
    (images / "broken.jpg").write_bytes(b"not an image")
    Image.new("RGB", (64, 64), "red").save(images / "large.jpg")  # 4,096 pixels; the others have 1,600
    out = tmp_path / "run"
    r = adapt(images, "--classes", classes_file, "--model", tiny_spec, "--epochs", 1, "--batch-size", 8,
              "--workers", 0, "--output", out, "--predict", "--no-guard", "--device", "cpu", "--max-pixels", 2000)
    assert r.exit_code == 0, r.output
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 24 and not any(row.startswith(("broken.jpg", "large.jpg")) for row in rows)
    said = " ".join(r.output.split())
    assert said.count("broken.jpg") == 2 and said.count("large.jpg") == 2  # once for training, once for --predict
