"""Running a benchmark module end to end from a test: one subprocess, no NPUFARM_* leaking in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, *args: str, timeout_s: float = 130.0) -> tuple[int, str, str]:
    """``python -m <module> <args>`` from the repository root: ``(pid, stdout, stderr)``; fails
    the test with the end of stderr on a nonzero exit, kills the run on a timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return proc.pid, stdout, stderr
