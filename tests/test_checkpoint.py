"""checkpoint.py on its own: atomic writes, the model file's round trip and header checks, training checkpoints.

Fast unit tests on the tiny tower (no adapt run); what the commands make of these errors is in
test_hostile.py and test_predict.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from must_cli.files import checkpoint
from must_cli.files.atomic import atomic_write, atomic_write_text
from must_cli.files.checkpoint import load_checkpoint, save_checkpoint
from must_cli.method.model_file import load_model, MODEL_FORMAT, preprocess_of, read_metadata, save_model
from must_cli.base.errors import MustError
from must_cli.method.model import Preprocess
from must_cli.files.run_dir import list_checkpoints

from helpers import CLASSES, TINY_MODEL_CFG, tiny_model

MEAN, STD = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]


def meta() -> dict:
    return {"vision_config": {"embed_dim": TINY_MODEL_CFG["embed_dim"], "vision_cfg": TINY_MODEL_CFG["vision_cfg"],
                              "quick_gelu": False},
            "classnames": CLASSES, "templates": ["a photo of a {}."], "config": "epochs = 1\n",
            "preprocess": {"image_size": 32, "mean": MEAN, "std": STD, "interpolation": "bilinear"}}


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "run" / "model.safetensors"
    save_model(path, tiny_model(len(CLASSES)), meta())
    return path


def files_in(folder) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("failure", [ValueError("bad value"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, failure):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old\n")

    def half_then_fail(tmp):
        tmp.write_text("half of the new")
        raise failure

    with pytest.raises(type(failure)):  # not an OSError: raised as it is, not turned into a MustError
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n" and files_in(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("code, expected", [
    (errno.EDQUOT, "disk full while writing {path}: free space and resume with --resume"),
    (errno.EIO, "cannot write {path} (Input/output error): check the folder's permissions and free space"),
], ids=["quota", "io-error"])
def test_os_errors_while_writing_are_one_line_errors_naming_the_file(tmp_path, code, expected):
    path = tmp_path / "step.pt"

    def fail(tmp):
        raise OSError(code, os.strerror(code))

    with pytest.raises(MustError) as caught:
        atomic_write(path, fail, retry="resume with --resume")
    assert str(caught.value) == expected.format(path=path)
    assert files_in(tmp_path) == []


def test_a_folder_that_cannot_be_made_is_a_one_line_error(tmp_path):
    (tmp_path / "taken").write_text("a file where the folder should be")
    with pytest.raises(MustError, match=r"cannot write .*taken/out.txt \(.*\): check the folder's permissions"):
        atomic_write_text(tmp_path / "taken" / "out.txt", "x")


def test_written_files_get_the_usual_permissions_not_the_temp_files(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644  # mkstemp alone would give 0o600


# ---------------------------------------------------------------- the model file


def test_the_model_file_round_trips_weights_header_and_preprocessing(model_file):
    original = tiny_model(len(CLASSES)).eval()
    loaded, header = load_model(model_file.parent)  # a run folder names its model file
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(images), original(images), atol=1e-6)
    assert header["format"] == MODEL_FORMAT and header["classnames"] == CLASSES and header["config"] == "epochs = 1\n"
    assert preprocess_of(header) == Preprocess(32, tuple(MEAN), tuple(STD), "bilinear")
    with safe_open(str(model_file), framework="pt") as f:
        keys = set(f.keys())
    assert {"classifier", "logit_scale", "mask_token"} <= keys  # what --init-from needs beyond inference
    assert any(k.startswith("decoder.") for k in keys) and any(k.startswith("ln_patch.") for k in keys)


def rewrite(path, edit) -> None:
    """Save the model file again with its header (JSON strings) changed by ``edit``."""
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    edit(header)
    save_file(load_file(str(path)), str(path), metadata=header)


def _set(key, value):
    return lambda h: h.__setitem__(key, json.dumps(value))


BAD_HEADERS = {
    "one class": (_set("classnames", ["only"]), "metadata 'classnames' is not a JSON list of at least 2 class names"),
    "zero std": (_set("preprocess", {"image_size": 32, "mean": MEAN, "std": [0.2, 0.0, 0.2]}),
                 "metadata 'preprocess' is not a JSON object with image_size, mean[3], std[3]"),
    "two means": (_set("preprocess", {"image_size": 32, "mean": MEAN[:2], "std": STD}), "metadata 'preprocess' is not"),
    "size as text": (_set("preprocess", {"image_size": "32", "mean": MEAN, "std": STD}), "metadata 'preprocess' is not"),
    "no vision_cfg": (_set("vision_config", {"embed_dim": 32}), "metadata 'vision_config' is not a JSON object"),
    "no preprocess": (lambda h: h.pop("preprocess"), "metadata 'preprocess' is missing"),
    "other format": (lambda h: h.__setitem__("format", "other/1"), "a safetensors file but not a must-cli model"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_damaged_headers_are_one_line_errors_that_say_what_to_do(model_file, case):
    edit, fragment = BAD_HEADERS[case]
    rewrite(model_file, edit)
    with pytest.raises(MustError) as caught:
        read_metadata(model_file)
    message = str(caught.value)
    assert message.startswith(f"{model_file}: ") and fragment in message and "\n" not in message
    assert "re-run `must adapt`" in message or "pass the model.safetensors" in message


def test_a_truncated_model_file_is_not_read(model_file):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 3])
    with pytest.raises(MustError, match="not a readable must-cli model .*: the file is truncated or not a safetensors"):
        load_model(model_file)


# ---------------------------------------------------------------- training checkpoints


def payload(step: int) -> dict:
    return {"state": {"step": step}, "student": {"w": torch.full((3,), float(step))}, "rng": random.getstate()}


def test_checkpoints_round_trip_and_only_the_newest_are_kept(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".step-00000009.pt.abc.tmp").write_bytes(b"left by a kill")
    for step in range(1, 5):
        path = save_checkpoint(folder, step, payload(step), keep=2)
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000003.pt", "step-00000004.pt"]
    assert files_in(folder) == ["step-00000003.pt", "step-00000004.pt"]  # the stale temp file is gone
    back = load_checkpoint(path)
    assert back["state"] == {"step": 4} and torch.equal(back["student"]["w"], torch.full((3,), 4.0))
    assert back["rng"] == payload(4)["rng"]  # RNG states survive, so a resumed run draws the same views


def test_a_checkpoint_that_fails_to_write_keeps_the_previous_one(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 1, payload(1), keep=3)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(MustError, match=r"disk full while writing .*step-00000002.pt: free space and resume with"):
        save_checkpoint(folder, 2, payload(2), keep=3)
    assert files_in(folder) == ["step-00000001.pt"]
    assert load_checkpoint(folder / "step-00000001.pt")["state"] == {"step": 1}


def test_a_damaged_checkpoint_says_to_delete_it_and_resume_from_the_previous_one(tmp_path):
    path = save_checkpoint(tmp_path, 1, payload(1), keep=1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MustError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: cannot read this checkpoint")
    assert str(caught.value).endswith("delete it to resume from the previous one") and "\n" not in str(caught.value)
