"""Shared fixtures: a tiny random open_clip CLIP in local-dir: format, tiny image folders, an adapted model.

Plain helper functions live in helpers.py; test modules import from there, never from each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import CLASSES, make_color_images, make_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_clip) -> str:
    return f"local-dir:{tiny_clip}"


@pytest.fixture(scope="session")
def classes_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "classes.txt"
    path.write_text("# colours\n" + "\n".join(CLASSES) + "\n")
    return path


@pytest.fixture(scope="session")
def unlabeled_images(tmp_path_factory) -> Path:
    return make_color_images(tmp_path_factory.mktemp("unlabeled"))


@pytest.fixture(scope="session")
def labeled_images(tmp_path_factory) -> Path:
    return make_color_images(tmp_path_factory.mktemp("labeled"), per_class=4, seed=1, by_class=True)


@pytest.fixture(scope="session")
def adapted_run(tmp_path_factory, tiny_spec, classes_file, unlabeled_images) -> Path:
    """One real `must adapt` run (2 epochs, CPU) shared by the tests that need an adapted model."""
    from typer.testing import CliRunner

    from must_cli.cli import app

    out = tmp_path_factory.mktemp("run") / "run"
    result = CliRunner().invoke(app, [
        "adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec,
        "--epochs", "2", "--batch-size", "8", "--workers", "0", "--output", str(out), "--lr", "1e-3",
        "--no-guard",
    ])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder, so nothing (a default runs/ included) lands in the checkout."""
    monkeypatch.chdir(tmp_path)
