"""`must init`: the files it writes are valid as written and feed straight into `must adapt`."""

from __future__ import annotations


from typer.testing import CliRunner

from helpers import make_color_images
from must_cli.files.classnames import read_class_file
from must_cli.cli import app
from must_cli.base.config import MustConfig, resolve_config
from must_cli.commands.scaffold import suggest_preset

runner = CliRunner()


def test_init_writes_valid_files(tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    config, classes = tmp_path / "proj" / "must.toml", tmp_path / "proj" / "classes.txt"
    assert resolve_config(config_file=config) == MustConfig()
    text = config.read_text()
    assert "must adapt IMAGES --classes classes.txt --config must.toml" in text
    assert "# pseudo-label confidence threshold" in text  # descriptions travel as comments
    assert len(read_class_file(classes)) >= 2


def test_init_refuses_to_overwrite_without_force(tmp_path):
    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    (tmp_path / "classes.txt").write_text("mine\nyours\n")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert "must.toml already exists" in result.output and "--force" in result.output
    assert (tmp_path / "classes.txt").read_text() == "mine\nyours\n"
    result = runner.invoke(app, ["init", str(tmp_path), "--force"])
    assert result.exit_code == 0, result.output
    assert read_class_file(tmp_path / "classes.txt") != ["mine", "yours"]


def test_init_surveys_images_and_suggests_a_preset(tmp_path):
    images = make_color_images(tmp_path / "imgs", per_class=4, size=80)
    (images / "broken.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["init", str(tmp_path / "proj"), "--images", str(images)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "readable │ 12" in out and "skipped │ 1" in out and "jpg 12" in out and "80 x 80" in out
    assert "suggested preset: small-dataset" in out and "broken.png" in out
    assert resolve_config(config_file=tmp_path / "proj" / "must.toml") == resolve_config(preset="small-dataset")


def test_suggestion_thresholds():
    assert [suggest_preset(n)[0] for n in (1, 4_999, 5_000, 49_999, 50_000)] == [
        "small-dataset", "small-dataset", "medium-dataset", "medium-dataset", "large-dataset"]
    assert [suggest_preset(100_000, size)[0] for size in ((32, 32), (64, 500), (65, 65), (224, 224))] == [
        "tiny-images", "tiny-images", "large-dataset", "large-dataset"]


def test_init_suggests_tiny_images_for_32_px_photos(tmp_path):
    """docs/presets.md: tiny-images is the preset for low-resolution (<= 64 px) input, e.g. CIFAR's 32-px photos."""
    images = make_color_images(tmp_path / "imgs", per_class=4, size=32)
    result = runner.invoke(app, ["init", str(tmp_path / "proj"), "--images", str(images)])
    assert result.exit_code == 0, result.output
    assert "suggested preset: tiny-images (median image 32 x 32" in " ".join(result.output.split())
    assert resolve_config(config_file=tmp_path / "proj" / "must.toml") == resolve_config(preset="tiny-images")


def test_init_output_drives_adapt(tmp_path, tiny_spec, unlabeled_images):
    """must.toml from init (model ViT-B-16) plus a --model flag runs end to end on the tiny CLIP."""
    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    classes = tmp_path / "classes.txt"
    classes.write_text(classes.read_text().replace("cat\ndog\n", "red\ngreen\nblue\n"))
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "adapt", str(unlabeled_images), "--classes", str(classes), "--config", str(tmp_path / "must.toml"),
        "--model", tiny_spec, "--epochs", "1", "--batch-size", "8", "--workers", "0", "--output", str(out),
    ])
    assert result.exit_code == 0, result.output
    saved = resolve_config(config_file=out / "config.toml")
    assert saved == MustConfig(model=tiny_spec, epochs=1, batch_size=8, workers=0)
    assert (out / "model.safetensors").is_file()


def test_init_for_32_px_photos_says_what_to_change_about_the_model(tmp_path):
    """Issue 21, item 14: tiny-images values suit a low-resolution model; must.toml says so next to the model line."""
    images = make_color_images(tmp_path / "imgs", per_class=4, size=32)
    assert runner.invoke(app, ["init", str(tmp_path / "proj"), "--images", str(images)]).exit_code == 0
    text = (tmp_path / "proj" / "must.toml").read_text()
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    head = text[: text.index('model = "ViT-B-16"')]
    note = " ".join(line.lstrip("# ") for line in head.splitlines() if line.startswith("#"))
    assert "median 32 x 32 px" in note and "ViT-B-16 takes 224-px input" in note, note
    assert "set model to a CLIP whose input is 64 px or less" in note, note
    assert "small-dataset" in note, note  # the preset for these photos if the 224-px model stays


def test_init_for_large_photos_says_why_the_model_fits(tmp_path):
    images = make_color_images(tmp_path / "imgs", per_class=4, size=300)
    assert runner.invoke(app, ["init", str(tmp_path / "proj"), "--images", str(images)]).exit_code == 0
    text = (tmp_path / "proj" / "must.toml").read_text()
    assert "ViT-B-16 takes 224-px input: your photos (median 300 x 300 px) are resized to it" in " ".join(
        line.lstrip("# ") for line in text.splitlines() if line.startswith("#")), text
    assert text.endswith("\n")


def test_a_config_without_survey_ends_with_a_newline(tmp_path):
    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "must.toml").read_text().endswith("\n")


def test_init_says_the_next_command_as_one_command_to_copy(tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    proj = tmp_path / "proj"
    assert (f"then run `must adapt IMAGES --classes {proj / 'classes.txt'} --config {proj / 'must.toml'}`"
            in result.output), result.output
