"""benchmarks.cabi: the round reductions and the table, and one ``--quick`` run end to end.

The end-to-end run builds a toolkit tree in a temp dir, compiles ``benchmarks/cabi_bench.c``
against it and runs both sides on a real farm; it checks the JSON's shape and that every metric
was measured in every round, never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cabi

REPO = Path(__file__).resolve().parents[2]
METRICS = (
    "memcpy_4KiB_h2d",
    "exec_sync",
    "c_memcpy_16MiB_h2d",
    "python_memcpy_16MiB_h2d",
    "c_memcpy_16MiB_d2h",
    "python_memcpy_16MiB_d2h",
)
TARGETED = ("memcpy_4KiB_h2d", "exec_sync", "c_memcpy_16MiB_h2d", "c_memcpy_16MiB_d2h")


# -- pure helpers -----------------------------------------------------------------------------


def _side_output(small_s: float, exec_s: float, big_s: float) -> dict:
    return {
        "big_bytes": 1 << 20,
        "inner": 4,
        "memcpy_small_h2d_s": [small_s, small_s * 3, small_s],
        "exec_sync_s": [exec_s] * 5,
        "memcpy_big_h2d_s": [big_s * 2, big_s],
        "memcpy_big_d2h_s": [big_s],
    }


def test_reduce_side_takes_p50_and_best_rate():
    reduced = cabi.reduce_side(_side_output(4e-6, 300e-6, 1e-3))
    assert reduced["memcpy_4KiB_h2d"] == 4.0 and reduced["exec_sync"] == 300.0
    assert reduced["memcpy_16MiB_h2d"] == round(4 * (1 << 20) / 1e-3 / 1e9, 2)  # the faster one
    assert reduced["samples"] == 8


def test_entries_are_medians_of_rounds_with_spread_and_targets():
    rounds = []
    for c_us, py_us, c_gbps, raw_gbps in ((5, 4, 8, 10), (6, 5, 9, 10), (50, 4, 7, 11)):
        side = {"memcpy_4KiB_h2d": c_us, "exec_sync": 100.0}
        side.update(memcpy_16MiB_h2d=c_gbps, memcpy_16MiB_d2h=c_gbps)
        python = {**side, "memcpy_4KiB_h2d": py_us}
        rounds.append({"c": side, "python": python, "raw": {"h2d": raw_gbps, "d2h": raw_gbps}})
    entries = cabi.build_entries(rounds)
    assert set(entries) == set(METRICS)
    small = entries["memcpy_4KiB_h2d"]
    assert (small["measured"], small["measured_min"], small["measured_max"]) == (6, 5, 50)
    assert small["baseline"] == 4 and small["ratio"] == 1.5  # the ratio of the medians
    assert small["target"] == "ratio <= 1.2" and small["meets_target"] is False
    assert small["measured_rounds"] == [5, 6, 50]
    assert entries["exec_sync"]["meets_target"] is True
    h2d = entries["c_memcpy_16MiB_h2d"]
    assert h2d["ratio"] == 0.8 and h2d["meets_target"] is True and h2d["target"] == "ratio >= 0.8"
    assert entries["python_memcpy_16MiB_h2d"]["meets_target"] is None

    rows = cabi.summarize({"cabi": entries})
    table = cabi.markdown_table(rows, 3).splitlines()
    assert table[0].startswith("| metric |") and "median of 3" in table[0]
    assert len(table) == 2 + len(METRICS)
    assert "| us | 6.0 | 5.0–50.0 | 4.0 | 4.0–5.0 | 1.50 | ratio <= 1.2 | **no** |" in table[2]


def test_plan_rounds_override():
    assert cabi.Plan.for_mode(False).rounds == 5 and cabi.Plan.for_mode(True).rounds <= 2
    plan = cabi.Plan.for_mode(True, rounds=3)
    assert plan.rounds == 3 and plan.copy_iters == cabi.Plan.for_mode(True).copy_iters
    with pytest.raises(ValueError):
        cabi.Plan.for_mode(False, rounds=0)


# -- the real thing ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "cabi.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
    argv = [sys.executable, "-m", "benchmarks.cabi", "--quick", "--out", str(out)]
    done = subprocess.run(
        [*argv, "--sdk", str(tmp_path / "toolkit")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert json.loads(out.read_text()) == result
    assert "| metric |" in done.stderr  # the markdown table

    assert result["quick"] is True and result["sdk"] == str(tmp_path / "toolkit")
    assert result["farm"]["leftover_shm"] == 0 and result["farm"]["killed"] is False
    rounds = result["plan"]["rounds"]
    assert 1 <= rounds <= 2 and len(result["rounds"]) == rounds
    for one in result["rounds"]:
        assert {"c", "python", "raw"} <= one.keys()
    assert set(result["cabi"]) == set(METRICS)
    for key, item in result["cabi"].items():
        assert item["measured"] > 0 and item["baseline"] > 0 and item["ratio"] > 0, key
        assert len(item["measured_rounds"]) == len(item["baseline_rounds"]) == rounds, key
        assert item["measured_min"] <= item["measured"] <= item["measured_max"], key
        assert isinstance(item["meets_target"], bool) == (key in TARGETED), key
    assert [row["metric"] for row in result["summary"]] == [
        item["label"] for item in result["cabi"].values()
    ]
