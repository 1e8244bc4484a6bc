"""benchmarks/common.py: image folders built once, `must eval` run once, results that say where they came from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common


def test_subset_is_balanced_and_flat_names_hide_the_class(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "src" / c / f"{i:04d}.jpg").write_bytes(b"x")
    files = common.balanced_subset(tmp_path / "src", 4, skip=1)
    assert [f"{f.parent.name}/{f.name}" for f in files] == ["cat/0001.jpg", "cat/0002.jpg", "dog/0001.jpg", "dog/0002.jpg"]
    assert len(common.balanced_subset(tmp_path / "src", None)) == 12
    common.link_flat(files, tmp_path / "flat")
    names = sorted(p.name for p in (tmp_path / "flat").iterdir())
    assert len(names) == 4 and not any("cat" in n or "dog" in n or n.startswith("000") for n in names)
    common.link_labeled(files, tmp_path / "labeled")
    assert sorted(p.name for p in (tmp_path / "labeled").iterdir()) == ["cat", "dog"]
    assert (tmp_path / "labeled" / "dog" / "0002.jpg").read_bytes() == b"x"


def test_train_slice_takes_the_same_file_range_of_every_class(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "train" / c / f"{i:04d}.jpg").write_bytes(b"x")
    files = common.train_slice(tmp_path, (3, 6), None)
    assert [f"{f.parent.name}/{f.name}" for f in files] == [f"{c}/{i:04d}.jpg" for c in ("cat", "dog") for i in (3, 4, 5)]
    assert len(common.train_slice(tmp_path, (3, 6), 4)) == 4  # at most total, still balanced: 2 per class


def test_materialize_rebuilds_half_built_folders(tmp_path):
    calls = []
    build = lambda d: calls.append((d / "x").write_text("1"))  # noqa: E731
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stale").write_text("half")
    common.materialize(tmp_path / "d", build)
    common.materialize(tmp_path / "d", build)
    assert len(calls) == 1 and not (tmp_path / "d" / "stale").exists()


def test_evaluate_runs_must_eval_once_with_the_device_flags_then_reads_it_back(tmp_path, monkeypatch):
    calls = []

    def fake_must(argv, logfile):
        calls.append(argv)
        out = argv[argv.index("--output") + 1]
        (tmp_path / out).write_text(json.dumps({"top1": 0.5, "mean_per_class": 0.4}))
        return 1.0

    monkeypatch.setattr(common, "must", fake_must)
    model = common.zero_shot_args("local-dir:m", tmp_path / "c.txt", tmp_path / "t.txt")
    out = tmp_path / "eval.json"
    first = common.evaluate(tmp_path / "labeled", out, model, None, tmp_path / "log.txt")
    again = common.evaluate(tmp_path / "labeled", out, model, "cuda", tmp_path / "log.txt")
    assert first == again == {"top1": 0.5, "mean_per_class": 0.4} and len(calls) == 1
    argv = calls[0]
    assert argv[:2] == ["eval", str(tmp_path / "labeled")] and argv[-4:] == ["--device", "cpu", "--workers", "1"]
    assert argv[argv.index("--model") + 1] == "local-dir:m" and "--zero-shot" in argv
    assert argv[argv.index("--classes") + 1] == str(tmp_path / "c.txt")


def test_a_failing_must_command_stops_with_the_end_of_its_log(tmp_path):
    with pytest.raises(SystemExit, match=r"`must eval .*` failed \(exit 2\); end of .*log.txt") as info:
        common.must(["eval", str(tmp_path / "missing"), "--no-such-flag"], tmp_path / "log.txt")
    assert "no-such-flag" in str(info.value)  # the log's tail holds must's own complaint
    assert (tmp_path / "log.txt").read_text().startswith("$ eval ")


def test_provenance_records_the_module_command_and_the_device():
    record = common.provenance("benchmarks.longtail", ["--seeds", "0 1"], "cuda:1")
    assert record["command"] == "python -m benchmarks.longtail --seeds '0 1'"
    assert record["machine"]["device"] == "cuda:1" and record["machine"]["cpus"] >= 1
    assert record["date"].endswith("+00:00")
    assert common.device_args("cuda:1") == ["--device", "cuda:1"]


def test_write_json_makes_the_folder_and_a_failed_write_keeps_the_old_result(tmp_path):
    path = tmp_path / "results" / "r.json"
    common.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        common.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


REPO = Path(common.__file__).resolve().parents[1]


def test_no_script_or_test_edits_sys_path():
    """Scripts import each other as `benchmarks.NAME` and run as `python -m benchmarks.NAME`."""
    files = [*REPO.glob("benchmarks/*.py"), *REPO.glob("benchmarks/*.sh"), *REPO.glob("tests/*.py")]
    offenders = [str(p.relative_to(REPO)) for p in files
                 if re.search(r"sys\.path\.(insert|append)\(", p.read_text()) and p != Path(__file__).resolve()]
    assert offenders == []


@pytest.mark.slow
def test_every_benchmark_script_imports_as_a_module():
    """No test runs most scripts, so a moved must_cli name would break them silently: import them all."""
    names = sorted(p.stem for p in REPO.glob("benchmarks/*.py"))
    code = "import importlib\nfor name in %r:\n    importlib.import_module('benchmarks.' + name)\n" % names
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"common", "proxy", "longtail", "reference_check", "throughput"} <= set(names)
