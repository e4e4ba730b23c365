"""``npufarm bench`` (loadtest.loadgen) against a real farm: closed and open loop, a stalled card,
the output files, the CLI with an embedded farm, and Ctrl-C."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from farm.admin import query_status
from loadtest.loadgen import bench_main, run_bench
from loadtest.plan import BenchConfig, arrival_offsets, parse_sweep
from loadtest.report import SCHEMA
from tests.conftest import poll_for
from tests.system.conftest import CI_CONFIG, MODELS, REPO, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

MODEL_S = 0.005  # modelled latency of the test model
STALL_S = 0.5


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "small.toml"
    path.write_text(
        '[model]\nname = "small"\nkind = "identity"\nseed = 0\n\n'
        '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [1, 64]\n\n'
        '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [1, 64]\n\n'
        f"[latency]\nfixed_s = {MODEL_S}\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def farm():
    """Two cards with modelled latency (time scale 1)."""
    running = start_farm(cards=2, extra=["--time-scale", "1"])
    yield running
    stop_and_check(running)


def bench(farm, model, **kwargs) -> dict:
    defaults = {
        "address": farm.address,
        "model": model,
        "workers": 2,
        "warmup_s": 0.3,
        "duration_s": 1.0,
        "live": False,
    }
    result = run_bench(BenchConfig(**{**defaults, **kwargs}))
    assert not multiprocessing.active_children(), "bench left worker processes"
    assert result["schema"] == SCHEMA
    return result


def test_closed_loop_sweep(farm, model, tmp_path):
    result = bench(farm, model, concurrency=(1, 4), out_dir=str(tmp_path), per_request=True)
    c1, c4 = result["phases"]
    assert (c1["name"], c1["concurrency"], c4["name"], c4["concurrency"]) == ("c1", 1, "c4", 4)
    for phase in (c1, c4):
        assert phase["errors"] == {} and phase["requests"] > 50 and phase["mode"] == "closed"
        assert MODEL_S * 1000 <= phase["latency_ms"]["p50"] < MODEL_S * 1000 + 5.0
        assert set(phase["per_card"]) == ({"0"} if phase is c1 else {"0", "1"})
    assert c1["throughput_rps"] == pytest.approx(1000 / c1["latency_ms"]["mean"], rel=0.2)
    assert c4["throughput_rps"] > 2.5 * c1["throughput_rps"]
    generator = result["generator"]
    assert generator["workers"] == 2 and generator["slots"] == 4
    assert c4["generator"]["issue_gap_ms"]["p50"] < 1.0
    assert len(c4["generator"]["worker_cpu_util"]) == 2
    assert result["farm"]["cards"] == [0, 1] and result["faults"] == []

    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved == json.loads(json.dumps(result))
    with (tmp_path / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["phase"], r["card"]) for r in rows] == [
        ("c1", "all"),
        ("c1", "0"),
        ("c4", "all"),
        ("c4", "0"),
        ("c4", "1"),
    ]
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    assert result["samples_file"] == "requests.jsonl"
    assert len(lines) >= c1["requests"] + c4["requests"]  # warm-up requests are in the file too
    first = json.loads(lines[0])
    assert set(first) == {
        "phase",
        "slot",
        "card",
        "code",
        "intended_s",
        "start_s",
        "end_s",
        "latency_ms",
    }


def test_open_loop_rates(farm, model):
    result = bench(farm, model, mode="open", rates=(100.0, 250.0), streams_per_card=2)
    for phase, rate in zip(result["phases"], (100.0, 250.0)):
        assert phase["mode"] == "open" and phase["rate"] == rate and phase["errors"] == {}
        assert phase["throughput_rps"] == pytest.approx(rate, rel=0.05)
        assert phase["missed"] == 0
        gen = phase["generator"]
        assert gen["requested_rps"] == rate and gen["achieved_rps"] == pytest.approx(rate, rel=0.05)
        assert gen["lag_ms"]["p50"] < 2.0
        assert phase["latency_ms"]["p50"] < MODEL_S * 1000 + 5.0


def test_poisson_arrivals_with_a_request_budget(farm, model):
    result = bench(
        farm,
        model,
        mode="open",
        rates=(200.0,),
        arrival="poisson",
        duration_s=None,
        requests=150,
        seed=3,
    )
    (phase,) = result["phases"]
    assert phase["requests"] == 150 and phase["errors"] == {}
    assert phase["throughput_rps"] == pytest.approx(200.0, rel=0.35)


def test_sweeps_schedules_and_config_checks():
    # the stated upper bound is always run, even when the step does not land on it
    assert parse_sweep("1:16:4", int) == (1, 5, 9, 13, 16)
    assert parse_sweep("1:16:2", int) == (1, 3, 5, 7, 9, 11, 13, 15, 16)
    assert parse_sweep("1:4:3", int) == (1, 4) and parse_sweep("2:2:5", int) == (2,)
    assert parse_sweep("100:800:300") == (100.0, 400.0, 700.0, 800.0)
    with pytest.raises(ValueError, match="below start"):
        parse_sweep("16:1:4", int)
    assert parse_sweep("100,250") == (100.0, 250.0) and parse_sweep("8", int) == (8,)
    assert parse_sweep("0.5:1.5:0.5") == (0.5, 1.0, 1.5)
    with pytest.raises(ValueError):
        parse_sweep("1:4:0")
    constant = arrival_offsets(100.0, "constant", warmup_s=0.5, duration_s=2.0, requests=None)
    assert constant.size == 250 and constant[1] == pytest.approx(0.01)
    budget = arrival_offsets(100.0, "constant", warmup_s=0.5, duration_s=None, requests=30)
    assert (budget >= 0.5).sum() == 30 and (budget < 0.5).sum() == 50
    poisson = arrival_offsets(
        1000.0, "poisson", warmup_s=0.0, duration_s=20.0, requests=None, seed=5
    )
    assert poisson.size == pytest.approx(20_000, rel=0.03) and np.all(np.diff(poisson) > 0)
    again = arrival_offsets(1000.0, "poisson", warmup_s=0.0, duration_s=20.0, requests=None, seed=5)
    assert np.array_equal(poisson, again)
    with pytest.raises(ValueError):
        BenchConfig(mode="open")  # no rates
    with pytest.raises(ValueError):
        BenchConfig(duration_s=None, requests=None)


def _inject_hang_once_running(address: str, errors: list) -> None:
    """Wait for the bench to be under way, then stall card 1 for STALL_S."""
    try:
        base = query_status(address)["ledger"]["completed"]
        poll_for(lambda: query_status(address)["ledger"]["completed"] > base + 100, 20.0, 0.05)
        time.sleep(0.3)
        env = {**os.environ, "NPUFARM_ADDRESS": address}
        rule = ["kind=hang", "card=1", "api=execute", f"duration_s={STALL_S}", "name=stall"]
        done = subprocess.run(
            [sys.executable, "-m", "npufarm", "inject", *rule],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_stalled_card_shows_in_open_loop_percentiles_and_fault_window(farm, model):
    errors: list = []
    injector = threading.Thread(target=_inject_hang_once_running, args=(farm.address, errors))
    injector.start()
    result = bench(
        farm, model, mode="open", rates=(200.0,), duration_s=3.0, warmup_s=0.2, slo_ms=100.0
    )
    injector.join()
    assert not errors, errors
    (phase,) = result["phases"]
    assert phase["errors"] == {}
    # latency from the intended send time: everything queued behind the stall counts
    assert phase["latency_ms"]["max"] >= STALL_S * 1000
    assert phase["latency_ms"]["p99"] >= 0.8 * STALL_S * 1000
    assert phase["per_card"]["1"]["latency_ms"]["p99"] >= 0.8 * STALL_S * 1000
    assert phase["per_card"]["0"]["latency_ms"]["p99"] < 100.0
    assert phase["goodput_rps"] < phase["throughput_rps"]
    hangs = [e for e in result["faults"] if e["kind"] == "hang"]
    assert hangs and all(e["card"] == 1 for e in hangs)
    (window,) = phase["fault_windows"]
    assert (window["kind"], window["card"], window["name"]) == ("hang", 1, "stall")
    assert window["end_s"] - window["start_s"] == pytest.approx(STALL_S, abs=0.05)
    assert 0.05 <= window["time_to_detect_s"] <= 0.3  # the SLO passes on the stalled request
    assert STALL_S <= window["time_to_recover_s"] < STALL_S + 1.5
    assert window["during"]["per_card"]["1"]["latency_ms"]["max"] >= STALL_S * 1000
    assert window["before"]["per_card"]["1"]["latency_ms"]["max"] < 100.0
    assert window["after"]["per_card"]["0"]["latency_ms"]["p99"] < 100.0


def test_cli_with_an_embedded_farm(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NPUFARM_ADDRESS", raising=False)
    monkeypatch.setenv("NPUFARM_RUNTIME_DIR", str(tmp_path / "runtime"))  # no default farm
    out = tmp_path / "out"
    code = bench_main(
        [
            "--config",
            str(CI_CONFIG),
            "--model",
            str(MODELS / "zero.toml"),
            "--concurrency",
            "1,2",
            "--duration-s",
            "0.4",
            "--warmup-s",
            "0.1",
            "--percentiles",
            "50,99",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert [p["name"] for p in result["phases"]] == ["c1", "c2"]
    assert set(result["phases"][0]["latency_ms"]) == {"p50", "p99", "max", "mean"}
    assert result["samples_file"] is None and not (out / "requests.jsonl").exists()
    assert (out / "summary.csv").read_text().startswith("phase,mode,concurrency,rate,card,")
    text = capsys.readouterr().out
    assert "npufarm bench" in text  # the summary table
    # the PNGs the README promises (no latency-over-time plot without --per-request), and one
    # line saying where everything went
    pngs = ["percentiles_vs_load.png", "per_card_throughput.png"]
    assert all((out / name).stat().st_size > 0 for name in pngs)
    line = f"npufarm bench: wrote result.json, summary.csv, {', '.join(pngs)} to {out.resolve()}"
    assert text.splitlines()[-1] == line


def _orphaned_workers(parent: int) -> set[int]:
    """Live multiprocessing children of ``parent``, or orphans re-parented to init."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"spawn_main" not in (entry / "cmdline").read_bytes():
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) in (parent, 1):
            found.add(int(entry.name))
    return found


def test_ctrl_c_stops_cleanly_and_writes_the_report(farm, model, tmp_path):
    before = _orphaned_workers(1)
    code = (
        "import sys; from loadtest.loadgen import bench_main; "
        f"sys.exit(bench_main(['--address', {farm.address!r}, '--model', {model!r}, "
        f"'--concurrency', '2', '--duration-s', '30', '--warmup-s', '0.2', "
        f"'--out', {str(tmp_path)!r}, '--quiet']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        base = query_status(farm.address)["ledger"]["completed"]
        poll_for(lambda: query_status(farm.address)["ledger"]["completed"] > base + 100, 30, 0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads((tmp_path / "result.json").read_text())
    (phase,) = result["phases"]
    assert phase["interrupted"] and phase["requests"] > 0 and phase["errors"] == {}
    assert 0 < phase["end_s"] - phase["start_s"] < 30
    assert (tmp_path / "summary.csv").exists()
    poll_for(lambda: not (_orphaned_workers(proc.pid) - before), 5.0)
