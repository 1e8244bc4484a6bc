"""The run folder (issue 13, items 1, 5, 9, 10): one run per folder under an OS lock, unique names,
no silent overwrite, nothing written before the model loads, a record written at the start, and
checkpoints pruned when the run finishes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from must_cli.cli import app
from must_cli.files.runs import RunFolder, RunPlan, list_checkpoints

from helpers import one_line_error

FAST = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-guard"]


def adapt(images, classes, spec, *extra):
    return CliRunner().invoke(app, ["adapt", str(images), "--classes", str(classes), "--model", spec,
                                    *FAST, *map(str, extra)])


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, tiny_spec, classes_file, unlabeled_images):
    out = tmp_path / "run"
    with RunFolder(RunPlan(out, None)):  # another `must adapt` holds the folder
        one_line_error(adapt(unlabeled_images, classes_file, tiny_spec, "--output", out),
                       f"{out} is in use by another `must adapt` run")
    assert not (out / "model.safetensors").exists()
    assert adapt(unlabeled_images, classes_file, tiny_spec, "--output", out).exit_code == 0  # lock released


def test_the_lock_dies_with_its_process(tmp_path):
    """kill -9 leaves no stale lock: the kernel drops a flock when its holder dies."""
    out = tmp_path / "run"
    code = ("import sys, time; from pathlib import Path; from must_cli.files.runs import RunFolder, RunPlan; "
            "RunFolder(RunPlan(Path(sys.argv[1]), None)); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match="in use by another"):
        RunFolder(RunPlan(out, None))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    RunFolder(RunPlan(out, None)).close()


def test_timestamped_names_are_unique(tmp_path):
    plan = RunPlan(tmp_path / "runs" / "20261126-140000", None, named_here=True)
    first, second = RunFolder(plan), RunFolder(plan)
    assert (first.path.name, second.path.name) == ("20261126-140000", "20261126-140000-2")
    first.close(), second.close()


def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path, adapted_run, tiny_spec, classes_file,
                                                             unlabeled_images):
    out = tmp_path / "finished"
    shutil.copytree(adapted_run, out)
    shutil.rmtree(out / "checkpoints")
    before = (out / "model.safetensors").read_bytes()
    one_line_error(adapt(unlabeled_images, classes_file, tiny_spec, "--output", out),
                   f"{out} holds a finished run (model.safetensors)", "--overwrite")
    assert (out / "model.safetensors").read_bytes() == before
    r = adapt(unlabeled_images, classes_file, tiny_spec, "--output", out, "--overwrite", "--seed", 1)
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").read_bytes() != before


def test_nothing_is_written_when_the_model_fails_to_load(tmp_path, classes_file, unlabeled_images, monkeypatch):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    one_line_error(adapt(unlabeled_images, classes_file, f"local-dir:{empty}"), "open_clip_config.json")
    one_line_error(adapt(unlabeled_images, classes_file, f"local-dir:{empty}", "--output", tmp_path / "out"),
                   "open_clip_config.json")
    assert os.listdir(work) == [] and not (tmp_path / "out").exists()


def test_config_toml_is_written_at_the_start_and_records_the_inputs(tmp_path, tiny_clip, classes_file,
                                                                    unlabeled_images, monkeypatch):
    monkeypatch.chdir(tiny_clip.parent)  # a relative local-dir: path, recorded as absolute
    out = tmp_path / "run"
    r = adapt(unlabeled_images, classes_file, f"local-dir:{tiny_clip.name}", "--output", out, "--lr", "1e6",
              "--preset", "tiny-images")
    assert r.exit_code == 1 and "NaN" in r.output  # the run died, yet it documents itself
    record = tomllib.loads((out / "config.toml").read_text())
    assert record["model"] == f"local-dir:{tiny_clip}" and record["base_lr"] == 1e6 and record["epochs"] == 1
    meta = record["meta"]
    assert meta["images"] == str(unlabeled_images) and meta["classes"] == str(classes_file)
    assert meta["preset"] == "tiny-images" and meta["command"].startswith("must adapt ")
    assert f"local-dir:{tiny_clip.name}" in meta["command"] and "--lr 1e6 --preset tiny-images" in meta["command"]


def test_a_finished_run_keeps_one_checkpoint_unless_asked(adapted_run, tmp_path, tiny_spec, classes_file,
                                                          unlabeled_images):
    assert [p.name for p in list_checkpoints(adapted_run / "checkpoints")] == ["step-00000006.pt"]
    out = tmp_path / "keep"
    r = adapt(unlabeled_images, classes_file, tiny_spec, "--output", out, "--batch-size", 4, "--save-every", 1,
              "--keep-checkpoints", 3)
    assert r.exit_code == 0, r.output
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"step-0000000{i}.pt" for i in (4, 5, 6)]


def test_a_finished_run_leaves_no_lock_file(tmp_path, tiny_spec, classes_file, unlabeled_images):
    """Issue 21, item 7: the 0-byte .lock goes when the run ends; so does one of a run refused under the lock."""
    out = tmp_path / "run"
    assert adapt(unlabeled_images, classes_file, tiny_spec, "--output", out).exit_code == 0
    assert not (out / ".lock").exists() and (out / "model.safetensors").exists()
    one_line_error(adapt(unlabeled_images, classes_file, tiny_spec, "--output", out), "already holds")
    assert not (out / ".lock").exists()


def test_a_lock_unlinked_while_waiting_for_it_is_taken_again(tmp_path, monkeypatch):
    """The run that ends unlinks .lock while holding it; one that opened the old file meanwhile must not trust it.

    Simulated: between our open and our flock, the holder finishes (unlinks and releases), so the flock
    succeeds on a file no longer in the folder. The lock taken must be the one on the file now in place.
    """
    import must_cli.files.run_dir as run_dir

    out = tmp_path / "run"
    out.mkdir()
    real_flock, calls = run_dir.fcntl.flock, []

    def flock(fd, op):
        if not calls and op & run_dir.fcntl.LOCK_EX:
            (out / ".lock").unlink()  # the holder's close, in the gap
        calls.append(op)
        return real_flock(fd, op)

    monkeypatch.setattr(run_dir.fcntl, "flock", flock)
    folder = RunFolder(RunPlan(out, None))
    assert len([op for op in calls if op & run_dir.fcntl.LOCK_EX]) == 2  # the first lock was dropped and retaken
    assert os.fstat(folder._fd).st_ino == os.stat(out / ".lock").st_ino
    monkeypatch.setattr(run_dir.fcntl, "flock", real_flock)
    with pytest.raises(Exception, match="in use by another"):
        RunFolder(RunPlan(out, None))
    folder.close()
    assert not (out / ".lock").exists()
