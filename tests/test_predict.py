"""`must predict`: same answers as the eval path, CSV/JSONL output, safe sorting, one-line errors."""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from must_cli.files.atomic import atomic_write
from must_cli.method.model_file import load_model, preprocess_of, save_model
from must_cli.cli import app
from must_cli.files.classnames import shipped_templates
from must_cli.method.inference import predict_labels
from must_cli.files.images import scan_images
from must_cli.method.clip_loading import vision_config
from must_cli.method.model import build_must_model
from must_cli.base.errors import MustError
from must_cli.commands.predict import PredictRequest, run_predict
from must_cli.commands.sorting import Sorter, safe_folder_names

from helpers import CLASSES, make_color_images, one_line_error

DECOMPOSED = "e\u0301" * 150  # 300 code points; NFC makes it 150 two-byte characters
HOSTILE = ["../x", "/etc", "a/b", "..", ".", "CON", "con", "nul", "///", "a_b", DECOMPOSED, "_uncertain"]


def invoke(*args: str):
    return CliRunner().invoke(app, ["predict", *args, "--workers", "0", "--device", "cpu"], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory, tiny_spec) -> Path:
    """A model file whose class names try every way out of --sort-into."""
    model, pre = build_must_model(tiny_spec, None, HOSTILE, ["a photo of a {}."], torch.device("cpu"))
    meta = {
        "vision_config": vision_config(tiny_spec, model.visual), "classnames": HOSTILE,
        "templates": ["a photo of a {}."], "preprocess": pre.__dict__, "config": "",
        "source_model": {"model": tiny_spec, "pretrained": None},
    }
    path = tmp_path_factory.mktemp("hostile") / "model.safetensors"
    save_model(path, model, meta)
    return path


def test_top1_matches_eval_path_image_by_image(adapted_run, unlabeled_images):
    result = run_predict(PredictRequest(unlabeled_images, str(adapted_run), workers=0, device="cpu", batch_size=5),
                         lambda m: None)
    model, meta = load_model(adapted_run)
    paths, _ = scan_images(unlabeled_images, lambda m: None)
    expected = predict_labels(model, paths, preprocess_of(meta), torch.device("cpu"))
    assert [p.path for p in result.predictions] == [p.relative_to(unlabeled_images).as_posix() for p in paths]
    assert [p.labels[0] for p in result.predictions] == [meta["classnames"][i] for i in expected.tolist()]
    assert result.images_per_second > 0


