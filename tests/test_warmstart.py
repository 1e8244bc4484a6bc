"""Warm start from an adapted run, --freeze-classifier, --class-prior through the CLI, and adapt --predict."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from must_cli.method.model_file import load_model, read_metadata
from must_cli.cli import app
from must_cli.base.errors import MustError
from must_cli.method.model import build_must_model
from must_cli.method.warmstart import load_warm_start

runner = CliRunner()
NEW_CLASSES = ["blue", "red"]  # another list than the run's (red, green, blue)


def _rewrite(src, dst, drop=(), **meta_changes):
    """A copy of a model file with some tensors dropped or header entries changed."""
    with safe_open(str(src), framework="pt") as f:
        header = dict(f.metadata())
    header.update({k: json.dumps(v) for k, v in meta_changes.items()})
    tensors = {k: v for k, v in load_file(str(src)).items() if not k.startswith(drop)}
    save_file(tensors, str(dst), metadata=header)
    return dst


def test_warm_start_loads_tower_and_heads_and_rebuilds_the_classifier(adapted_run, tiny_spec):
    warm = load_warm_start(adapted_run, NEW_CLASSES, ["a photo of {}."], torch.device("cpu"))
    saved = load_file(str(adapted_run / "model.safetensors"))
    for k, v in warm.model.visual.state_dict().items():
        assert torch.equal(v, saved[f"visual.{k}"]), k
    assert torch.equal(warm.model.mask_token, saved["mask_token"]) and warm.heads_restored
    assert torch.equal(warm.model.decoder[0].weight, saved["decoder.0.weight"])
    text, _ = build_must_model(tiny_spec, None, NEW_CLASSES, ["a photo of {}."], torch.device("cpu"))
    assert warm.model.classifier.shape == (text.classifier.shape[0], 2)
    assert torch.allclose(warm.model.classifier, text.classifier)  # from the text tower, not the run's head
    assert warm.base_model == tiny_spec


def test_old_model_files_still_load_and_warm_start_with_fresh_heads(adapted_run, tmp_path):
    old = _rewrite(adapted_run / "model.safetensors", tmp_path / "old.safetensors",
                   drop=("mask_token", "ln_patch.", "decoder."))
    model, _ = load_model(old)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert not load_warm_start(old, NEW_CLASSES, ["{}"], torch.device("cpu")).heads_restored


def test_missing_base_weights_are_a_one_line_error_naming_model_and_tag(adapted_run, tmp_path):
    gone = _rewrite(adapted_run / "model.safetensors", tmp_path / "moved.safetensors",
                    source_model={"model": f"local-dir:{tmp_path / 'deleted'}", "pretrained": "openai"})
    with pytest.raises(MustError) as e:
        load_warm_start(gone, NEW_CLASSES, ["{}"], torch.device("cpu"))
    msg = str(e.value)
    assert "deleted" in msg and "pretrained openai" in msg and "text tower" in msg


def test_adapt_init_from_with_frozen_classifier_keeps_the_text_head(adapted_run, tiny_spec, tmp_path,
                                                                   unlabeled_images):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NEW_CLASSES) + "\n")
    prior = tmp_path / "prior.txt"
    prior.write_text("red 3\nblue 1\n")
    out = tmp_path / "warm"
    result = runner.invoke(app, [
        "adapt", str(unlabeled_images), "--classes", str(classes), "--init-from", str(adapted_run),
        "--freeze-classifier", "--class-prior", str(prior), "--epochs", "1", "--batch-size", "8",
        "--workers", "0", "--output", str(out), "--lr", "1e-3", "--no-guard",
    ])
    assert result.exit_code == 0, result.output
    model, meta = load_model(out)
    templates = meta["templates"]
    text, _ = build_must_model(tiny_spec, None, NEW_CLASSES, templates, torch.device("cpu"))
    assert torch.allclose(model.classifier, text.classifier)  # frozen: exactly the text-built head
    start = load_file(str(adapted_run / "model.safetensors"))["visual.conv1.weight"]
    assert not torch.equal(model.visual.conv1.weight, start)  # but the tower trained from the run's weights
    assert meta["source_model"]["model"] == tiny_spec
    assert meta["class_prior"] == {"source": "file", "shares": {"blue": 0.25, "red": 0.75}}


def test_adapt_predict_writes_what_must_predict_writes(tiny_spec, classes_file, unlabeled_images, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec, "--epochs", "1",
        "--batch-size", "8", "--workers", "0", "--output", str(out), "--predict", "--class-prior", "estimate",
        "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["predict", str(unlabeled_images), "--model", str(out), "--output",
                                 str(tmp_path / "again.csv"), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = (out / "predictions.csv").read_text()
    assert written == (tmp_path / "again.csv").read_text()
    assert len(written.splitlines()) == 1 + 24  # header + every image
    shares = read_metadata(out)["class_prior"]
    assert shares["source"] == "estimate" and sum(shares["shares"].values()) == pytest.approx(1.0, abs=1e-4)
