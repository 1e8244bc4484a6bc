"""What the terminal shows (issue 13, items 11 to 13): progress at 80 columns and in logs, the
summary on stdout, --help and --version, and failing fast without loading torch or waiting on
a network that is not there."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from must_cli.cli import app
from must_cli.cli_options import flags_into
from must_cli.base.progress import Reporter

STATS = {"loss": 1.2345, "kept": 0.5, "balance": 0.9876, "agree": 0.75, "loss_mim": 0.1234, "loss_align": 0.4567,
         "lr": 1.5e-05}
COMMANDS = ["adapt", "eval", "predict", "export", "init"]


def test_log_output_is_one_plain_line_every_few_steps(monkeypatch):
    """Without a terminal: a line per N steps (a tenth of the epoch) or per 10 s, whichever is rarer (issue 21, item 15)."""
    import must_cli.base.progress as progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    reporter = Reporter(Console(file=out, force_terminal=False, width=80))
    reporter.start_epoch(0, 3, 100)
    for step in range(1, 101):
        now[0] += 0.5  # 2 steps a second: 10 s is the rarer of the two
        reporter.update(step, STATS)
    reporter.end_epoch()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5, lines  # steps 20, 40, 60, 80, 100: 10 s apart, though 10 steps come every 5 s
    assert re.fullmatch(r"epoch 1/3 step 20/100 0:00:10 eta 0:00:40 loss 1\.234 kept 0\.500 bal 0\.988 "
                        r"agree 0\.750 mim 0\.123 align 0\.457 lr 1\.5e-05", lines[0]), lines[0]
    out.truncate(0), out.seek(0)
    reporter.start_epoch(1, 3, 100)
    for step in range(1, 101):
        now[0] += 60  # slow steps: one line per 10 steps, not one per step
        reporter.update(step, STATS)
    assert len(out.getvalue().splitlines()) == 10


def test_terminal_messages_wrap_at_words_and_never_split_a_command():
    """At 80 columns a long warning breaks between words, and a command to copy stays on one line (item 11)."""
    out = io.StringIO()
    reporter = Reporter(Console(file=out, force_terminal=True, width=80, color_system=None))
    reporter.warn("cannot decode photos/holiday/2019/IMG_0001.jpg (Truncated File Read): another image was used in "
                  "its place; replace or remove it")
    reporter.info("stopped by SIGINT at step 12: checkpoint saved; continue with "
                  "`must adapt --resume runs/20261207-120000-with-a-long-name`")
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    words = " ".join(lines).split()
    assert "(Truncated" in words and "File" in words and "Read):" in words, lines
    assert any("`must adapt --resume runs/20261207-120000-with-a-long-name`" in line for line in lines), lines
    plain = io.StringIO()
    Reporter(Console(file=plain, force_terminal=False, width=80)).warn("x " * 60)
    assert len(plain.getvalue().splitlines()) == 1  # logs keep one line per message


@pytest.mark.parametrize("command", [*COMMANDS, "report", "verify"])
def test_help_text_has_no_empty_defaults_odd_metavars_or_mixed_case(command):
    """Issue 21, item 12: no `[default: ]`, no `[[DIRECTORY]]`, no `<str>`; every option's help starts upper-case."""
    import typer.main

    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"}).output
    assert "[default: ]" not in text and "[[" not in text and "<str>" not in text and "<int>" not in text, text
    cmd = typer.main.get_command(app).commands[command]
    # typer's own option class (not click.Option in every typer release): select by its kind
    options = [p for p in cmd.params if p.param_type_name == "option" and p.help]
    assert len(options) >= 2, [p.opts for p in cmd.params]  # the check below must have options to check
    for param in options:
        assert param.help[0].isupper(), f"{command} {param.opts[0]}: {param.help!r}"


def test_terminal_bar_fits_80_columns_with_metrics_on_their_own_line():
    out = io.StringIO()
    reporter = Reporter(Console(file=out, force_terminal=True, width=80, color_system=None))
    reporter.start_epoch(4, 30, 1234, done=0)
    reporter.update(617, STATS)
    reporter.end_epoch()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines)
    assert any("epoch 5/30" in line and "617/1234" in line and "eta" in line for line in lines), lines
    assert any(line.startswith("loss 1.234 kept 0.500") and line.endswith("lr 1.5e-05") for line in lines)


