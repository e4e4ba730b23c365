"""benchmarks.core: pure helpers, and one ``--quick`` run end to end in a subprocess.

The subprocess run starts real farms (a few seconds each); it checks the JSON shape, that every
figure is a positive number, that every entry is the median of its rounds with the rounds' range
beside it, and that nothing of that run is left behind (farm processes, shm segments, temp dirs).
"""

from __future__ import annotations

import glob
import json
import tomllib
from pathlib import Path

import pytest

from benchmarks import core, core_farm, core_report, rounds
from tests.unit.bench_run import run_benchmark

REPO = Path(__file__).resolve().parents[2]


# -- pure helpers -----------------------------------------------------------------------------


def test_entry_ratio_and_target():
    e = core_report.entry(50.0, unit="tasks/s", baseline=100.0, target="ratio >= 0.8", met=False)
    assert e["ratio"] == 0.5 and e["meets_target"] is False
    assert core_report.entry(1.0, unit="s")["ratio"] is None
    assert core_report.entry(1.0, unit="s", baseline=0.0)["ratio"] is None


def test_interleave_round_robins_over_cards():
    def slot(dev, i):
        return core_farm.Slot(dev, 0, 100 * dev + i, 0, 0, 0)

    by_card = [[slot(d, i) for i in range(2)] for d in range(3)]
    order = core_farm.interleave(by_card, 5)
    assert [s.device for s in order] == [0, 1, 2, 0, 1]
    assert [s.stream for s in order] == [0, 100, 200, 1, 101]
    with pytest.raises(ValueError):
        core_farm.interleave(by_card, 7)


def test_config_text_is_valid_toml():
    data = tomllib.loads(core_farm._config_text("bench1n1", "64MiB", 4))
    assert data["farm"]["name"] == "bench1n1" and data["farm"]["time_scale"] == 0.0
    assert data["cards"]["count"] == 4
    assert data["cards"]["profile"]["hbm_bytes"] == "64MiB"


def test_summary_and_markdown():
    entry = core_report.entry(
        12.0, unit="tasks/s", baseline=10.0, target="ratio >= 0.8", met=True, in_flight=16
    )
    entry.update(cards=1, threads=1)
    start = core_report.entry(0.3, unit="s", broker_uptime_at_announce_s=0.2, stop_s=0.25)
    result = {"farm": {"routing": {"1_card": {"if16": entry}}, "start": {"4_cards": start}}}
    rows = core_report.summarize(result)
    assert rows[0]["metric"] == "routing 1 card, 16 in flight"
    assert rows[0]["ratio"] == 1.2 and rows[0]["met"] is True
    assert any("broker's own" in r["metric"] for r in rows)
    table = core_report.markdown_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| metric |") and len(lines) == 2 + len(rows)
    assert "| 12 | 10 | 1.20 | ratio >= 0.8 | yes |" in lines[2]


def test_markdown_shows_the_rounds_range():
    item = rounds.rounds_entry(
        [12.0, 10.0, 14.0],
        [10.0, 10.0, 10.0],
        unit="tasks/s",
        target=rounds.at_least(0.8),
        in_flight=16,
    )
    item.update(cards=8, threads=1)
    start = rounds.rounds_entry([0.3, 0.3], unit="s", stop_s=0.2, stop_s_min=0.1, stop_s_max=0.3)
    result = {"farm": {"routing": {"8_cards": {"if16": item}}, "start": {"4_cards": start}}}
    rows = core_report.summarize(result)
    assert rows[0]["measured_min"] == 10.0 and rows[0]["ratio_max"] == 1.4
    table = core_report.markdown_table(rows, 3).splitlines()
    assert "median of 3 (min–max)" in table[0]
    assert (
        "| 12 (10–14) | 10 | 1.20 (1.00–1.40) | ratio >= 0.8 | yes |" in table[2]
    )  # the baseline never moved: no range
    assert "| farm start 4 cards | s | 0.300 | - | - | - | - |" in table  # all rounds agree
    assert "|   farm stop 4 cards | s | 0.200 (0.100–0.300) | - | - | - | - |" in table


def test_plan_rounds():
    assert core.Plan.for_mode(False).rounds >= 5 and core.Plan.for_mode(True).rounds == 2
    plan = core.Plan.for_mode(True, rounds=3)
    assert plan.rounds == 3 and plan.duration_s == core.Plan.for_mode(True).duration_s
    with pytest.raises(ValueError):
        core.Plan.for_mode(False, rounds=0)


