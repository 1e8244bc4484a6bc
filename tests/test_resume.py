"""Never lose a run: kill -9 and SIGTERM mid-epoch, resume, and get the uninterrupted run's model bit for bit.

Bit-exact is possible on CPU because every random choice of a sample is seeded from
(seed, epoch, index), the checkpoint holds the optimiser, EMA teacher, step and sampler
position, and all runs use one thread (same kernels, same summation order).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from must_cli.files.checkpoint import load_checkpoint
from must_cli.files.run_dir import list_checkpoints
from must_cli.cli import app

from helpers import make_tiny_clip, one_line_error

pytestmark = pytest.mark.slow  # every test builds on the module's real 36-step `must adapt` run
torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
TIMING = {"seconds", "images_per_second"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_spec, classes_file, unlabeled_images) -> dict:
    """Arguments of a 36-step run (24 images, batch 4, 6 epochs, checkpoint every 2 steps) and its uninterrupted result."""
    root = tmp_path_factory.mktemp("resume")
    (root / "templates.txt").write_text("a photo of a {}.\n")

    def args(out: Path, *extra: str) -> list[str]:
        return ["adapt", str(unlabeled_images), "--classes", str(classes_file), "--templates", str(root / "templates.txt"),
                "--model", tiny_spec, "--epochs", "6", "--batch-size", "4", "--workers", "0", "--save-every", "2",
                "--device", "cpu", "--no-guard", "--output", str(out), *extra]

    reference = root / "reference"
    r = CliRunner().invoke(app, args(reference))
    assert r.exit_code == 0, r.output
    return {"root": root, "args": args, "reference": reference}


def start_until_checkpoint(argv: list[str], out: Path) -> subprocess.Popen:
    """Start `must adapt` in a subprocess and return as soon as its first checkpoint exists."""
    proc = subprocess.Popen([sys.executable, "-m", "must_cli", *argv], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list_checkpoints(out / "checkpoints"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.002)
    return proc


def assert_same_run(run: Path, reference: Path) -> None:
    """Same shipped tensors (bit for bit), same final student/optimiser step, same metrics except timings."""
    ref, got = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    ref_ck, got_ck = (load_checkpoint(list_checkpoints(p / "checkpoints")[-1]) for p in (reference, run))
    assert got_ck["state"]["step"] == ref_ck["state"]["step"] == 36
    for k in ref_ck["student"]:
        assert torch.equal(ref_ck["student"][k], got_ck["student"][k]), k
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in TIMING}  # noqa: E731
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(run) == strip(reference)
    assert not [p for p in run.rglob("*.tmp")]


def resume(argv: list[str]) -> str:
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    return r.output


def test_kill_9_mid_epoch_then_resume_is_bit_exact(setup):
    out = setup["root"] / "killed"
    proc = start_until_checkpoint(setup["args"](out), out)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists(), "the run finished before it could be killed"
    newest = list_checkpoints(out / "checkpoints")[-1]
    output = resume(setup["args"](out, "--resume"))
    # Resumed from the newest checkpoint: at most --save-every (2) steps are redone.
    step = int(newest.stem.split("-")[1])
    assert f"resumed from {newest} at step {step}" in output
    assert_same_run(out, setup["reference"])


def test_sigterm_checkpoints_and_says_how_to_resume(setup):
    out = setup["root"] / "terminated"
    proc = start_until_checkpoint(setup["args"](out), out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err  # what a shell reports for a terminated command
    assert "Traceback" not in err and "error" not in err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"stopped by SIGTERM at step (\d+): checkpoint saved; continue with "
                     r"`must adapt --resume (.+)`", last)
    assert m and Path(m[2]) == out, last
    assert list_checkpoints(out / "checkpoints")[-1].name == f"step-{int(m[1]):08d}.pt"  # the step it finished
    assert not (out / "model.safetensors").exists()
    # Exactly the command it printed: images, classes, templates, model and settings come from RUN/config.toml.
    resume(["adapt", "--resume", str(out)])
    assert_same_run(out, setup["reference"])


def test_ctrl_c_is_not_an_error_it_says_stopped_and_exits_130(setup):
    """Issue 21, item 8: an interruption the user asked for prints `stopped` and the resume command; exit 130."""
    out = setup["root"] / "interrupted"
    proc = start_until_checkpoint(setup["args"](out), out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "error" not in err and "Traceback" not in err, err
    assert re.fullmatch(rf"stopped by SIGINT at step \d+: checkpoint saved; continue with "
                        rf"`must adapt --resume {re.escape(str(out))}`", last), last


def digest(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_resuming_a_finished_run_changes_nothing_unless_more_epochs_are_asked(setup, tmp_path):
    """Issue 21, item 5: `--resume RUN` on a finished run says so; `--epochs N` (more) continues it, and says so."""
    run = tmp_path / "finished"
    shutil.copytree(setup["reference"], run)
    model, before = run / "model.safetensors", digest(run / "model.safetensors")
    files = sorted(p.name for p in run.rglob("*"))
    for argv in (["adapt", "--resume", str(run)], [*setup["args"](run), "--resume"],
                 ["adapt", "--resume", str(run), "--epochs", "6"]):
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 0, r.output
        assert f"{run} is finished: 6 of 6 epochs, model.safetensors written" in " ".join(r.output.split()), r.output
        assert "resumed" not in r.output and digest(model) == before
        assert sorted(p.name for p in run.rglob("*")) == files
    r = CliRunner().invoke(app, ["adapt", "--resume", str(run), "--epochs", "7"])
    assert r.exit_code == 0, r.output
    assert f"{run} finished 6 epochs; continuing to 7 as --epochs asks" in " ".join(r.output.split()), r.output
    assert digest(model) != before
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    r = CliRunner().invoke(app, ["adapt", "--resume", str(run)])  # the record now says 7 epochs
    assert r.exit_code == 0 and "7 of 7 epochs" in " ".join(r.output.split()), r.output


def test_resume_run_alone_refuses_flags_that_would_change_the_run(setup, tmp_path):
    fails(["adapt", "--resume", str(setup["reference"]), "--lr", "9"], "only --workers, --device", "drop --base-lr")
    fails(["adapt", "--resume", str(tmp_path)], f"{tmp_path / 'config.toml'}: no record of this run")


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(setup):
    out = setup["root"] / "nan"
    r = CliRunner().invoke(app, setup["args"](out, "--lr", "1e6", "--save-every", "1"))  # a real divergence
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    m = re.fullmatch(r"error: the loss became NaN/inf by step (\d+): lower --lr \(or use --precision fp32\); "
                     r"last good checkpoint kept: (\S+)", last)
    assert m, r.output
    kept = load_checkpoint(Path(m[2]))
    assert kept["state"]["step"] == int(m[1]) - 1
    assert all(torch.isfinite(v).all() for v in kept["student"].values())
    assert not (out / "model.safetensors").exists() and not list(out.rglob("*.tmp"))


def fails(argv: list[str], *needles: str) -> str:
    return one_line_error(CliRunner().invoke(app, argv), *needles)


@pytest.mark.parametrize("change, needle", [
    ("classes", "in classes"), ("model", "in model"), ("batch", "global_batch (4 -> 8)"), ("lr", "base_lr (2e-05 -> 0.001)"),
])
def test_resume_with_another_config_is_refused(setup, classes_file, tmp_path, change, needle):
    stopped = tmp_path / "stopped"  # the reference run without its model: stopped after its last checkpoint
    shutil.copytree(setup["reference"], stopped)
    (stopped / "model.safetensors").unlink()
    argv = setup["args"](stopped, "--resume")
    if change == "classes":
        other = tmp_path / "classes.txt"
        other.write_text(classes_file.read_text() + "purple\n")
        argv[argv.index(str(classes_file))] = str(other)
    elif change == "model":
        argv[argv.index("--model") + 1] = f"local-dir:{make_tiny_clip(tmp_path / 'other_clip', seed=1)}"
    elif change == "batch":
        argv[argv.index("--batch-size") + 1] = "8"
    else:
        argv += ["--lr", "1e-3"]
    fails(argv, "this run differs from the checkpoint in", needle, "start a new --output")


def test_resume_needs_a_checkpoint_and_a_fresh_run_needs_a_fresh_folder(setup, tmp_path, monkeypatch):
    fails(setup["args"](tmp_path / "new", "--resume"), "no checkpoint in")
    fails(setup["args"](setup["reference"]), "already holds checkpoints", "--resume")
    monkeypatch.chdir(tmp_path)  # no runs/latest here
    argv = setup["args"](tmp_path)
    fails([*argv[: argv.index("--output")], "--resume"], "no runs/latest")
    assert sorted(os.listdir(tmp_path)) == []
