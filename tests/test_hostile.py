"""Hostile input through the real CLI: each case is a one-line warning (and the file is skipped) or a
one-line error naming the file and the fix; never a traceback, a partial model file or a write
outside the output folder. Unit-level cases live in test_images.py and test_classnames.py.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner, Result

from must_cli.files import checkpoint
from must_cli.files.checkpoint import load_checkpoint
from must_cli.method.model_file import load_model, save_model
from must_cli.files.runs import list_checkpoints
from must_cli.cli import app
from must_cli.base.errors import MustError
from must_cli.files.images import display_name
from must_cli.files.verify_data import load_both

from helpers import TINY_MODEL_CFG, bomb_png, make_color_images, make_tiny_clip, one_line_error

torch.set_num_threads(1)
NON_UTF8 = os.fsdecode(b"latin1_\xe9.png")  # a valid image under a name that is not UTF-8
BAD_NON_UTF8 = os.fsdecode(b"bad_\xff.jpg")


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def tree(root: Path) -> dict[str, int]:
    """Every file under root (links not followed) with its size: to prove nothing else was written."""
    return {os.fsencode(p.relative_to(root)).hex(): p.lstat().st_size for p in root.rglob("*")}


@pytest.fixture(scope="module")
def common(tmp_path_factory, tiny_spec) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    (root / "templates.txt").write_text("a photo of a {}.\n")
    args = ["--templates", root / "templates.txt", "--model", tiny_spec, "--epochs", 1, "--workers", 0,
            "--device", "cpu", "--no-guard"]
    return {"root": root, "args": args}


# --- a folder of real-world mess ------------------------------------------------------------------


def make_zoo(zoo: Path) -> None:
    """12 good images, 6 odd-but-valid ones, a truncated JPEG, 5 bad files and two symlink loops."""
    make_color_images(zoo, per_class=4)
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(zoo / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    Image.new("RGB", (1, 1), (0, 200, 0)).save(zoo / "one_pixel.png")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(zoo / "deep16.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(zoo / "cmyk.jpg")
    Image.new("RGB", (16, 16), (0, 0, 200)).save(zoo / "emoji_🐱.png")
    Image.new("RGB", (16, 16), (200, 0, 0)).save(zoo / NON_UTF8)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(zoo / "truncated.jpg")
    data = (zoo / "truncated.jpg").read_bytes()
    (zoo / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (zoo / "empty.jpg").write_bytes(b"")
    (zoo / "text.jpg").write_text("I am not a picture")
    bomb_png(zoo / "bomb.png")
    Image.new("RGB", (16, 16)).save(zoo / "locked.png")
    (zoo / "locked.png").chmod(0)
    (zoo / BAD_NON_UTF8).write_text("not an image either")
    (zoo / "loop").symlink_to(".")
    (zoo / "self.jpg").symlink_to("self.jpg")


BAD = {  # file -> reason in its one warning line
    "empty.jpg": "empty file", "text.jpg": "not an image", "bomb.png": "too large", "locked.png": "permission denied",
    "bad_\\xff.jpg": "not an image",
}
ODD = ["anim.gif", "one_pixel.png", "deep16.png", "cmyk.jpg", "emoji_🐱.png", "latin1_\\xe9.png"]


@pytest.fixture(scope="module")
def zoo_run(common, classes_file) -> dict:
    """One `must adapt` over the zoo; batch 19 = every usable image, so the truncated one is surely decoded."""
    root = common["root"] / "zoo_case"
    zoo = root / "zoo"
    make_zoo(zoo)
    before = tree(root)
    locked = zoo / "locked.png"
    real_open = Image.open

    def open_as_user(path, *args, **kwargs):  # root ignores chmod 000: refuse the read as the OS would for a user
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        if os.geteuid() == 0:
            mp.setattr(Image, "open", open_as_user)
        result = invoke("adapt", zoo, "--classes", classes_file, *common["args"], "--batch-size", 19,
                        "--output", root / "out")
    after = tree(root)
    return {"result": result, "out": root / "out", "new": set(after) - set(before),
            "changed": {k for k in before if after.get(k) != before[k]}}


def test_zoo_run_succeeds_and_writes_only_its_run_folder(zoo_run):
    r = zoo_run["result"]
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert "19 images, 3 classes" in r.output  # 12 good + 6 odd + truncated; loops add nothing
    out = os.fsencode("out").hex()
    assert not zoo_run["changed"]
    assert all(k.startswith(out) for k in zoo_run["new"])
    model, meta = load_model(zoo_run["out"])
    assert meta["classnames"] == ["red", "green", "blue"]
    assert not list(zoo_run["out"].rglob("*.tmp"))


@pytest.mark.parametrize("name, reason", BAD.items())
def test_bad_file_is_skipped_with_one_warning_line(zoo_run, name, reason):
    lines = [x for x in zoo_run["result"].output.splitlines() if name in x]
    assert len(lines) == 1, zoo_run["result"].output
    assert lines[0].startswith("warning: skipping ") and f"{name}: {reason}" in lines[0]


def test_truncated_jpeg_is_reported_once_when_training_meets_it(zoo_run):
    lines = [x for x in zoo_run["result"].output.splitlines() if "truncated.jpg" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: cannot decode ") and "truncated or corrupt" in lines[0]


@pytest.mark.parametrize("name", ODD)
def test_odd_but_valid_images_are_used_silently(zoo_run, name):
    """Not warned about, and really used: both models labeled it (predictions-both.json lists every image used)."""
    assert name not in zoo_run["result"].output
    both = load_both(zoo_run["out"])
    labels = {display_name(p): (z, a) for p, z, a in zip(both.paths, both.zero_shot.labels, both.adapted.labels)}
    assert name in labels and min(labels[name]) >= 0, sorted(labels)  # -1: could not be decoded


def test_folder_without_images_is_one_line_and_writes_nothing(common, classes_file, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "empty.jpg").write_bytes(b"")
    (junk / "notes.txt").write_text("not even an image extension")
    one_line_error(invoke("adapt", junk, "--classes", classes_file, *common["args"], "--output", tmp_path / "out"),
                   "no readable image in", str(junk), "supported formats")
    assert sorted(os.listdir(tmp_path)) == ["junk"]


# --- class files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("content, needles", [
    (b"cat\ndog\nCat\n", ["line 3", "'Cat' repeats line 1", "unique"]),
    (b"\n\n   \n\r\n", ["lists 0 class(es)", "at least 2"]),
    (b"cat\ndo\x00g\n", ["line 2", "NUL"]),
    (b"cat\n\xff\xfedog\n", ["line 2", "not UTF-8", "save the file as UTF-8"]),
])
def test_bad_class_files_are_one_line_errors(common, unlabeled_images, tmp_path, content, needles):
    classes = tmp_path / "classes.txt"
    classes.write_bytes(content)
    one_line_error(invoke("adapt", unlabeled_images, "--classes", classes, *common["args"], "--output", tmp_path / "out"),
                   "classes.txt", *needles)
    assert sorted(os.listdir(tmp_path)) == ["classes.txt"]


@pytest.mark.slow
def test_bom_crlf_and_path_like_names_are_plain_labels(common, unlabeled_images, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_bytes("\ufeffa/b\r\n..\r\n../up\r\n\r\n".encode("utf-8"))
    r = invoke("adapt", unlabeled_images, "--classes", classes, *common["args"], "--batch-size", 8,
               "--output", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "out")[1]["classnames"] == ["a/b", "..", "../up"]
    assert sorted(os.listdir(tmp_path)) == ["classes.txt", "out"]


@pytest.mark.slow
def test_ten_thousand_classes(common, unlabeled_images, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"class {i}\n" for i in range(10_000)))
    r = invoke("adapt", unlabeled_images, "--classes", classes, *common["args"], "--batch-size", 12,
               "--output", tmp_path / "out")
    assert r.exit_code == 0, r.output
    model, meta = load_model(tmp_path / "out")
    assert len(meta["classnames"]) == 10_000 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 10_000)


# --- model files -----------------------------------------------------------------------------------


def broken_clip(folder: Path, kind: str) -> Path:
    make_tiny_clip(folder)
    weights = folder / "open_clip_model.safetensors"
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif kind == "pickle":
        torch.save(open_clip.CLIP(**TINY_MODEL_CFG).state_dict(), weights)
    else:  # weights of a wider model under the tiny config
        wide = json.loads(json.dumps(TINY_MODEL_CFG))
        wide["vision_cfg"]["width"] = 64
        save_file({k: v.contiguous() for k, v in open_clip.CLIP(**wide).state_dict().items()}, str(weights))
    return folder


@pytest.mark.parametrize("kind", ["truncated", "pickle", "other-architecture"])
def test_bad_local_dir_model_is_one_line_error(common, classes_file, unlabeled_images, tmp_path, kind):
    folder = broken_clip(tmp_path / "clip", kind)
    args = [a if not str(a).startswith("local-dir:") else f"local-dir:{folder}" for a in common["args"]]
    one_line_error(invoke("adapt", unlabeled_images, "--classes", classes_file, *args, "--output", tmp_path / "out"),
                   f"local-dir:{folder}")
    assert list((tmp_path / "out").rglob("*")) == []  # no partial model, no checkpoint


def test_predict_refuses_a_model_file_for_another_architecture(adapted_run, unlabeled_images, tmp_path):
    src = adapted_run / "model.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    vision = json.loads(meta["vision_config"])
    vision["vision_cfg"]["width"] = 64
    path = tmp_path / "model.safetensors"
    save_file(load_file(src), str(path), metadata={**meta, "vision_config": json.dumps(vision)})
    one_line_error(invoke("predict", unlabeled_images, "--model", path, "--workers", 0, "--device", "cpu"),
                   str(path), "do not match the architecture")


# --- where the run writes ----------------------------------------------------------------------------


def test_output_under_a_regular_file_is_one_line_error(common, classes_file, unlabeled_images, tmp_path):
    (tmp_path / "somefile").write_text("I am a file")
    args = ["adapt", unlabeled_images, "--classes", classes_file, *common["args"], "--output", tmp_path / "somefile" / "sub"]
    one_line_error(invoke(*args), "cannot write to output folder", "somefile/sub", "Not a directory", "--output")
    assert isinstance(invoke("--debug", *args).exception, MustError)  # --debug: the exception, with its traceback


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(common, classes_file, unlabeled_images, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "out"
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        if obj["state"]["step"] >= 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    argv = ["adapt", unlabeled_images, "--classes", classes_file, *common["args"], "--batch-size", 4,
            "--save-every", 1, "--output", out]
    one_line_error(invoke(*argv), f"disk full while writing {out / 'checkpoints' / 'step-00000002.pt'}: "
                                  "free space and resume with --resume")
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000001.pt"]
    assert load_checkpoint(out / "checkpoints" / "step-00000001.pt")["state"]["step"] == 1
    assert sorted(os.listdir(out / "checkpoints")) == ["step-00000001.pt"]  # no temp file
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(checkpoint.torch, "save", real_save)  # space freed
    r = invoke(*argv, "--resume")
    assert r.exit_code == 0 and "resumed from" in r.output, r.output
    assert (out / "model.safetensors").exists()


# --- issue 13: what a new user broke ------------------------------------------------------------------


def edited_model(src: Path, dst: Path, meta_edit=None, tensor_edit=None) -> Path:
    """A copy of an adapted model file with its header (JSON strings) or tensors changed."""
    with safe_open(str(src / "model.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(src / "model.safetensors")
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def model_commands(path: Path, labeled: Path, tmp: Path) -> dict[str, list]:
    """The three commands that read a model file, each pointed at `path`."""
    cpu = ["--workers", 0, "--device", "cpu"]
    return {"predict": ["predict", labeled, "--model", path, *cpu], "eval": ["eval", labeled, "--model", path, *cpu],
            "export": ["export", "--model", path, "--format", "torchscript", "--output", tmp / "m.pt"]}


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-inf")])
def test_non_finite_learning_rate_is_refused_before_any_work(common, classes_file, unlabeled_images, tmp_path,
                                                             flag, value):
    """`--lr inf --no-guard` used to exit 0 with a model of NaN weights that labelled everything 'ship nan'."""
    one_line_error(invoke("adapt", unlabeled_images, "--classes", classes_file, *common["args"], flag, value,
                          "--output", tmp_path / "out"), "config value 'base_lr'", "finite")
    assert not (tmp_path / "out").exists()


def test_save_model_refuses_non_finite_weights(adapted_run, tmp_path):
    model, meta = load_model(adapted_run)
    with torch.no_grad():
        model.classifier[0, 0] = float("inf")
    keep = {k: meta[k] for k in ("vision_config", "classnames", "templates", "preprocess")}
    with pytest.raises(MustError, match=r"model\.safetensors: not written: weight 'classifier' holds NaN or infinite"):
        save_model(tmp_path / "model.safetensors", model, keep)
    assert list(tmp_path.iterdir()) == []  # no partial file either


@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_a_model_with_nan_weights_is_refused(adapted_run, labeled_images, tmp_path, command):
    def poison(tensors):
        tensors["visual.proj"][0, 0] = float("nan")

    path = edited_model(adapted_run, tmp_path / "nan" / "model.safetensors", tensor_edit=poison)
    one_line_error(invoke(*model_commands(path, labeled_images, tmp_path)[command]),
                   str(path), "weight 'visual.proj' holds NaN or infinite values")
    assert not (tmp_path / "m.pt").exists()


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


EDITS = {
    "fewer classes": (_set("classnames", json.dumps(["red", "green"])), "the classifier has 3 classes but the metadata lists 2"),
    "more classes": (_set("classnames", json.dumps(["red", "green", "blue", "grey"])), "lists 4 class names"),
    "classnames not a list": (_set("classnames", '"red green blue"'), "metadata 'classnames' is not a JSON list"),
    "preprocess not JSON": (_set("preprocess", "{image_size: 32"), "metadata 'preprocess' is not a JSON object"),
    "preprocess without std": (_set("preprocess", json.dumps({"image_size": 32, "mean": [0.5] * 3})), "'preprocess' is not"),
    "vision_config missing": (lambda meta: meta.pop("vision_config"), "metadata 'vision_config' is missing"),
    "classnames missing": (lambda meta: meta.pop("classnames"), "metadata 'classnames' is missing"),
}


@pytest.mark.parametrize("command", ["predict", "eval", "export"])
@pytest.mark.parametrize("edit", EDITS)
def test_edited_model_metadata_is_one_line_error(adapted_run, labeled_images, tmp_path, edit, command):
    """These gave IndexError/TypeError/KeyError tracebacks (or wrong labels) before the header was validated."""
    change, needle = EDITS[edit]
    path = edited_model(adapted_run, tmp_path / "edited" / "model.safetensors", meta_edit=change)
    result = invoke(*model_commands(path, labeled_images, tmp_path)[command])
    if (command, edit) == ("eval", "fewer classes"):  # eval meets the folder that matches no class name first
        one_line_error(result, "folder(s) blue match no class name")
    else:
        one_line_error(result, str(path), needle, "restore it or re-run `must adapt`")


def read_only(monkeypatch, folder: Path) -> None:
    """Refuse to create anything under `folder` as a read-only mount would (root ignores chmod)."""
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(os.fsdecode(path)).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("with_output", [False, True])
def test_export_to_a_read_only_place_is_one_line_error(adapted_run, tmp_path, monkeypatch, with_output):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes((adapted_run / "model.safetensors").read_bytes())
    dst = tmp_path / "ro" / "sub" / "model.pt" if with_output else run / "model.torchscript.pt"
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro" if with_output else run)
    args = ["export", "--model", run, "--format", "torchscript", *(["--output", dst] if with_output else [])]
    one_line_error(invoke(*args), f"cannot write {dst} (Read-only file system)")
    debug = invoke("--debug", *args)  # --debug shows our error's traceback, not an OSError from deep inside
    assert isinstance(debug.exception, MustError) and not isinstance(debug.exception, OSError)
    assert not dst.exists()


def test_sort_into_inside_the_image_folder_is_left_out_of_the_scan(adapted_run, tmp_path):
    """Each rerun used to sort its own copies again (40 -> 80 -> 160 files); then it added the 6 photos again as
    _2, _3 copies (issue 21, item 6); now a rerun leaves the folder as it was."""
    images = make_color_images(tmp_path / "photos", per_class=2)
    target = images / "sorted"
    sorted_files = []
    for _ in range(3):
        r = invoke("predict", images, "--model", adapted_run, "--sort-into", target, "--workers", 0, "--device", "cpu")
        assert r.exit_code == 0, r.output
        out = " ".join(r.output.split())
        assert "6 images in" in out and "is inside" in out and "left out of the scan" in out
        sorted_files.append(sum(1 for p in target.rglob("*") if p.is_file()))
    assert sorted_files == [6, 6, 6]  # identical copies already in place are skipped
    assert sum(1 for p in images.iterdir() if p.is_file()) == 6  # the originals are untouched


def test_sort_into_the_image_folder_itself_is_refused(adapted_run, tmp_path):
    images = make_color_images(tmp_path / "photos", per_class=2)
    before = tree(images)
    one_line_error(invoke("predict", images, "--model", adapted_run, "--sort-into", images / "." ),
                   "is the image folder itself", "pick a new folder")
    assert tree(images) == before


def test_max_pixels_flag_reaches_the_scan_of_adapt_and_predict(common, classes_file, adapted_run, tmp_path):
    """--max-pixels is the documented knob of the bomb guard: 40 x 40 photos over a 1,000-pixel limit are all skipped."""
    images = make_color_images(tmp_path / "photos", per_class=1)
    adapt = invoke("adapt", images, "--classes", classes_file, *common["args"], "--max-pixels", 1000,
                   "--output", tmp_path / "out")
    one_line_error(adapt, "no readable image in")
    assert "40 x 40 pixels, over --max-pixels 1,000" in " ".join(adapt.output.split())
    assert not (tmp_path / "out").exists()
    predict = invoke("predict", images, "--model", adapted_run, "--max-pixels", 1000, "--workers", 0, "--device", "cpu")
    one_line_error(predict, "no readable image in")
    ok = invoke("predict", images, "--model", adapted_run, "--max-pixels", 1600, "--workers", 0, "--device", "cpu")
    assert ok.exit_code == 0 and "3 images in" in ok.output, ok.output
