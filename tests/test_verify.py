"""`must verify`: the page's server (token, traversal, POST only), answers that survive a kill, the run lock,
--labels / --list / --json, and --choose that ships zero-shot while keeping the adapted model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from must_cli.cli import app
from must_cli.base.errors import MustError
from must_cli.files.run_dir import ADAPTED_MODEL_FILE, BOTH_FILE, VERIFY_FILE, FolderLock
from must_cli.commands.verify.command import VerifyRequest, run_verify
from must_cli.files.verify_data import load_both
from must_cli.commands.verify.server import VerifyServer
from must_cli.commands.verify.session import Session

from helpers import CHANGED, CLASSES, one_line_error, truth_of, with_changed_labels

@pytest.fixture()
def verify_run(adapted_run, unlabeled_images, tmp_path) -> Path:
    """A finished run whose saved labels are set so that 12 images changed: 6 now right, 3 were right, 3 neither."""
    return with_changed_labels(adapted_run, unlabeled_images, tmp_path)


def get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null") if e.code == 409 else None


@pytest.fixture()
def server(verify_run):
    import threading

    both = load_both(verify_run)
    srv = VerifyServer(Session(verify_run, both, CLASSES))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = srv.url.split("/?")[0]
    yield srv, base, f"?token={srv.token}"
    srv.shutdown()
    srv.server_close()


def test_every_request_without_the_token_is_refused(server):
    srv, base, token = server
    assert srv.server_address[0] == "127.0.0.1"
    for path in ("/", "/state", "/classes", "/image/0"):
        assert get(base + path)[0] == 403
        assert get(base + path + "?token=wrong")[0] == 403
    assert get(base + "/" + token, host="evil.example:80")[0] == 403  # DNS rebinding: another host name
    assert post(base + "/answer", {"index": 0, "choice": "left"})[0] == 403
    status, page = get(base + "/" + token)
    assert status == 200 and b"Which label is right?" in page and srv.token.encode() in page
    assert not (srv.session.run / VERIFY_FILE).exists()


def test_images_are_served_by_index_into_the_changed_set_only(server):
    srv, base, token = server
    changed = srv.session.order
    status, png = get(f"{base}/image/{changed[0]}{token}")
    assert status == 200 and png.startswith(b"\x89PNG")
    unchanged = next(i for i in range(24) if i not in changed)
    for path in (f"/image/{unchanged}", "/image/999", "/image/-1", "/image/../../../etc/passwd",
                 "/image/%2e%2e%2fconfig.toml", "/image/..%2F..%2Fmodel.safetensors", "/../config.toml",
                 "/image/0x1", "/image/1.0"):
        assert get(base + path + token)[0] == 404, path


def test_only_post_changes_state_and_a_stale_answer_is_refused(server):
    srv, base, token = server
    state = json.loads(get(base + "/state" + token)[1])
    assert get(base + "/answer" + token)[0] == 404  # a GET never answers
    assert state["position"] == 1 and state["changed"] == CHANGED and state["question"]["left"] in CLASSES
    status, after = post(base + "/answer" + token, {"index": state["question"]["index"], "choice": "left"})
    assert status == 200 and after["position"] == 2
    status, again = post(base + "/answer" + token, {"index": state["question"]["index"], "choice": "left"})
    assert status == 409 and again["position"] == 2  # the same image is never answered twice
    assert len((srv.session.run / VERIFY_FILE).read_text().splitlines()) == 2  # header + one answer
    status, undone = post(base + "/undo" + token, {})
    assert undone["position"] == 1 and undone["question"]["index"] == state["question"]["index"]
    assert (srv.session.run / VERIFY_FILE).read_text().splitlines()[-1].split(",")[1] == "undo"


def test_answers_give_the_blind_outcome_and_the_exact_gain_when_all_are_labeled(verify_run):
    both = load_both(verify_run)
    session = Session(verify_run, both, CLASSES)
    seen = []
    while session.question is not None:
        q = session.question
        seen.append(q.index)
        true = truth_of(both.paths[q.index])
        choice = "left" if q.left == true else "right" if q.right == true else "neither"
        assert session.answer(q.index, choice)
    assert sorted(seen) == sorted(both.changed()) and len(seen) == CHANGED
    est = session.estimate()
    assert (est.tally.adapted, est.tally.zero_shot, est.tally.neither) == (6, 3, 3)
    assert est.gain == pytest.approx((6 - 3) / 24) and est.low == est.high == pytest.approx(3 / 24)


def test_a_rerun_continues_and_never_asks_twice(verify_run):
    both = load_both(verify_run)
    first = Session(verify_run, both, CLASSES)
    asked = []
    for _ in range(5):
        asked.append(first.question.index)
        first.answer(first.question.index, "skip")
    second = Session(verify_run, both, CLASSES)
    assert second.state()["position"] == 6
    while second.question is not None:
        assert second.question.index not in asked
        asked.append(second.question.index)
        second.answer(second.question.index, "left")
    assert sorted(asked) == sorted(both.changed())


def test_a_damaged_line_is_reported_with_its_number(verify_run):
    (verify_run / VERIFY_FILE).write_text("image,answer,class,time\nred_000.jpg,adapted,red,t\nred_001.jpg,perhaps\n")
    with pytest.raises(MustError, match=r"verify.csv:3: damaged line 'red_001.jpg,perhaps'"):
        run_verify(VerifyRequest(verify_run, list_count=1))


def test_a_missing_image_is_skipped_with_a_note(verify_run):
    both = load_both(verify_run)
    session = Session(verify_run, both, CLASSES)
    gone = session.question.index
    session.both.path(gone).unlink()
    again = Session(verify_run, both, CLASSES)
    assert again.question.index != gone and again.state()["missing"] == [both.paths[gone]]


def test_the_lock_refuses_a_second_verify(verify_run):
    with FolderLock(verify_run):
        with pytest.raises(MustError, match="in use by another `must verify`"):
            run_verify(VerifyRequest(verify_run, list_count=3))


def test_labels_file_unknown_class_and_unknown_image_are_one_line_errors(verify_run, tmp_path):
    bad_class, bad_image = tmp_path / "a.csv", tmp_path / "b.csv"
    bad_class.write_text("image,class\nred_000.jpg,red\nred_001.jpg,purple\n")
    bad_image.write_text("image,class\nnope.jpg,red\n")
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--labels", str(bad_class)])
    one_line_error(r, "a.csv:3: class 'purple' is not one of the run's 3 classes")
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--labels", str(bad_image)])
    one_line_error(r, "b.csv:2: image 'nope.jpg' not found")


def test_labels_file_gives_the_summary_json_and_offers_zero_shot_when_verified_worse(verify_run, tmp_path):
    both = load_both(verify_run)
    labels = tmp_path / "labels.csv"
    rows = ["image,class"] + [f"{both.path(i)},{CLASSES[both.zero_shot.labels[i]]}" for i in both.changed()]
    rows.append(f"{both.paths[20]},{CLASSES[truth_of(both.paths[20])]}")  # unchanged: cannot move the gain
    labels.write_text("\n".join(rows) + "\n")  # zero-shot was right on every changed image: adaptation hurt
    out = tmp_path / "summary.json"
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--labels", str(labels), "--json", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    assert s["gain"] == pytest.approx(-100 * CHANGED / 24, abs=1e-3) and s["interval"][1] == s["gain"]
    assert (s["labels_used"], s["skipped"], s["changed"], s["share_changed"]) == (CHANGED, 0, CHANGED, 50.0)
    assert "LOST accuracy" in r.output and f"--choose zero-shot --labels {labels}" in r.output
    assert "1 labeled image(s) kept their label" in r.output


def test_list_writes_the_next_images_to_label(verify_run):
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--list", "5"])
    assert r.exit_code == 0, r.output
    rows = (verify_run / "to-label.csv").read_text().splitlines()
    both = load_both(verify_run)
    assert rows[0] == "image,class" and len(rows) == 6
    assert {Path(row[:-1]).name for row in rows[1:]} <= {both.paths[i] for i in both.changed()}
    # filled in elsewhere (paths as written: absolute), the list goes back in with --labels
    filled = [rows[0]] + [f"{row[:-1]},{CLASSES[truth_of(row[:-1])]}" for row in rows[1:]]
    (verify_run / "to-label.csv").write_text("\n".join(filled) + "\n")
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--labels", str(verify_run / "to-label.csv")])
    assert r.exit_code == 0 and "5 answered, 0 skipped" in r.output, r.output
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--list", "100"])  # at most the unanswered ones
    assert len((verify_run / "to-label.csv").read_text().splitlines()) == 1 + CHANGED


def test_choose_zero_shot_keeps_the_adapted_model_and_predict_uses_the_choice(verify_run, tmp_path):
    from safetensors.torch import load_file

    from must_cli.method.model_file import load_model, read_metadata

    adapted, before = load_model(verify_run / "model.safetensors")[0], load_file(verify_run / "model.safetensors")
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--choose", "zero-shot"])
    assert r.exit_code == 0, r.output
    meta = read_metadata(verify_run / "model.safetensors")
    assert meta["chosen"] == "zero-shot (must verify)" and meta["verified_gain"]["labels"] == 0
    kept = load_file(verify_run / ADAPTED_MODEL_FILE)  # every tensor, warm-start ones included, unchanged
    assert kept.keys() == before.keys() and all((kept[k] == before[k]).all() for k in kept)
    shipped = load_model(verify_run)[0]  # what predict and export load
    assert not (shipped.visual.conv1.weight == adapted.visual.conv1.weight).all() or \
        not (shipped.classifier == adapted.classifier).all()
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--choose", "adapted"])
    assert r.exit_code == 0, r.output
    back = load_model(verify_run)[0]
    assert (back.classifier == adapted.classifier).all() and not (verify_run / ADAPTED_MODEL_FILE).exists()
    assert read_metadata(verify_run / "model.safetensors")["chosen"] == "ema-teacher (must verify)"


def start_verify(run: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "must_cli", "verify", str(run), "--no-browser"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while True:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, proc.communicate()
        if "verify page: " in line:
            return proc, line.split("verify page: ")[1].strip()
        assert time.monotonic() < deadline


@pytest.mark.slow
def test_resume_after_a_kill_and_a_second_verify_refused(verify_run):
    proc, url = start_verify(verify_run)
    try:
        base, token = url.split("/?")
        r = CliRunner().invoke(app, ["verify", str(verify_run), "--no-browser"])  # while the first one runs
        one_line_error(r, "is in use by another `must verify`")
        for _ in range(3):
            state = json.loads(get(f"{base}/state?{token}")[1])
            assert post(f"{base}/answer?{token}", {"index": state["question"]["index"], "choice": "right"})[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc, url = start_verify(verify_run)
    try:
        base, token = url.split("/?")
        assert json.loads(get(f"{base}/state?{token}")[1])["position"] == 4
        assert len((verify_run / VERIFY_FILE).read_text().splitlines()) == 1 + 3
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean end with the summary
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "3 answered, 0 skipped" in out and "Traceback" not in err


def test_a_run_whose_labels_did_not_change_has_nothing_to_verify(adapted_run, tmp_path):
    run = Path(shutil.copytree(adapted_run, tmp_path / "same"))
    doc = json.loads((run / BOTH_FILE).read_text())
    doc["adapted"] = doc["zero_shot"]
    (run / BOTH_FILE).write_text(json.dumps(doc))
    r = CliRunner().invoke(app, ["verify", str(run), "--no-browser"])  # returns at once: no page to open
    assert r.exit_code == 0, r.output
    assert "0 of 24 images changed label" in r.output and "the gain is exactly 0" in r.output


def test_choose_zero_shot_refuses_a_warm_started_run(verify_run):
    config = verify_run / "config.toml"
    text = config.read_text()
    assert "\ncommand = " in text
    config.write_text(text.replace("\ncommand = \"must adapt ", "\ncommand = \"must adapt --init-from runs/old "))
    r = CliRunner().invoke(app, ["verify", str(verify_run), "--choose", "zero-shot"])
    one_line_error(r, "was warm-started (--init-from)")
    assert not (verify_run / ADAPTED_MODEL_FILE).exists()
