"""The fault benchmark runs end to end and reports sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_quick_fault_benchmark(tmp_path):
    out = tmp_path / "faults.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.faults", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    expiry_ms = result["heartbeat_expiry_ms"]
    assert result["detect_crash"]["n"] == 2 and result["detect_crash"]["max_ms"] < expiry_ms
    silent = result["detect_silent_card"]
    assert silent["n"] == 2 and 0.5 * expiry_ms < silent["median_ms"] < 5 * expiry_ms
    assert result["recover_reset_to_first_task"]["n"] == 4
