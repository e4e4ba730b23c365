"""benchmarks.scale: the fits and the summary (pure), and one ``--quick`` run end to end in a
subprocess: the JSON's shape, the PNGs, and nothing of the run left behind. No timing asserts.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from pathlib import Path

import pytest

from benchmarks import scale, scale_load, scale_report
from tests.unit.bench_run import run_benchmark

REPO = Path(__file__).resolve().parents[2]


# -- pure helpers -----------------------------------------------------------------------------


def test_linear_fit_recovers_a_line_and_needs_two_x():
    fit = scale_report.linear_fit([1, 2, 4, 8], [3.0, 5.0, 9.0, 17.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0) and fit["points"] == 4
    assert scale_report.linear_fit([4, 4], [1.0, 2.0])["slope"] is None
    assert scale_report.linear_fit([1, 2], [1.0, None])["points"] == 1
    assert scale_report.steps([4, 1, 2], [10.0, 1.0, 3.0]) == [2.0, 3.5]


def test_spread_is_median_min_max_rounds():
    assert scale_load.spread([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "rounds": [3.0, 1.0, 2.0],
    }
    assert scale_load.spread([])["median"] is None


def test_plan_checks_the_clients_farm_is_swept():
    with pytest.raises(ValueError):
        scale.Plan(cards=(1, 2), client_cards=8)
    quick = scale.Plan.for_mode(True)
    assert quick.client_cards in quick.cards and max(quick.cards) <= 4


def _load(rps: float, p99: float) -> dict:
    def node(v):
        return scale_load.spread([v])

    return {"saturated": {"throughput_rps": node(rps), "p99_ms": node(p99)}, "light": {}}


def test_costs_and_markdown_from_points():
    plan = scale.Plan()
    cards = [
        {"cards": n, "start_s": 0.5 + 0.01 * n, "idle": {"farm_percent": 1.0 + 0.2 * n}}
        | {"load": _load(1000.0, 5.0)}
        for n in (1, 8)
    ]
    result = {
        "plan": dataclasses.asdict(plan),
        "host": {"cpus": 2, "loadavg_at_start": [1.0, 1.0, 1.0]},
        "cards_sweep": cards,
        "clients_sweep": [{"clients": m, **_load(1000.0 * m, 4.0)} for m in (1, 2)],
        "big_farm": {"cards": 256, "start_s": 3.06, "idle": {"farm_percent": 52.2}},
    }
    result["costs"] = costs = scale_report.costs(result)
    assert set(costs) == set(scale_report.COSTS)
    assert costs["start_s_per_card"]["slope"] == pytest.approx(0.01)
    assert costs["start_s_per_card"]["x"] == [1, 8, 256]  # the big farm counts
    assert costs["idle_cpu_percent_per_card"]["slope"] == pytest.approx(0.2)
    assert costs["throughput_rps_per_client"]["slope"] == pytest.approx(1000.0)
    assert costs["throughput_rps_per_client"]["per_doubling"]["slope"] == pytest.approx(1000.0)
    assert costs["light_p99_ms_per_card"]["slope"] is None  # no light figures
    text = scale_report.markdown(result)
    assert "| cards | start s |" in text and "| clients | max CPU per client |" in text
    assert "start_s_per_card" in text and "256 cards on one box" in text


# -- the real thing ---------------------------------------------------------------------------


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            data = Path(cmdline).read_bytes()
        except OSError:
            continue
        if text.encode() in data:
            found.append(int(cmdline.split("/")[2]))
    return found


def _check_load(point: dict, clients: int) -> None:
    assert point["clients"] == clients and point["rounds"] == 2
    for kind in ("saturated", "light"):
        figures = point[kind]
        assert len(figures["throughput_rps"]["rounds"]) == 2
        assert figures["throughput_rps"]["median"] > 0 and figures["requests"] > 0
        assert figures["p99_ms"]["min"] <= figures["p99_ms"]["median"] <= figures["p99_ms"]["max"]
        assert figures["errors"] == 0


@pytest.mark.timeout(150)
def test_quick_run_end_to_end(tmp_path):
    args = ("--quick", "--big-cards", "8", "--out-dir", str(tmp_path))
    pid, stdout, stderr = run_benchmark("benchmarks.scale", *args)
    tag = f"bench{pid}n"

    result = json.loads(stdout)
    assert json.loads((tmp_path / "scale.json").read_text()) == result
    assert "Costs" in (tmp_path / "scale.md").read_text()
    assert result["schema"] == "npufarm.bench.scale/1" and result["quick"] is True
    plan = result["plan"]
    assert [p["cards"] for p in result["cards_sweep"]] == plan["cards"]
    for point in result["cards_sweep"]:
        assert point["start_s"] > 0 and len(point["start_s_rounds"]["rounds"]) == 2
        assert point["idle"]["farm_percent"] >= 0 and point["stop_s"] > 0
        assert point["leftover_shm"] == 0 and point["killed"] is False
        _check_load(point["load"], plan["base_clients"])
    assert [p["clients"] for p in result["clients_sweep"]] == plan["clients"]
    for point, clients in zip(result["clients_sweep"], plan["clients"]):
        _check_load(point, clients)
    big = result["big_farm"]
    assert big["cards"] == 8 and big["start_s"] > 0 and "error" not in big
    assert big["load"]["in_flight"] == 1 and big["load"]["cards_driven"]["light"] == 1
    assert set(result["costs"]) == set(scale_report.COSTS)
    for name in ("start_s_per_card", "idle_cpu_percent_per_card", "throughput_rps_per_client"):
        assert result["costs"][name]["points"] >= 2

    names = sorted(Path(p).name for p in result["plots"])
    assert names == ["scale_cards.png", "scale_clients.png", "scale_cost.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # nothing of this run is left behind
    assert _processes_mentioning(tag) == []
    assert glob.glob(f"/dev/shm/npufarm-{tag}*") == []
