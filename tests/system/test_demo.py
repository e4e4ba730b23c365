"""`npufarm demo` runs the whole experiment and leaves a complete report behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.system.conftest import REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def test_demo_experiment_writes_a_full_report(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "npufarm",
            "demo",
            "--out",
            str(out),
            "--duration-s",
            "7",
            "--rate",
            "200",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"report: {out}" in done.stdout.replace("\n", "")
    for card in range(4):  # real compute: the synthetic matmul and an ONNX CNN, on every card
        assert f"card {card}: 50/50 matmul outputs equal the host's" in done.stdout
        assert f"card {card}: 10/10 outputs of an ONNX CNN" in done.stdout
    for name in (
        "result.json",
        "summary.csv",
        "requests.jsonl",
        "latency_over_time.png",
        "percentiles_vs_load.png",
        "per_card_throughput.png",
        "trace.json",
        "faults.jsonl",
    ):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "result.json").read_text())
    windows = {w["kind"]: w for w in result["phases"][0]["fault_windows"]}
    assert windows["disconnect"]["card"] == 3
    # the link drops 3 s into the load, is declared lost after the 1 s expiry, and the clients reset
    # the card: there is a good request on the restarted card before the load ends
    assert windows["disconnect"]["time_to_recover_s"] is not None, windows["disconnect"]
    # the link drop lasts from the injection to card 3's recovery, not an instant
    drop = windows["disconnect"]
    assert drop["end_by"] == "recovery"
    assert drop["end_s"] - drop["start_s"] == pytest.approx(drop["time_to_recover_s"], abs=1e-5)
    # card 3's 507010 is card 3's: the straggler window of card 1 does not carry it
    straggler = windows["slow"]
    assert straggler["card"] == 1 and straggler["params"] == {"factor": 3.0}
    assert straggler["during"]["per_card"]["1"]["errors"] == {}
    assert "507010" in straggler["during"]["others"]["errors"]
    # the tables, into a pipe (80 columns), cut nothing
    assert "…" not in done.stdout.replace(", …", "")
    assert "slow 3× @1" in done.stdout and "disconnect @3" in done.stdout
    per_card = result["phases"][0]["per_card"]
    assert per_card["1"]["latency_ms"]["p50"] > 1.5 * per_card["0"]["latency_ms"]["p50"]
    trace = json.loads((out / "trace.json").read_text())["traceEvents"]
    instants = {e["name"] for e in trace if e["ph"] == "i"}
    assert {"card lost", "card ready", "fault: disconnect"} <= instants
