"""The ONNX benchmark runs end to end (a real farm, a converted model) and reports sane figures;
the card's outputs are checked against host onnxruntime inside the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_quick_onnx_benchmark(tmp_path):
    out = tmp_path / "onnx.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.onnx", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["schema"] == "npufarm.bench.onnx/1"
    raw_us = result["baselines"]["ort_run"]["p50_us"]
    farm = result["farm"]
    assert raw_us > 0 and result["baselines"]["ort_parallel"]["requests_per_s"] > 0
    # the farm runs the same onnxruntime work plus its round trip: never faster than raw
    assert farm["exec"]["p50_us"] > 0.9 * raw_us
    assert farm["request"]["p50_us"] >= 0.9 * farm["exec"]["p50_us"]
    assert farm["throughput_2cards"]["requests_per_s"] > 0
    assert isinstance(farm["exec"]["meets_target"], bool)
