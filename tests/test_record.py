"""record.py on its own: RUN/config.toml written at the start and read back by `must adapt --resume RUN`.

Fast unit tests (no torch, no adapt run); the end-to-end record of a real run is in test_run_folder.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from must_cli.base.config import MustConfig, resolve_config
from must_cli.base.errors import MustError
from must_cli.files.record import (RESUME_MAY_CHANGE, AdaptOptions, RunInputs, absolute_model, check_inputs, inputs_from_flags,
                              read_record, record_text, recorded_run)
from must_cli.files.run_dir import CONFIG_FILE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with images/, classes.txt and templates.txt, as the current folder (inputs given relatively)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_record(folder, cfg: MustConfig, inputs: RunInputs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(record_text(folder, cfg, inputs))
    return folder


def test_the_record_reads_back_as_absolute_inputs_and_the_same_hyperparameters(project, tmp_path):
    cfg = MustConfig(base_lr=3e-4, epochs=3, threshold=0.55, template_set="dtd", compile=False, randaugment="")
    inputs = RunInputs(project / "images", project / "classes.txt", project / "templates.txt", preset="tiny-images",
                       command="must adapt images --classes classes.txt --lr 3e-4")
    relative = RunInputs(*(p.relative_to(project) for p in (inputs.images, inputs.classes, inputs.templates)),
                         preset=inputs.preset, command=inputs.command)
    run = write_record(tmp_path / "run", cfg, relative)
    assert read_record(run) == inputs  # paths made absolute, unset ones stay None, the command as typed
    assert resolve_config(config_file=run / CONFIG_FILE) == cfg  # --resume continues with the same values
    meta = tomllib.loads((run / CONFIG_FILE).read_text())["meta"]
    assert set(meta) == {"images", "classes", "templates", "preset", "command", "must_cli_version", "started"}


def test_a_command_with_quotes_and_backslashes_survives_the_record(project, tmp_path):
    command = 'must adapt "my photos" --classes C:\\data\\classes.txt --templates "a \\"quoted\\" {}"'
    run = write_record(tmp_path / "run", MustConfig(), RunInputs(project / "images", project / "classes.txt",
                                                                 command=command))
    back = read_record(run)
    assert back.command == command and back.templates is None and back.eval_dir is None and back.preset is None


def test_a_missing_record_says_how_to_resume_without_it(tmp_path):
    with pytest.raises(MustError) as caught:
        read_record(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / CONFIG_FILE}: no record of this run: pass IMAGES and --classes")
    assert "--resume" in message and "\n" not in message


@pytest.mark.parametrize("text", [
    'epochs = 1\n[meta]\nclasses = "/c.txt"\n',  # no images
    "epochs = 1\n",  # no [meta] at all
    "epochs = = 1\n",  # not TOML
], ids=["no-images", "no-meta", "not-toml"])
def test_a_damaged_record_is_a_one_line_error(tmp_path, text):
    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(MustError) as caught:
        read_record(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / CONFIG_FILE}: cannot read the run's record (") and "\n" not in message


def test_resume_from_the_record_refuses_flags_that_would_change_the_run(project, tmp_path):
    run = write_record(tmp_path / "run", MustConfig(), RunInputs(project / "images", project / "classes.txt"))
    folder, inputs = recorded_run(run, None, {"base_lr": None, "threshold": None})
    assert folder == run and inputs.images == project / "images"
    with pytest.raises(MustError) as caught:
        recorded_run(run, None, {"base_lr": 1e-3, "eval_dir": project / "images", "threshold": None})
    allowed = ", ".join("--" + flag for flag in RESUME_MAY_CHANGE)
    assert str(caught.value).endswith(f"only {allowed} may be given; drop --base-lr, --eval-dir")



def test_adapt_options_reach_the_config_and_the_record_by_name(project):
    opts = AdaptOptions(images=Path("images"), classes=Path("classes.txt"), base_lr=1e-3, epochs=3, mim=False,
                        output=project / "out", tensorboard=project / "tb")
    inputs, cfg, output = inputs_from_flags(opts, ["images", "--classes", "classes.txt"])
    assert (cfg.base_lr, cfg.epochs, cfg.mim) == (1e-3, 3, False)
    assert cfg.seed == MustConfig().seed  # a flag not given keeps the default
    assert output == project / "out" and inputs.images == Path("images")
    assert inputs.command == "must adapt images --classes classes.txt"


def test_resume_without_images_keeps_the_record_and_refuses_other_flags(project, tmp_path):
    run = write_record(tmp_path / "run", MustConfig(epochs=2), RunInputs(project / "images", project / "classes.txt"))
    inputs, cfg, folder = inputs_from_flags(AdaptOptions(resume=str(run), epochs=5, workers=0), [])
    assert folder == run and (cfg.epochs, cfg.workers) == (5, 0) and inputs.classes == project / "classes.txt"
    with pytest.raises(MustError, match="drop --init-from, --tensorboard$"):
        inputs_from_flags(AdaptOptions(resume=str(run), tensorboard=tmp_path, init_from=run), [])

@pytest.mark.parametrize("images, classes, templates, eval_dir, fragment", [
    ("nowhere", "classes.txt", None, None, "IMAGES {p}/nowhere does not exist: pass a folder of images"),
    ("photo.jpg", "classes.txt", None, None, "IMAGES {p}/photo.jpg is not a folder"),
    ("images", "classes.txt", None, "gone", "--eval-dir {p}/gone does not exist"),
    ("images", "templates.txt", None, None, "templates.txt lists 1 class(es): list at least 2 classes"),
    ("images", "classes.txt", "classes.txt", None, "classes.txt line 1: 'cat' must contain '{{}}' exactly once"),
], ids=["no-images", "images-a-file", "no-eval-dir", "one-class", "template-without-slot"])
def test_check_inputs_names_the_input_and_what_is_wrong(project, images, classes, templates, eval_dir, fragment):
    (project / "photo.jpg").write_bytes(b"x")
    optional = lambda name: project / name if name else None  # noqa: E731
    with pytest.raises(MustError) as caught:
        check_inputs(RunInputs(project / images, project / classes, optional(templates), optional(eval_dir)))
    assert fragment.format(p=project) in str(caught.value)


def test_check_inputs_accepts_a_complete_run(project):
    check_inputs(RunInputs(project / "images", project / "classes.txt", project / "templates.txt", project / "images"))


def test_local_dir_models_are_recorded_with_absolute_paths_and_others_as_given(project):
    assert absolute_model("local-dir:models/clip") == f"local-dir:{project / 'models' / 'clip'}"
    assert absolute_model("ViT-B-16") == "ViT-B-16" and absolute_model("hf-hub:org/name") == "hf-hub:org/name"
