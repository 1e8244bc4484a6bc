"""report.html: builds for finished, labeled and stopped runs; self-contained, parseable, and its numbers are right."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from must_cli.cli import app
from must_cli.commands.evaluate import EvalRequest, run_eval
from must_cli.commands.report.build import build_report
from must_cli.commands.report.data import read_run
from must_cli.files.run_dir import BOTH_FILE, RECORD_FILE, RunDir
from must_cli.files.verify_data import load_both
from must_cli.commands.verify.log import append_answer

SECTIONS = ("Summary", "Training curves", "Pseudo-labels", "Zero-shot vs adapted", "Example images",
            "Accuracy on the labeled folder", "Did adaptation help?")


class Page(HTMLParser):
    """Collects what the checks need; fails on tags closed out of order."""

    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self.urls += [v for k, v in attrs.items() if k in ("href", "src") and v and not v.startswith("data:")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"</{tag}> closes {self.stack[-1:]}"


def check_page(path: Path) -> tuple[str, Page]:
    """Parse, decode every image, and find nothing that would reach the network."""
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    assert page.stack == [], page.stack
    assert not page.urls and not {"script", "link", "iframe"} & page.tags
    assert not re.search(r"(https?:)?//[a-z0-9]", re.sub(r'src="data:[^"]*"', "", text), re.I)
    assert page.images
    for src in page.images:
        kind, data = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src).groups()
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            assert im.format == kind.upper() and min(im.size) > 8
    return text, page


def sections(text: str) -> list[str]:
    """The sections in page order; their numbers must run 1, 2, 3... with no gap."""
    found = re.findall(r"<h2>(\d+)\. ([^<]+)</h2>", text)
    assert [int(n) for n, _ in found] == list(range(1, len(found) + 1)), found
    return [s for _, title in found for s in SECTIONS if title.startswith(s)]


def measured(text: str, model: str) -> str:
    """A model's top-1 in the labeled-folder table."""
    return re.search(rf"<tr><td>{re.escape(model)}</td><td class=\"num\">([^<%]+)%</td>", text).group(1)


@pytest.fixture()
def run_copy(adapted_run, tmp_path) -> Path:
    return Path(shutil.copytree(adapted_run, tmp_path / "run"))


def test_report_of_a_finished_run_with_a_labeled_folder(run_copy, unlabeled_images, labeled_images):
    out = build_report(run_copy, images=unlabeled_images, eval_dir=labeled_images, device="cpu")
    assert out == run_copy / "report.html"
    text, page = check_page(out)
    assert sections(text) == list(SECTIONS)
    # The measured accuracies match `must eval` of the same models on the same folder.
    adapted = run_eval(EvalRequest(labeled_images, str(run_copy), device="cpu", workers=0), lambda m: None)
    assert measured(text, "adapted") == f"{100 * adapted['top1']:.1f}"
    n_images = len(list(unlabeled_images.iterdir()))
    assert f"of the {n_images:,} images both models labeled changed label" in text
    assert f"on the {n_images:,} images both models labeled;" in text  # one sample count in every section
    changed = load_both(run_copy).changed()
    assert "probably" not in text
    assert ("Not verified: no labels yet" if changed else "No label changed") in text
    thumbs = [s for s in page.images if s.startswith("data:image/jpeg")]
    assert 0 < len(thumbs) <= 3 * 6 + 24


def test_report_without_images_says_what_is_missing(run_copy):
    (run_copy / RECORD_FILE).unlink()  # a run made before runs recorded their inputs
    (run_copy / "config.toml").unlink()
    text, _ = check_page(build_report(run_copy, device="cpu"))
    assert sections(text) == list(SECTIONS[:2])
    assert "must report RUN --images DIR" in text