def test_csv_has_header_relative_paths_and_sorted_topk(adapted_run, tmp_path):
    images = make_color_images(tmp_path / "imgs", per_class=2, by_class=True)
    out = tmp_path / "preds.csv"
    result = invoke(str(images), "--model", str(adapted_run / "model.safetensors"), "--top-k", "2", "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0] == ["path", "label_1", "probability_1", "label_2", "probability_2"]
    assert sorted(r[0] for r in rows[1:]) == sorted(f"{c}/{c}_{i:03d}.jpg" for c in CLASSES for i in range(2))
    for r in rows[1:]:
        probs = [float(r[2]), float(r[4])]
        assert {r[1], r[3]} <= set(CLASSES) and r[1] != r[3]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
    assert not list(tmp_path.glob(".preds.csv.*"))  # no temp file left behind


def test_jsonl_clamps_top_k_to_the_class_count(adapted_run, unlabeled_images, tmp_path):
    out = tmp_path / "preds.jsonl"
    result = invoke(str(unlabeled_images), "--model", str(adapted_run), "--top-k", "9", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "lowered to 3" in result.output and "images/s" in result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24
    for r in rows:
        assert sorted(r["labels"]) == sorted(CLASSES)
        assert r["probabilities"] == sorted(r["probabilities"], reverse=True)
        assert sum(r["probabilities"]) == pytest.approx(1, abs=1e-5)


def test_small_sets_print_a_table_of_every_prediction(adapted_run, unlabeled_images):
    result = invoke(str(unlabeled_images), "--model", str(adapted_run))
    assert result.exit_code == 0, result.output
    expected = run_predict(PredictRequest(unlabeled_images, str(adapted_run), workers=0, device="cpu"), lambda m: None)
    rows = [line for line in result.stdout.splitlines() if ".jpg" in line]
    assert len(rows) == len(expected.predictions) == 24
    for row, p in zip(rows, expected.predictions):  # same order, same label and probability as the library's rows
        cells = [c.strip() for c in row.strip("│┃ ").split("│")]
        assert cells == [p.path, f"{p.labels[0]} {p.probabilities[0]:.3f}"], row


def test_bad_output_extension_fails_before_any_work(tmp_path, adapted_run, unlabeled_images):
    line = one_line_error(invoke(str(unlabeled_images), "--model", str(adapted_run), "--output", str(tmp_path / "p.txt")))
    assert "'.txt'" in line and ".csv or .jsonl" in line
    assert not (tmp_path / "p.txt").exists()


def test_undecodable_file_is_warned_once_and_left_out(adapted_run, tmp_path):
    images = make_color_images(tmp_path / "imgs", per_class=1)
    data = (images / "red_000.jpg").read_bytes()
    (images / "broken.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels truncated
    out = tmp_path / "p.jsonl"
    result = invoke(str(images), "--model", str(adapted_run), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.count("broken.jpg") == 1 and "1 unreadable skipped" in result.output
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == ["blue_000.jpg", "green_000.jpg", "red_000.jpg"]


def test_safe_folder_names_are_deterministic():
    expected = {
        "../x": "_x", "/etc": "_etc", "a/b": "a_b", "..": "class_3", ".": "class_4", "CON": "CON_",
        "con": "con__2", "nul": "nul_", "///": "class_8", "a_b": "a_b_2", DECOMPOSED: "\u00e9" * 50,
        "_uncertain": "_uncertain_2",
    }
    assert safe_folder_names(HOSTILE) == expected
    assert safe_folder_names(list(reversed(HOSTILE)))["a/b"] == "a_b_2"  # clashes resolve in class order
    assert safe_folder_names(["x" * 300, "x" * 301]) == {"x" * 300: "x" * 100, "x" * 301: "x" * 98 + "_2"}
    assert safe_folder_names(["CON.txt", "tab\there", "what?"]) == {"CON.txt": "CON_.txt", "tab\there": "tab_here",
                                                                    "what?": "what_"}


def test_sort_into_stays_inside_dir_and_reports_mapping(hostile_model, unlabeled_images, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    target = parent / "sorted"
    result = invoke(str(unlabeled_images), "--model", str(hostile_model), "--sort-into", str(target))
    assert result.exit_code == 0, result.output
    assert os.listdir(parent) == ["sorted"] and os.listdir(tmp_path) == ["parent"]
    root = target.resolve()
    files = [Path(d) / f for d, _, fs in os.walk(target) for f in fs]
    assert len(files) == 24
    for f in files:
        assert f.resolve().is_relative_to(root) and f.parent.parent.resolve() == root
    assert {f.parent.name for f in files} <= set(safe_folder_names(HOSTILE).values())
    assert "class '../x' -> folder '_x'" in result.output and "class 'con' -> folder 'con__2'" in result.output


def test_min_confidence_and_same_names_go_to_uncertain_without_overwrite(adapted_run, tmp_path):
    images = tmp_path / "imgs"
    for sub in ("one", "two"):
        make_color_images(images / sub, per_class=1)
    target = tmp_path / "sorted"
    result = invoke(str(images), "--model", str(adapted_run), "--sort-into", str(target), "--min-confidence", "0.99")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(target)) == ["_uncertain"]
    assert sorted(os.listdir(target / "_uncertain")) == sorted(
        f"{c}_000{s}.jpg" for c in CLASSES for s in ("", "_2"))
    assert (target / "_uncertain" / "red_000.jpg").read_bytes() == (images / "one" / "red_000.jpg").read_bytes()
    assert (target / "_uncertain" / "red_000_2.jpg").read_bytes() == (images / "two" / "red_000.jpg").read_bytes()
    state = lambda: {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in target.rglob("*.jpg")}  # noqa: E731
    before = state()
    again = invoke(str(images), "--model", str(adapted_run), "--sort-into", str(target), "--min-confidence", "0.99")
    assert again.exit_code == 0, again.output  # issue 21, item 6: a rerun leaves the folder as it was
    assert state() == before
    assert "6 already there (identical copies), skipped" in " ".join(again.output.split()), again.output
    (images / "two" / "red_000.jpg").write_bytes((images / "two" / "blue_000.jpg").read_bytes())  # same name, new image
    third = invoke(str(images), "--model", str(adapted_run), "--sort-into", str(target), "--min-confidence", "0.99")
    assert third.exit_code == 0 and "5 already there" in " ".join(third.output.split()), third.output
    assert (target / "_uncertain" / "red_000_3.jpg").read_bytes() == (images / "two" / "blue_000.jpg").read_bytes()
    assert len(os.listdir(target / "_uncertain")) == 7  # only the changed file was added, with a new suffix


def test_links_instead_of_copies(adapted_run, unlabeled_images, tmp_path):
    for mode in ("sym", "hard"):
        target = tmp_path / mode
        result = invoke(str(unlabeled_images), "--model", str(adapted_run), "--sort-into", str(target), "--link", mode)
        assert result.exit_code == 0, result.output
        files = [Path(d) / f for d, _, fs in os.walk(target) for f in fs]
        assert len(files) == 24
        for f in files:
            source = unlabeled_images / f.name
            if mode == "sym":
                assert f.is_symlink() and f.resolve() == source.resolve()
            else:
                assert not f.is_symlink() and f.stat().st_ino == source.stat().st_ino
        again = invoke(str(unlabeled_images), "--model", str(adapted_run), "--sort-into", str(target), "--link", mode)
        assert again.exit_code == 0 and "24 already there" in " ".join(again.output.split()), again.output
        assert len([f for _, _, fs in os.walk(target) for f in fs]) == 24


def test_zero_shot_with_local_spec_labels_like_plain_clip(tiny_spec, classes_file, unlabeled_images, tmp_path):
    out = tmp_path / "zs.jsonl"
    result = invoke(str(unlabeled_images), "--zero-shot", "--model", tiny_spec, "--classes", str(classes_file),
                    "--output", str(out))
    assert result.exit_code == 0, result.output
    clip, pre = build_must_model(tiny_spec, None, CLASSES, shipped_templates("imagenet"), torch.device("cpu"))
    paths, _ = scan_images(unlabeled_images, lambda m: None)
    expected = [CLASSES[i] for i in predict_labels(clip, paths, pre, torch.device("cpu")).tolist()]
    assert [json.loads(line)["labels"][0] for line in out.read_text().splitlines()] == expected
    assert "24 images" in result.output


def test_zero_shot_options_need_zero_shot(adapted_run, classes_file, unlabeled_images):
    line = one_line_error(invoke(str(unlabeled_images), "--model", str(adapted_run), "--classes", str(classes_file)))
    assert "--zero-shot" in line


@pytest.mark.parametrize("kind, reason", [
    ("missing", "no model file here"), ("truncated", "not a readable must-cli model"),
    ("pickle", "not a readable must-cli model"), ("foreign", "not a must-cli model"),
])
def test_bad_model_files_give_one_line(kind, reason, adapted_run, unlabeled_images, tmp_path):
    path = tmp_path / "model.safetensors"
    if kind == "truncated":
        data = (adapted_run / "model.safetensors").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"classifier": torch.zeros(2)}))
    elif kind == "foreign":
        save_file({"w": torch.zeros(2)}, str(path))
    one_line_error(invoke(str(unlabeled_images), "--model", str(path)), f"error: {path}: ", reason)


def test_a_failed_sort_names_the_sorted_file_not_the_output(adapted_run, unlabeled_images, tmp_path, monkeypatch):
    def full_disk(self, src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Sorter, "_transfer", full_disk)
    out, target = tmp_path / "p.csv", tmp_path / "sorted"
    line = one_line_error(invoke(str(unlabeled_images), "--model", str(adapted_run), "--output", str(out),
                                 "--sort-into", str(target)), "--sort-into: cannot copy", "No space left")
    assert str(target) in line and str(out) not in line
    assert not out.exists()  # the predictions file is not half-written either


def test_write_errors_outside_training_do_not_mention_resume(tmp_path):
    def fill(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MustError) as caught:
        atomic_write(tmp_path / "p.csv", fill)
    assert str(caught.value) == f"disk full while writing {tmp_path / 'p.csv'}: free space and run the command again"