def test_summary_goes_to_stdout_without_empty_accuracy_columns(adapted_run, tmp_path, tiny_spec, classes_file,
                                                               unlabeled_images):
    r = CliRunner().invoke(app, ["adapt", str(unlabeled_images), "--classes", str(classes_file), "--model",
                                 tiny_spec, "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-guard",
                                 "--output", str(tmp_path / "run")], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "model written to" in r.stdout and "model written to" not in r.stderr
    assert "epoch 1: loss" in r.stderr  # progress (plain, not a terminal) stays on stderr
    table = [line for line in r.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert "top-1" not in "".join(table) and all(len(line) <= 80 for line in table)
    assert [c.strip() for c in table[1].strip("┃").split("┃")] == ["epoch", "loss", "kept", "balance", "agree"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_describes_every_option_and_names_arguments(command):
    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "{" not in lines[0] and "<" not in lines[0]  # "must eval [OPTIONS] IMAGES", not "{images}"
    options = lines[lines.index("Options:") + 1:]
    for i, line in enumerate(options):  # an option line with no text is followed by its indented help
        if line.startswith("  -") and len(line.split("  ")) < 3 and not line.rstrip().endswith("."):
            assert options[i + 1].startswith(" " * 10), f"{command}: {line.strip()} has no description"


def test_adapt_help_shows_defaults_and_the_learning_rate_unit():
    text = " ".join(CliRunner().invoke(app, ["adapt", "--help"], env={"COLUMNS": "80"}).output.split())
    assert "adapt [OPTIONS] [IMAGES]" in text
    for flag, default in (("--epochs", "30"), ("--batch-size", "64"), ("--seed", "0"), ("--keep-checkpoints", "1")):
        assert re.search(re.escape(flag) + r" N .*?\[default: " + default + r"\]", text), flag
    assert "--base-lr, --lr LR Learning rate per 256 images" in text
    assert "--grad-checkpointing / --no-grad-checkpointing" in text and "Trade compute for memory" in text


def test_version_names_the_stack_the_device_and_the_cache():
    """Issue 21 item 2 / issue 20 item 7: what a bug report needs, from `must --version`."""
    from must_cli import __version__

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"must-cli {__version__}"
    text = "\n".join(lines)
    for needle in ("torch 2.", "torchvision 0.", "open_clip_torch ", "CUDA ", "GPU: none seen", "device: cpu",
                   "bf16:", "torch.compile:", "fused AdamW:", "weights cache:"):
        assert needle in text, (needle, text)
    assert "mismatch" not in text


def fake_packages(tmp_path, **modules: str) -> dict[str, str]:
    """An environment whose PYTHONPATH puts modules (name -> source) ahead of the real ones."""
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    for name, source in modules.items():
        (fake / f"{name}.py").write_text(source)
    return {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
@pytest.mark.parametrize("module, error", [
    ("torchvision", "RuntimeError('operator torchvision::nms does not exist')"),
    ("torch", "ImportError('libtorch_cpu.so: cannot open shared object file')"),
    ("open_clip", "ImportError('cannot import name x from timm')"),
])
def test_a_broken_torch_stack_is_one_line_with_versions_and_the_fix(tmp_path, adapted_run, labeled_images, module,
                                                                    error):
    """The issue's `operator torchvision::nms does not exist` (a torch/torchvision mismatch), simulated."""
    env = fake_packages(tmp_path, **{module: f"raise {error}\n"})
    proc = run_must(["eval", str(labeled_images), "--model", str(adapted_run), "--workers", "0"], tmp_path, **env)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"error: cannot import {module}") and error.split("(")[1][1:20] in err, err
    assert "torch 2." in err and "torchvision 0." in err and "open_clip_torch " in err, err  # versions from metadata
    assert "pip install --force-reinstall" in err, err
    version = run_must(["--version"], tmp_path, **env)
    assert version.returncode == 0 and f"cannot import {module}" in version.stdout, version.stdout


def run_must(args: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "must_cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **env}, cwd=tmp_path)


@pytest.mark.slow
def test_bad_arguments_fail_before_torch_is_imported(tmp_path, classes_file, unlabeled_images):
    """A `torch` that cannot be imported proves the checks run first."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('torch was imported before the arguments were checked')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    cases = [
        (["adapt", str(tmp_path / "missing"), "--classes", str(classes_file)], "IMAGES", "does not exist"),
        (["adapt", str(unlabeled_images), "--classes", str(tmp_path / "nope.txt")], "nope.txt"),
        (["adapt", str(unlabeled_images)], "missing --classes"),
        (["adapt", str(unlabeled_images), "--classes", str(classes_file), "--epochs", "0"], "epochs"),
        (["adapt", "--resume", str(tmp_path)], "no record of this run"),
        (["predict", str(tmp_path / "missing")], "missing", "is not a folder"),
        (["predict", str(unlabeled_images), "--model", str(tmp_path / "gone")], "gone", "no model file"),
        (["eval", str(unlabeled_images)], "latest", "no model file"),
        (["export", "--format", "onnx", "--model", str(tmp_path)], "model.safetensors", "no model file"),
    ]
    for args, *needles in cases:
        proc = run_must(args, tmp_path, **env)
        err = proc.stderr.strip()
        assert proc.returncode == 1 and err.startswith("error:") and "\n" not in err, err
        assert all(n in err for n in needles), err
    assert os.listdir(tmp_path) == ["fake"]


@pytest.mark.slow
def test_no_network_is_one_line_error_from_the_real_command(tmp_path, classes_file, unlabeled_images):
    """An unreachable hub (no HF_HUB_OFFLINE set), end to end; how it is detected is counted in the next test."""
    env = {"HF_ENDPOINT": "http://10.255.255.1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    proc = run_must(["adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", "ViT-B-16",
                     "--pretrained", "openai"], tmp_path, **env)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "\n" not in err and "cannot download weights for ViT-B-16" in err, err
    assert "runs" not in os.listdir(tmp_path)


def test_no_network_is_found_with_one_short_connection_attempt_and_no_download(monkeypatch):
    """Instead of the minute of retries a download makes offline: one connection attempt, HUB_TIMEOUT_S at most."""
    import open_clip
    from huggingface_hub import constants

    from must_cli.method import clip_loading
    from must_cli.base.errors import MustError

    attempts = []

    def unreachable(address, timeout):
        attempts.append((address, timeout))
        raise OSError("network is unreachable")

    def no_download(*args, **kwargs):
        raise AssertionError("open_clip was asked to download")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://10.255.255.1")
    monkeypatch.setattr(clip_loading, "_weights_cached", lambda name, tag: False)
    monkeypatch.setattr(clip_loading.socket, "create_connection", unreachable)
    monkeypatch.setattr(open_clip, "create_model", no_download)
    with pytest.raises(MustError, match=r"^cannot download weights for ViT-B-16 \(openai\): no network"):
        clip_loading.load_clip("ViT-B-16", "openai")
    assert attempts == [(("10.255.255.1", 80), clip_loading.HUB_TIMEOUT_S)] and clip_loading.HUB_TIMEOUT_S <= 5


class DemoFlags:
    """Two flags declared as a class, the way cli_options declares `must adapt`'s."""

    folder: Annotated[Optional[Path], typer.Option("--folder")]
    count: Annotated[int, typer.Option("--count")]


@dataclasses.dataclass
class DemoOptions:
    folder: Optional[Path] = None
    count: int = 3


def test_flags_declared_as_a_class_reach_the_command_as_one_typed_object():
    """flags_into: Typer parses the class's flags; the command gets them converted, with the
    dataclass's defaults, and a flag without a field (or a field without a flag) is refused."""
    got = []
    demo = typer.Typer()

    @demo.command()
    @flags_into(DemoFlags, DemoOptions)
    def command(ctx: typer.Context, opts: DemoOptions) -> None:
        got.append(opts)

    result = CliRunner().invoke(demo, ["--folder", "images"])
    assert result.exit_code == 0, result.output
    assert got == [DemoOptions(folder=Path("images"), count=3)]

    class MoreFlags(DemoFlags):
        extra: Annotated[int, typer.Option("--extra")]

    with pytest.raises(TypeError, match="extra"):
        flags_into(MoreFlags, DemoOptions)
