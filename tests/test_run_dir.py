"""RunDir (issue 22): one object owns a run folder's file names, record, checkpoints, model and lock;
the report and verify read a run through it (and a stopped run's fingerprint through checkpoint.last_trained)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from must_cli.base.config import MustConfig
from must_cli.base.errors import MustError
from must_cli.commands.report.data import read_run
from must_cli.files.checkpoint import last_trained
from must_cli.files import run_dir
from must_cli.files.fingerprint import run_fingerprint
from must_cli.files.record import RunInputs, record_text
from must_cli.files.run_dir import RunDir, existing_model_file, prune_checkpoints

PACKAGE = Path(__file__).resolve().parents[1] / "must_cli"
NAMES = {name: value for name, value in vars(run_dir).items()
         if name.isupper() and isinstance(value, str) and (name.endswith(("_FILE", "_DIR")) or name == "CHECKPOINTS")}


def one_line(error: pytest.ExceptionInfo, starts: str) -> str:
    message = str(error.value)
    assert message.startswith(starts) and "\n" not in message, message
    return message


def test_every_file_of_a_run_is_named_in_run_dir_alone():
    """No other module spells a run file's name: renaming one means changing run_dir.py only."""
    names = set(NAMES.values())
    assert {"model.safetensors", "config.toml", "metrics.jsonl", "run-record.json", "predictions-both.json",
            "verify.csv", "checkpoints", ".lock"} <= names
    names -= set(MustConfig.model_fields)  # "cache" is also a setting's name, spelled where settings are
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "run_dir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert spelled == []


def test_paths_are_the_folder_and_one_name_each(tmp_path):
    run = RunDir(tmp_path / "run")
    paths = {run.model_file, run.adapted_model_file, run.config_file, run.metrics_file, run.record_file,
             run.both_file, run.verify_file, run.list_file, run.report_file, run.predictions_file, run.checkpoints,
             run.cache, run.lock_file}
    assert {p.parent for p in paths} == {tmp_path / "run"}
    assert {p.name for p in paths} == set(NAMES.values())  # every name has its property, none shared
    assert run.model_file == tmp_path / "run" / "model.safetensors"
    assert run.checkpoints == tmp_path / "run" / "checkpoints"


def test_the_record_reads_back_what_was_written(tmp_path):
    run = RunDir(tmp_path)
    assert run.record() == {}  # a run that has not ended yet
    written = {"images_used": 12, "images_skipped": 1, "device": "cpu", "status": "finished"}
    run.write_record(written)
    assert run.record() == written and json.loads(run.record_file.read_text()) == written


@pytest.mark.parametrize("text", ['{"images_used": 12,', '[1, 2]', "\udcff"])
def test_a_garbled_record_is_one_line_naming_the_file(tmp_path, text):
    run = RunDir(tmp_path)
    run.record_file.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(MustError) as e:
        run.record()
    one_line(e, f"{run.record_file}: cannot read")


def test_metrics_read_back_and_a_damaged_line_is_named(tmp_path):
    run = RunDir(tmp_path)
    assert run.metrics() == []
    run.metrics_file.write_text('{"epoch": 1, "loss": 2.5}\n\n{"epoch": 2, "loss": 1.5}\n')
    assert [m["epoch"] for m in run.metrics()] == [1, 2]
    run.metrics_file.write_text('{"epoch": 1}\n{"epoch": 2, "lo')
    with pytest.raises(MustError) as e:
        run.metrics()
    one_line(e, f"{run.metrics_file}: cannot read")


def test_the_latest_checkpoint_is_the_highest_step(tmp_path):
    run = RunDir(tmp_path)
    assert run.latest_checkpoint() is None and run.checkpoint_files() == []
    run.checkpoints.mkdir()
    for step in (9, 10, 2):
        (run.checkpoints / f"step-{step:08d}.pt").write_bytes(b"x")
    (run.checkpoints / ".step-00000011.pt.123.tmp").write_bytes(b"half")  # a kill mid-write: never a checkpoint
    assert run.latest_checkpoint() == run.checkpoints / "step-00000010.pt"
    prune_checkpoints(run.checkpoints, 2)
    assert [p.name for p in run.checkpoint_files()] == ["step-00000009.pt", "step-00000010.pt"]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-00000009.pt", "step-00000010.pt"]


