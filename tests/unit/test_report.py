"""loadtest.report: figures from synthetic samples, fault windows, and the output files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from loadtest import report
from loadtest.report import SAMPLE_DTYPE, as_samples, fault_windows, summarize

LOST, TIMEOUT = 507010, 507046


def make(latencies_ms, *, card=0, code=0, t0=100.0, gap_s=0.01, slot=0, lag_s=0.0):
    """Samples sent every ``gap_s`` from ``t0`` with the given latencies (ms)."""
    lat = np.asarray(latencies_ms, dtype=float)
    s = np.zeros(lat.size, SAMPLE_DTYPE)
    s["intended_s"] = t0 + gap_s * np.arange(lat.size)
    s["start_s"] = s["intended_s"] + lag_s
    s["end_s"] = s["intended_s"] + lat / 1000.0
    s["card"], s["code"], s["slot"] = card, code, slot
    return s


def test_percentiles_match_numpy():
    rng = np.random.default_rng(3)
    lat = rng.lognormal(1.0, 0.8, 5000)
    result = summarize(make(lat), percentiles=(50, 90, 95, 99, 99.9))
    expected = np.percentile(lat, [50, 90, 95, 99, 99.9])
    got = [result["latency_ms"][k] for k in ("p50", "p90", "p95", "p99", "p99.9")]
    assert got == pytest.approx(expected, abs=1e-3)
    assert result["latency_ms"]["max"] == pytest.approx(lat.max(), abs=1e-3)
    assert result["latency_ms"]["mean"] == pytest.approx(lat.mean(), abs=1e-3)
    assert result["requests"] == result["completed"] == 5000
    assert result["errors"] == {} and result["error_rate"] == 0.0


def test_custom_percentiles_and_empty():
    result = summarize(make([1.0, 2.0, 3.0]), percentiles=(25, 75))
    assert set(result["latency_ms"]) == {"p25", "p75", "max", "mean"}
    empty = summarize(as_samples([]), percentiles=(50,))
    assert empty["requests"] == 0 and empty["latency_ms"] == {
        "p50": None,
        "max": None,
        "mean": None,
    }
    assert empty["throughput_rps"] is None and empty["per_card"] == {}


def test_throughput_goodput_against_slo_in_a_window():
    samples = make([5.0] * 80 + [50.0] * 20, gap_s=0.01)  # 100 requests over 1 s
    result = summarize(samples, slo_ms=10.0, window=(100.0, 101.0))
    assert result["duration_s"] == 1.0
    assert result["throughput_rps"] == 100.0 and result["goodput_rps"] == 80.0
    no_slo = summarize(samples, window=(100.0, 101.0))
    assert no_slo["goodput_rps"] == no_slo["throughput_rps"] == 100.0
    half = summarize(samples, window=(100.0, 100.5))  # intended time decides membership
    assert half["requests"] == 50


def test_errors_by_code_are_excluded_from_latency():
    ok = make([2.0] * 90)
    timeouts = make([500.0] * 6, code=TIMEOUT, t0=101.0)
    lost = make([0.1] * 4, code=LOST, t0=102.0)
    result = summarize(np.concatenate([ok, timeouts, lost]))
    assert result["errors"] == {str(TIMEOUT): 6, str(LOST): 4}
    assert result["requests"] == 100 and result["completed"] == 90
    assert result["error_rate"] == pytest.approx(0.1)
    assert result["latency_ms"]["max"] == pytest.approx(2.0)


def test_per_card_breakdown():
    samples = np.concatenate([make([1.0] * 30, card=0), make([4.0] * 10, card=3, code=LOST)])
    result = summarize(samples, window=(100.0, 101.0))
    assert set(result["per_card"]) == {"0", "3"}
    assert result["per_card"]["0"]["completed"] == 30
    assert result["per_card"]["0"]["latency_ms"]["p50"] == pytest.approx(1.0)
    assert result["per_card"]["3"]["errors"] == {str(LOST): 10}
    assert result["per_card"]["3"]["throughput_rps"] == 0.0
    assert "per_card" not in result["per_card"]["0"]


def test_as_samples_from_dicts_and_tuples():
    rows = [{"card": 1, "code": 0, "intended_s": 1.0, "start_s": 1.0, "end_s": 1.5}]
    s = as_samples(rows)
    assert s.dtype == SAMPLE_DTYPE and s["card"][0] == 1 and s["end_s"][0] == 1.5
    assert as_samples([(0, 0, 2, 0, 1.0, 1.0, 2.0)])["card"][0] == 2


def _stall_scenario():
    """Card 1 stalls 0.5 s at t=101 (open loop, 10 ms apart): the 50 requests intended during
    the stall wait for it, then run 2 ms each (the last ends at 101.600); card 0 is unaffected.
    A transient hang rule fired twice."""
    t = 100.0 + 0.01 * np.arange(300)  # 100 .. 103
    end = t + 0.002
    stalled = np.flatnonzero((t >= 101.0 - 1e-9) & (t < 101.5 - 1e-9))
    assert stalled.size == 50
    end[stalled] = 101.5 + 0.002 * np.arange(1, 51)
    card1 = make((end - t) * 1000.0, card=1)
    card0 = make(np.full(t.size, 2.0), card=0)
    farm_start = 90.0
    events = [
        {
            "t_s": 11.0,
            "card": 1,
            "epoch": 0,
            "hook": "card.execute",
            "call": 7,
            "kind": "hang",
            "code": 507014,
            "rule": 2,
            "detail": {"duration_s": 0.5},
        },
        {
            "t_s": 11.2,
            "card": 1,
            "epoch": 0,
            "hook": "card.execute",
            "call": 8,
            "kind": "hang",
            "code": 507014,
            "rule": 2,
            "detail": {"duration_s": 0.5},
        },
    ]
    return np.concatenate([card0, card1]), events, farm_start


def test_fault_window_before_during_after_with_detect_and_recover():
    samples, events, farm_start = _stall_scenario()
    windows = fault_windows(
        samples, events, farm_start, window=(100.0, 103.0), slo_ms=100.0, origin_s=100.0
    )
    assert len(windows) == 1
    w = windows[0]
    assert (w["rule"], w["card"], w["kind"], w["events"]) == (2, 1, "hang", 2)
    assert w["start_s"] == pytest.approx(1.0) and w["end_s"] == pytest.approx(1.5)
    before, during, after = w["before"], w["during"], w["after"]
    assert before["per_card"]["1"]["latency_ms"]["max"] == pytest.approx(2.0)
    assert during["per_card"]["1"]["latency_ms"]["max"] == pytest.approx(502.0)
    assert during["per_card"]["0"]["latency_ms"]["max"] == pytest.approx(2.0)
    assert after["per_card"]["1"]["latency_ms"]["max"] == pytest.approx(2.0)
    assert before["requests"] + during["requests"] + after["requests"] == samples.size
    # the first request hits the stall at 101.0; it is known to be bad once the SLO has passed
    assert w["time_to_detect_s"] == pytest.approx(0.1)
    # every stalled one is over the SLO; the last ends at 101.600, and the first good request
    # to complete after it is the one intended at 101.60 (ends 101.602)
    assert w["time_to_recover_s"] == pytest.approx(0.602)


def test_fault_window_detect_by_error_code():
    ok_before = make([2.0] * 100, card=0, t0=100.0)
    errors = make([1.0] * 20, card=0, t0=101.0, code=LOST)
    ok_after = make([2.0] * 50, card=0, t0=101.2)
    samples = np.concatenate([ok_before, errors, ok_after])
    events = [
        {
            "t_s": 0.955,
            "card": 0,
            "epoch": 1,
            "hook": "card.heartbeat",
            "call": 3,
            "kind": "heartbeat_loss",
            "code": LOST,
            "rule": 0,
            "detail": {},
        }
    ]
    (w,) = fault_windows(samples, events, 100.0)
    assert w["time_to_detect_s"] == pytest.approx(0.046)  # the first error ends at 101.001
    assert w["time_to_recover_s"] == pytest.approx(101.202 - 100.955)
    # one event: the window lasts from the loss to the card's recovery, not an instant
    assert w["start_s"] == pytest.approx(100.955) and w["end_s"] == pytest.approx(101.202)
    assert w["end_by"] == "recovery"
    # in flight at the start (4 sent at 100.96..100.99), the 20 errors, the one sent at 101.20
    assert w["during"]["requests"] == 25 and w["during"]["errors"] == {str(LOST): 20}
    assert w["after"]["requests"] == 49 and w["after"]["errors"] == {}


def test_fault_window_of_a_card_never_recovered_lasts_to_the_run_end():
    ok_before = make([2.0] * 100, card=0, t0=100.0)
    errors = make([1.0] * 50, card=0, t0=101.0, code=LOST)
    events = [
        {
            "t_s": 0.955,
            "card": 0,
            "epoch": 1,
            "hook": "card.link",
            "call": 3,
            "kind": "disconnect",
            "code": LOST,
            "rule": 0,
            "detail": {},
        }
    ]
    (w,) = fault_windows(np.concatenate([ok_before, errors]), events, 100.0, window=(100.0, 102.0))
    assert w["time_to_recover_s"] is None and w["time_to_detect_s"] == pytest.approx(0.046)
    assert (w["end_s"], w["end_by"]) == (pytest.approx(102.0), "run end")


def test_fault_window_figures_are_attributed_by_card():
    """Card 3's errors during card 1's straggler window are card 3's: the window's card and
    the other cards are reported apart."""
    slow = make([9.0] * 100, card=1, t0=100.0)
    fast = make([3.0] * 100, card=0, t0=100.0)
    lost = make([1.0] * 5, card=3, t0=100.5, code=LOST)
    events = [
        {
            "t_s": t,
            "card": 1,
            "epoch": 1,
            "hook": "card.execute",
            "call": i,
            "kind": "slow",
            "code": 0,
            "rule": 0,
            "detail": {"factor": 3.0, "name": "straggler"},
        }
        for i, t in enumerate((0.0, 0.99))
    ]
    (w,) = fault_windows(np.concatenate([slow, fast, lost]), events, 100.0)
    assert w["params"] == {"factor": 3.0} and w["end_by"] == "events"
    during = w["during"]
    assert during["per_card"]["1"]["errors"] == {} and during["per_card"]["1"]["requests"] == 100
    assert during["per_card"]["1"]["latency_ms"]["max"] == pytest.approx(9.0)
    assert during["others"]["errors"] == {str(LOST): 5} and during["others"]["requests"] == 105
    assert during["others"]["latency_ms"]["max"] == pytest.approx(3.0)


def test_fault_window_without_bad_samples_and_outside_the_window():
    samples = make([2.0] * 100)
    events = [
        {
            "t_s": 0.5,
            "card": 0,
            "epoch": 0,
            "hook": "card.execute",
            "call": 1,
            "kind": "slow",
            "code": 0,
            "rule": 1,
            "detail": {"factor": 2.0},
        }
    ]
    (w,) = fault_windows(samples, events, 100.0, slo_ms=10.0)
    assert w["time_to_detect_s"] is None and w["time_to_recover_s"] is None
    assert fault_windows(samples, events, 200.0) == []  # the fault is after the samples


def test_group_fault_events_per_rule_and_card():
    events = [
        {
            "t_s": t,
            "card": c,
            "epoch": 0,
            "hook": "card.execute",
            "call": i,
            "kind": "error",
            "code": 507015,
            "rule": r,
            "detail": {"name": "flaky"},
        }
        for i, (t, c, r) in enumerate([(1.0, 0, 0), (2.0, 1, 0), (3.0, 0, 0), (0.5, 0, 1)])
    ]
    groups = report.group_fault_events(events, 10.0)
    assert [(g["rule"], g["card"], g["events"]) for g in groups] == [
        (1, 0, 1),
        (0, 0, 2),
        (0, 1, 1),
    ]
    assert groups[1]["start_s"] == 11.0 and groups[1]["end_s"] == 13.0
    assert groups[1]["name"] == "flaky"


def _result(samples):
    phase = {"name": "r100", "mode": "open", "concurrency": None, "rate": 100.0}
    stats = [{"cpu_s": 0.2, "wall_s": 2.0, "missed": 3, "active": 2}]
    entry = report.phase_result(
        samples,
        phase,
        (100.0, 103.0),
        percentiles=(50, 99),
        slo_ms=100.0,
        origin_s=100.0,
        worker_stats=stats,
    )
    return {
        "schema": report.SCHEMA,
        "config": {"percentiles": [50, 99]},
        "phases": [entry],
        "generator": report.generator_summary([entry], workers=1),
        "faults": [],
        "samples_file": None,
    }


def test_phase_result_and_generator_figures():
    samples = make([2.0] * 300, lag_s=0.0002)
    result = _result(samples)
    (phase,) = result["phases"]
    assert phase["missed"] == 3 and phase["start_s"] == 0.0 and phase["end_s"] == 3.0
    gen = phase["generator"]
    assert gen["requested_rps"] == 100.0 and gen["achieved_rps"] == 100.0
    assert gen["lag_ms"]["p50"] == pytest.approx(0.2) and gen["issue_gap_ms"] is None
    assert gen["worker_cpu_util"] == [0.1]
    assert gen["cpu_us_per_request"] == pytest.approx(0.2 / 300 * 1e6, rel=1e-3)
    assert result["generator"]["saturated"] is False
    assert result["generator"]["lag_ms_p50_max"] == pytest.approx(0.2)


def test_json_csv_jsonl_round_trip(tmp_path):
    samples = np.concatenate([make([2.0] * 200, card=0), make([3.0] * 100, card=1, code=LOST)])
    result = _result(samples)
    report.write_json(result, tmp_path / "result.json")
    assert report.read_json(tmp_path / "result.json") == json.loads(json.dumps(result))
    (tmp_path / "other.json").write_text('{"schema": "x"}')
    with pytest.raises(ValueError):
        report.read_json(tmp_path / "other.json")

    report.write_csv(result, tmp_path / "summary.csv")
    with (tmp_path / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == report.csv_columns((50, 99))
    assert [r["card"] for r in rows] == ["all", "0", "1"]
    assert rows[0]["requests"] == "300" and rows[0]["errors"] == "100"
    assert float(rows[1]["latency_ms_p50"]) == pytest.approx(2.0)
    assert rows[2]["completed"] == "0" and rows[2]["latency_ms_p99"] == ""

    report.write_jsonl(samples, tmp_path / "requests.jsonl", origin_s=100.0)
    lines = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == 300 and lines[0]["intended_s"] == 0.0
    assert lines[0]["latency_ms"] == pytest.approx(2.0) and lines[-1]["code"] == LOST


def test_recovery_needs_a_run_of_good_samples_and_survives_a_stray_late_miss():
    events = [
        {
            "t_s": 0.955,
            "card": 0,
            "epoch": 1,
            "hook": "card.link",
            "call": 0,
            "kind": "disconnect",
            "code": LOST,
            "rule": 0,
            "detail": {},
        }
    ]
    errors = make([1.0] * 5, card=0, t0=101.0, code=LOST)
    flapping = make([2.0, 1.0, 2.0, 1.0] * 2, card=0, t0=101.1)  # good ones in between...
    flapping["code"][1::2] = LOST  # ...and errors: not recovered yet
    steady = make([2.0] * 30, card=0, t0=101.3)
    stray = make([900.0], card=0, t0=102.5)  # one SLO miss long after the recovery
    tail = make([2.0] * 3, card=0, t0=103.5)
    ok_before = make([2.0] * 50, card=0, t0=100.0)
    samples = np.concatenate([ok_before, errors, flapping, steady, stray, tail])
    (w,) = fault_windows(samples, events, 100.0, slo_ms=50.0)
    first_steady_end = float(steady["end_s"][0])
    assert w["time_to_recover_s"] == pytest.approx(first_steady_end - 100.955)
    # a short good run that reaches the last sample counts too
    (w,) = fault_windows(np.concatenate([ok_before, errors, tail]), events, 100.0, slo_ms=50.0)
    assert w["time_to_recover_s"] == pytest.approx(float(tail["end_s"][0]) - 100.955)