def _check_rounds(item: dict, path: str, rounds_n: int) -> None:
    """An entry made of rounds: the median between min and max, one value per round."""
    assert len(item["measured_rounds"]) == rounds_n, path
    assert item["measured_min"] <= item["measured"] <= item["measured_max"], path
    if item["baseline"] is not None:
        assert len(item["baseline_rounds"]) == rounds_n, path
        assert item["baseline_min"] <= item["baseline"] <= item["baseline_max"], path
        assert item["ratio_min"] <= item["ratio_max"], path


# -- the real thing ---------------------------------------------------------------------------


def _bad_numbers(node, path="") -> list[str]:
    """Paths of numbers that are negative, NaN or infinite (bools and None are skipped)."""
    bad = []
    if isinstance(node, dict):
        for k, v in node.items():
            bad += _bad_numbers(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            bad += _bad_numbers(v, f"{path}[{i}]")
    elif (
        isinstance(node, int | float)
        and not isinstance(node, bool)
        and not (0 <= node < float("inf"))
    ):
        bad.append(path)
    return bad


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


@pytest.mark.timeout(150)
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "core.json"
    pid, stdout, stderr = run_benchmark("benchmarks.core", "--quick", "--out", str(out))
    tag = f"bench{pid}n"

    result = json.loads(stdout)
    assert json.loads(out.read_text()) == result
    assert "| metric |" in stderr  # the markdown table

    assert result["quick"] is True and result["plan"]["rounds"] == 2
    assert {"host", "baselines", "farm", "summary"} <= result.keys()
    assert result["host"]["cpus"] >= 1 and result["host"]["numpy"] and result["host"]["pyzmq"]
    assert {"echo", "rtt", "copy"} <= result["baselines"].keys()
    assert "if4_b1" in result["baselines"]["echo"]
    assert _bad_numbers(result) == []

    farm = result["farm"]
    assert {"routing", "pipelined", "latency", "sync_finished", "memcpy", "start", "idle_cpu"} <= (
        farm.keys()
    )
    for cards in ("1_card", "8_cards"):
        for k in (1, 4, 16):
            entry = farm["routing"][cards][f"if{k}"]
            assert entry["measured"] > 0 and entry["baseline"] > 0 and entry["ratio"] > 0
            assert entry["in_flight"] == k
    assert isinstance(farm["routing"]["8_cards"]["if16"]["meets_target"], bool)
    assert farm["pipelined"]["8_cards"]["measured"] > 0
    assert isinstance(farm["pipelined"]["8_cards"]["meets_target"], bool)
    lat = farm["latency"]
    assert 0 < lat["p50_us"] <= lat["p90_us"] <= lat["p99_us"] and lat["ratio"] > 0
    assert farm["sync_finished"]["measured"] > 0
    for size in ("1MiB", "16MiB"):
        for kind in ("h2d", "d2h"):
            assert farm["memcpy"][size][kind]["measured"] > 0
            assert farm["memcpy"][size][kind]["ratio"] > 0
    for n in ("4_cards", "16_cards"):
        start = farm["start"][n]
        assert start["measured"] > 0 and start["stop_s"] > 0
        assert start["leftover_shm"] == 0 and start["killed"] is False
    assert farm["idle_cpu"]["cards"] == 4 and farm["idle_cpu"]["measured"] >= 0

    entries = [e for r in farm["routing"].values() for e in r.values()]
    entries += [*farm["pipelined"].values(), lat, farm["sync_finished"], farm["idle_cpu"]]
    entries += [e for both in farm["memcpy"].values() for e in both.values()]
    entries += list(farm["start"].values())
    for item in entries:
        _check_rounds(item, item.get("target") or item["unit"], 2)
    assert farm["start"]["4_cards"]["stop_s_min"] <= farm["start"]["4_cards"]["stop_s_max"]

    assert result["summary"], "summary rows"
    for row in result["summary"]:
        assert {"metric", "measured", "baseline", "ratio", "target", "met"} <= row.keys()
        assert row["met"] in (True, False, None)
        if row["target"] is not None:
            assert isinstance(row["met"], bool), row

    # nothing of this run is left behind
    assert _processes_mentioning(tag) == []
    assert glob.glob(f"/dev/shm/npufarm-{tag}*") == []
    for config in glob.glob("/tmp/nfb-*/farm.toml"):
        assert tag not in Path(config).read_text()
