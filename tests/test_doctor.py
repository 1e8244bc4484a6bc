"""The torch stack's health (issue 21, item 2; issue 20, item 7): mismatches named, a failed import in one line.

The subprocess cases (a fake torchvision that raises, through `must eval` and `must --version`)
are in test_cli.py; these check the wording and the fix for the pairs the issue met.
"""

from __future__ import annotations

import importlib

import pytest

import must_cli.commands.doctor as doctor
from must_cli.cli_format import version_lines


@pytest.mark.parametrize("torch_version, vision_version, needle", [
    ("2.13.0+cpu", "0.28.0", "torch 2.13.0+cpu (+cpu) and torchvision 0.28.0 (the default build) are different builds"),
    ("2.13.0", "0.29.1", "torchvision 0.29.1 is built for torch 2.14, not torch 2.13.0"),
    ("2.14.1+cu126", "0.29.1+cpu", "are different builds"),
])
def test_a_mismatched_pair_is_named(torch_version, vision_version, needle):
    assert needle in doctor.mismatch(torch_version, vision_version)


@pytest.mark.parametrize("torch_version, vision_version", [
    ("2.14.1", "0.29.1"), ("2.13.0+cpu", "0.28.0+cpu"), ("2.0.1+cu118", "0.15.2+cu118"), (None, "0.29.1"),
])
def test_a_matching_pair_is_not(torch_version, vision_version):
    assert doctor.mismatch(torch_version, vision_version) is None


def test_the_fix_installs_the_pair_from_the_same_build_and_index():
    assert doctor.fix_command("2.13.0+cpu") == ('pip install --force-reinstall "torch==2.13.0" "torchvision==0.28.*" '
                                                "--index-url https://download.pytorch.org/whl/cpu")
    assert doctor.fix_command("2.14.1") == 'pip install --force-reinstall "torch==2.14.1" "torchvision==0.29.*"'
    assert doctor.fix_command(None) == "pip install torch torchvision"


def test_the_issue_case_is_one_line_with_versions_mismatch_and_fix(monkeypatch):
    """torch 2.13.0+cpu with PyPI's torchvision 0.28.0: `operator torchvision::nms does not exist`."""
    versions = {"torch": "2.13.0+cpu", "torchvision": "0.28.0", "open_clip_torch": "3.3.0"}
    monkeypatch.setattr(doctor, "installed", versions.get)
    real_import = importlib.import_module

    def import_module(name: str):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name)

    monkeypatch.setattr(doctor.importlib, "import_module", import_module)
    line = doctor.stack_problem()
    assert "\n" not in line
    assert line.startswith("cannot import torchvision (RuntimeError: operator torchvision::nms does not exist); "
                           "installed: torch 2.13.0+cpu, torchvision 0.28.0, open_clip_torch 3.3.0; "), line
    assert "are different builds" in line
    assert line.endswith('fix with `pip install --force-reinstall "torch==2.13.0" "torchvision==0.28.*" '
                         '--index-url https://download.pytorch.org/whl/cpu`'), line
    env = doctor.describe_environment()
    lines = version_lines(env)
    assert sum("mismatch" in x for x in lines) == 1 and lines[2].startswith("torch/torchvision mismatch: ")
    assert any(x.startswith("cannot import torchvision") for x in lines)


def test_a_healthy_stack_has_no_problem():
    assert doctor.stack_problem() is None
    env = doctor.describe_environment()
    assert env.problem is None and env.device in ("cpu", "cuda") and set(env.features) == {
        "bf16", "torch.compile", "fused AdamW"}


def test_only_real_failures_probe_the_stack(monkeypatch):
    """typer.Exit is a RuntimeError: it passes through untouched; a bug with a healthy stack keeps its traceback."""
    import typer

    import must_cli.cli_format as cli_format

    probed: list[int] = []
    monkeypatch.setattr(cli_format, "stack_problem", lambda: probed.append(1))
    exits = cli_format.one_line_errors(lambda: (_ for _ in ()).throw(typer.Exit(3)))
    with pytest.raises(typer.Exit):
        exits()
    assert probed == []
    bug = cli_format.one_line_errors(lambda: {}["missing"])
    with pytest.raises(KeyError):
        bug()
    assert probed == [1]