def test_the_model_of_a_run_folder(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(MustError) as e:
        existing_model_file(tmp_path)
    one_line(e, f"{run.model_file}: no model file here")
    assert not run.finished
    run.model_file.write_bytes(b"x")
    assert run.finished and existing_model_file(tmp_path) == run.model_file
    assert existing_model_file(run.model_file) == run.model_file  # a model file named directly


def test_the_lock_is_held_then_removed(tmp_path):
    run = RunDir(tmp_path)
    with run.lock():
        assert run.lock_file.is_file()
        with pytest.raises(MustError) as e:
            RunDir(tmp_path).lock()
        one_line(e, f"{tmp_path} is in use by another")
    assert not run.lock_file.exists()
    run.lock().close()  # free again


def _checkpoint(run: RunDir, step: int, payload: dict) -> None:
    run.checkpoints.mkdir(exist_ok=True)
    torch.save(payload, run.checkpoints / f"step-{step:08d}.pt")


def test_a_stopped_run_is_read_from_its_newest_checkpoint(tmp_path):
    run, cfg = RunDir(tmp_path), MustConfig(epochs=3)
    fingerprint = run_fingerprint(cfg, ["cat", "dog"], ["a photo of a {}."], [Path("a.jpg")], 8, 4)
    state = {"metrics": [{"epoch": 1, "loss": 3.0}]}
    _checkpoint(run, 4, {"config": MustConfig(epochs=2).model_dump(), "state": {"metrics": []}, "fingerprint": {}})
    _checkpoint(run, 8, {"config": cfg.model_dump(), "state": state, "fingerprint": fingerprint})
    trained = last_trained(run)
    assert trained.checkpoint.name == "step-00000008.pt" and trained.config["epochs"] == 3
    assert (trained.classnames, trained.templates) == (["cat", "dog"], ["a photo of a {}."])
    assert trained.fingerprint == fingerprint and trained.metrics == state["metrics"]
    facts = read_run(tmp_path)  # the report and verify read it through RunDir
    assert (facts.root, facts.classnames, facts.metrics, facts.finished) == (tmp_path, ["cat", "dog"],
                                                                            state["metrics"], False)
    run.record_file.write_text("{")
    with pytest.raises(MustError) as e:
        read_run(tmp_path)
    one_line(e, f"{run.record_file}: cannot read")


def test_a_checkpoint_without_a_fingerprint_is_named(tmp_path):
    run = RunDir(tmp_path)
    _checkpoint(run, 1, {"config": {}, "state": {"metrics": []}, "fingerprint": {}})
    with pytest.raises(MustError) as e:
        last_trained(run)
    one_line(e, f"{run.checkpoints / 'step-00000001.pt'}: not a checkpoint of `must adapt`")


def test_the_report_takes_the_images_from_config_toml_unless_the_record_names_them(tmp_path):
    run = RunDir(tmp_path)
    _checkpoint(run, 1, {"config": MustConfig().model_dump(), "state": {"metrics": []},
                         "fingerprint": {"classes": ["a"], "templates": ["{}"]}})
    inputs = RunInputs(tmp_path / "images", tmp_path / "classes.txt", eval_dir=tmp_path / "labeled")
    run.config_file.write_text(record_text(tmp_path, MustConfig(), inputs))
    assert read_run(tmp_path).record == {"images": str(tmp_path / "images"), "eval_dir": str(tmp_path / "labeled")}
    run.write_record({"images": "/moved", "status": "finished"})
    assert read_run(tmp_path).record == {"images": "/moved", "eval_dir": str(tmp_path / "labeled"),
                                         "status": "finished"}