def test_must_report_uses_the_run_record_and_prints_the_path(run_copy, unlabeled_images):
    (run_copy / RECORD_FILE).write_text(f'{{"images": "{unlabeled_images}", "status": "finished", "device": "cpu"}}')
    r = CliRunner().invoke(app, ["report", str(run_copy), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith(str(run_copy / "report.html"))
    text, _ = check_page(run_copy / "report.html")
    assert "5. Example images" in text and "6. Accuracy" not in text


def test_must_report_on_a_folder_that_is_not_a_run(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "is not a run folder" in lines[0] and "Traceback" not in r.output


def test_report_of_a_stopped_run_uses_its_newest_checkpoint(run_copy, unlabeled_images):
    (run_copy / "model.safetensors").unlink()
    (run_copy / "metrics.jsonl").unlink()  # killed inside the first epoch: only the checkpoint knows anything
    (run_copy / RECORD_FILE).unlink()
    text, _ = check_page(build_report(run_copy, images=unlabeled_images, device="cpu"))
    assert "stopped before the end" in text
    assert re.search(r"the EMA teacher of step-\d+\.pt", text)
    assert "6. Did adaptation help?" in text


def test_tensorboard_log_writes_every_scalar(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from must_cli.training.tensorboard_log import TensorBoardLog

    log = TensorBoardLog(tmp_path / "tb")
    log.write({"epoch": 1, "step": 3, "loss": 2.5, "kept": 0.4, "eval": {"teacher": {"top1": 0.75}}})
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/loss", "train/kept", "train/step", "eval/teacher_top1"} <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/teacher_top1")[0].value == pytest.approx(0.75)


def test_tensorboard_missing_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    from must_cli.base.errors import MustError
    from must_cli.training.tensorboard_log import TensorBoardLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(MustError, match=r"tensorboard is not installed: pip install tensorboard"):
        TensorBoardLog(tmp_path / "tb")


@pytest.mark.slow
def test_sections_stay_compact_for_1000_classes(tmp_path):
    """Many classes: per-class figures switch form, matrices keep to the top classes, tables to the top rows.

    Cost is checked as a ratio, not a wall-clock bound: 1,000 classes may cost at most 10x what 20 cost
    (the matrices' cap; measured about 1x); a figure or table per class or pair would cost far more."""
    import time

    import numpy as np

    from must_cli.commands.report.html import render
    from must_cli.commands.report.sections import Changes, accuracy, flips, pseudo_labels
    from must_cli.commands.report.data import Labeled, Preds, ReportData, RunFacts

    n = 2000
    rng = np.random.default_rng(0)

    def preds(labels: np.ndarray) -> Preds:
        return Preds(labels, rng.uniform(0.2, 1.0, n).astype(np.float32))

    def sections(k: int) -> tuple[str, float]:
        zs = rng.integers(0, k, n)
        ad = np.where(rng.uniform(size=n) < 0.3, rng.integers(0, k, n), zs)
        run = RunFacts(RunDir(tmp_path), [], {"threshold": 0.7}, [f"class {i}" for i in range(k)], [], {})
        d = ReportData(run, "test", tmp_path, [tmp_path / f"{i}.jpg" for i in range(n)], n, preds(zs), preds(ad))
        d.labeled = Labeled(tmp_path, zs, preds(zs), preds(ad))
        start = time.perf_counter()
        ch = Changes.of(d)
        parts = (pseudo_labels(d, ch), flips(d, ch), accuracy(d))
        html = "".join(render(i, part) for i, part in enumerate(parts, start=3))
        return html, time.perf_counter() - start

    sections(20)  # matplotlib's first figure pays for fonts and caches
    few = sections(20)[1]
    html, many = sections(1000)
    assert many < 10 * few, (many, few)
    assert html.count("<tr>") <= 3 * 13 + 3  # top-N tables, not one row per class or pair
    assert len(html) < 2_000_000
    assert "the 20 classes most involved in changes" in html


def test_adapt_writes_the_report_and_its_record(adapted_run, unlabeled_images):
    record = json.loads((adapted_run / RECORD_FILE).read_text())
    assert record["status"] == "finished" and record["images_used"] == 24 and record["images_skipped"] == 0
    assert read_run(adapted_run).record["images"] == str(unlabeled_images.resolve())  # from config.toml
    text, _ = check_page(adapted_run / "report.html")
    assert sections(text) == [s for s in SECTIONS if not s.startswith("Accuracy")]
    assert (adapted_run / BOTH_FILE).is_file()  # both models' labels, saved for verify and the report


def test_adapt_with_eval_dir_and_tensorboard(tmp_path, tiny_spec, classes_file, unlabeled_images, labeled_images):
    pytest.importorskip("tensorboard")
    out, tb = tmp_path / "run", tmp_path / "tb"
    r = CliRunner().invoke(app, [
        "adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec, "--epochs", "2",
        "--batch-size", "8", "--workers", "0", "--output", str(out), "--no-guard", "--device", "cpu",
        "--eval-dir", str(labeled_images), "--tensorboard", str(tb)])
    assert r.exit_code == 0, r.output
    text, _ = check_page(out / "report.html")
    assert sections(text) == list(SECTIONS)
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]["eval"]["teacher"]
    assert measured(text, "adapted") == f"{100 * final['top1']:.1f}"  # same model, same folder
    assert list(tb.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_still_writes_its_report(tmp_path, tiny_spec, classes_file, unlabeled_images):
    out = tmp_path / "run"
    argv = ["adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec, "--epochs", "6",
            "--batch-size", "4", "--workers", "0", "--save-every", "2", "--device", "cpu", "--no-guard",
            "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "must_cli", *argv], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    while not list(out.glob("checkpoints/step-*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err  # not an error: 143
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / RECORD_FILE).read_text())["status"].startswith("ended early: stopped by SIGTERM")
    text, _ = check_page(out / "report.html")
    assert "ended early: stopped by SIGTERM" in text and "6. Did adaptation help?" in text


def test_report_reuses_the_saved_labels_and_shows_the_verified_gain(run_copy, unlabeled_images):
    """The report reads predictions-both.json (no second prediction) and, once verify.csv exists, the gain."""
    doc = json.loads((run_copy / BOTH_FILE).read_text())
    n = len(doc["paths"])
    doc["zero_shot"]["labels"] = [0] * n
    doc["adapted"]["labels"] = [1] * 10 + [0] * (n - 10)  # 10 changed labels, known only from the file
    (run_copy / BOTH_FILE).write_text(json.dumps(doc))
    both = load_both(run_copy)
    for i, outcome in zip(both.changed(), ["adapted"] * 6 + ["zero-shot", "neither", "skip"]):
        append_answer(run_copy, both.paths[i], outcome)
    text, _ = check_page(build_report(run_copy, images=unlabeled_images, device="cpu"))
    assert f"{100 * 10 / n:.1f}% (10 of {n})" in text
    # 8 labels of 10 changed: gain = 10/n x (6 - 1)/8, exactly as verify_stats computes it
    assert f"<td>verified gain (points)</td><td>{100 * 10 / n * 5 / 8:+.1f} (90% interval" in text
    assert "8 of 10 changed images (1 skipped)" in text


def test_a_damaged_verify_file_is_a_warning_with_its_line_number(run_copy, unlabeled_images):
    both = load_both(run_copy)
    (run_copy / "verify.csv").write_text("image,answer,class,time\nx.jpg,maybe,,\n")
    warnings: list[str] = []
    text, _ = check_page(build_report(run_copy, images=unlabeled_images, device="cpu", warn=warnings.append))
    assert any("verify.csv:2: damaged line" in w for w in warnings), warnings
    assert "verified gain" not in text and both is not None


def test_an_older_run_without_saved_labels_gets_them_predicted_once(run_copy, unlabeled_images):
    saved = load_both(run_copy)
    (run_copy / BOTH_FILE).unlink()  # a run made before adapt saved both models' labels
    text, _ = check_page(build_report(run_copy, images=unlabeled_images, device="cpu"))
    again = load_both(run_copy)
    assert again is not None and again.paths == saved.paths
    assert again.zero_shot.labels == saved.zero_shot.labels and again.adapted.labels == saved.adapted.labels
    assert "Did adaptation help?" in text


@pytest.mark.slow
def test_adapt_ends_with_the_report_and_how_to_verify(tmp_path, tiny_spec, classes_file, unlabeled_images):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, [
        "adapt", str(unlabeled_images), "--classes", str(classes_file), "--model", tiny_spec, "--epochs", "1",
        "--batch-size", "8", "--workers", "0", "--output", str(out), "--lr", "3e-2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    tail = " ".join(r.output.split())
    assert f"report: {out / 'report.html'}" in tail
    both = load_both(out)
    changed = len(both.changed())
    assert (f"run `must verify {out}` and answer about" in tail if changed else "no label changed" in tail), tail
