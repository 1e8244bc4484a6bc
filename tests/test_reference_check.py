"""must-cli against the authors' released code, step for step, on the tiny shape (benchmarks/reference_check.py).

Runs whenever the reference checkout exists: ../shared/reference/salesforce-MUST next to the
repository, or the folder named by MUST_REFERENCE. Skips with the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REF = Path(os.environ.get("MUST_REFERENCE") or REPO.parent / "shared" / "reference" / "salesforce-MUST")


@pytest.mark.slow
@pytest.mark.skipif(not (REF / "engine_self_training.py").is_file(),
                    reason=f"no reference checkout at {REF} (set MUST_REFERENCE to the salesforce-MUST folder)")
def test_one_training_run_matches_the_reference_step_for_step():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.reference_check", "--ref", str(REF), "--shape", "tiny"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "ALL CHECKS PASS" in proc.stdout
    assert proc.stdout.count("  ok ") >= 50 and "FAIL" not in proc.stdout  # every comparison ran and passed
