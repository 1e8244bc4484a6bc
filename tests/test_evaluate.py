"""`must eval` and the accuracy report behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from must_cli.cli import app
from must_cli.base.errors import MustError
from must_cli.commands.evaluate import EvalRequest
from must_cli.method.labeled import accuracy_report, labeled_images
from must_cli.commands.predict import PredictRequest

from helpers import CLASSES, make_color_images

ABC = ["a", "b", "c"]


def test_report_top1_mean_per_class_and_recall():
    # a: 3 images, 2 right; b: 1 image, right; c: 2 images, 0 right; one undecodable image is left out.
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 1])
    preds = torch.tensor([0, 0, 1, 1, 0, 1, -1])
    rep = accuracy_report(preds, labels, ABC)
    assert rep["images"] == 6
    assert rep["top1"] == pytest.approx(3 / 6)
    assert rep["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})
    assert rep["mean_per_class"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_report_skips_absent_classes_and_orders_confusions():
    # c->a twice, then three one-off confusions tied: kept in (true, predicted) class order.
    labels = torch.tensor([2, 2, 2, 0, 0, 1, 1])
    preds = torch.tensor([0, 0, 1, 1, 2, 0, 1])
    rep = accuracy_report(preds, labels, ABC + ["d"], top_confusions=3)
    assert "d" not in rep["per_class_recall"]
    assert rep["mean_per_class"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert [(p["true"], p["predicted"], p["count"]) for p in rep["confusions"]] == [
        ("c", "a", 2), ("a", "b", 1), ("a", "c", 1),
    ]


def test_report_without_errors_lists_no_confusion():
    rep = accuracy_report(torch.tensor([0, 1]), torch.tensor([0, 1]), ABC)
    assert rep["top1"] == 1.0 and rep["confusions"] == []


def test_folders_match_case_and_space_insensitively_and_warn_missing(tmp_path):
    make_color_images(tmp_path, per_class=2, by_class=True)
    (tmp_path / "red").rename(tmp_path / "RED")
    (tmp_path / "green").rename(tmp_path / "Light_Green")
    for f in (tmp_path / "blue").iterdir():
        f.unlink()
    (tmp_path / "blue").rmdir()
    warnings: list[str] = []
    paths, labels = labeled_images(tmp_path, ["light  green", "red", "blue"], warnings.append)
    assert sorted(labels) == [0, 0, 1, 1]
    assert len(warnings) == 1 and "blue" in warnings[0]


def test_unknown_folder_is_a_clear_error(tmp_path):
    make_color_images(tmp_path, per_class=1, by_class=True)
    (tmp_path / "purple").mkdir()
    with pytest.raises(MustError, match="purple.*match no class name"):
        labeled_images(tmp_path, CLASSES, lambda m: None)


def invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args, "--workers", "0", "--device", "cpu"])


def test_cli_on_adapted_model_writes_json(adapted_run, labeled_images, tmp_path):
    out = tmp_path / "eval.json"
    result = invoke(str(labeled_images), "--model", str(adapted_run), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "per-class recall" in result.output
    res = json.loads(out.read_text())
    assert res["images"] == 12 and res["classes"] == CLASSES and res["model"] == str(adapted_run)
    assert 0 <= res["top1"] <= 1 and set(res["per_class_recall"]) == set(CLASSES)
    assert {"mean_per_class", "confusions", "unreadable"} <= set(res)


def test_cli_zero_shot(tiny_spec, classes_file, labeled_images, tmp_path):
    out = tmp_path / "zs.json"
    result = invoke(str(labeled_images), "--zero-shot", "--model", tiny_spec, "--classes", str(classes_file),
                    "--output", str(out))
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["model"] == f"zero-shot {tiny_spec}" and res["images"] == 12


def test_cli_reports_mismatched_folders(adapted_run, tmp_path):
    make_color_images(tmp_path, per_class=1, by_class=True)
    (tmp_path / "red").rename(tmp_path / "crimson")
    result = invoke(str(tmp_path), "--model", str(adapted_run))
    assert result.exit_code == 1
    assert "crimson" in result.output and "match no class name" in result.output


def test_cli_classes_need_zero_shot(adapted_run, labeled_images, classes_file):
    result = invoke(str(labeled_images), "--model", str(adapted_run), "--classes", str(classes_file))
    assert result.exit_code == 1 and "--zero-shot" in result.output


def test_an_unlabeled_folder_says_eval_needs_class_folders_and_what_it_found(tmp_path):
    """Issue 21, item 9: `must eval ./photos` on unlabeled photos names the layout eval needs and what is there."""
    make_color_images(tmp_path, per_class=2)  # 6 loose images
    (tmp_path / "holiday").mkdir()
    make_color_images(tmp_path / "holiday", per_class=1)
    with pytest.raises(MustError) as e:
        labeled_images(tmp_path, CLASSES, lambda m: None)
    message = str(e.value)
    assert "eval needs labeled images: one sub-folder per class, named like the classes (red, green, blue)" in message
    assert "found 6 image(s) directly in it and 1 sub-folder (holiday) that names no class" in message
    assert "`must predict`" in message
    loose = tmp_path / "loose"
    make_color_images(loose, per_class=1)
    with pytest.raises(MustError, match=r"found 3 image\(s\) directly in it and no sub-folder"):
        labeled_images(loose, CLASSES, lambda m: None)


@pytest.mark.parametrize("request_type", [EvalRequest, PredictRequest])
@pytest.mark.parametrize("options, message", [
    ({"zero_shot": True}, "--zero-shot needs --classes FILE"),
    ({"templates": Path("t.txt")}, "--classes, --templates and --pretrained only apply with --zero-shot"),
    ({"pretrained": "openai"}, "--classes, --templates and --pretrained only apply with --zero-shot"),
])
def test_eval_and_predict_share_the_zero_shot_option_rules(request_type, options, message):
    with pytest.raises(MustError, match=message):
        request_type(Path("images"), **options).check_zero_shot_options()
    request_type(Path("images"), zero_shot=True, classes=Path("c.txt"), templates=Path("t.txt")).check_zero_shot_options()
