"""benchmarks.rounds: running steps in interleaved rounds, and the statistics of the rounds."""

from __future__ import annotations

import pytest

from benchmarks import rounds


def test_run_rounds_interleaves_steps_in_order():
    calls: list[str] = []

    def step(name: str):
        def fn():
            calls.append(name)
            return len(calls)

        return fn

    out = rounds.run_rounds([("farm", step("farm")), ("raw", step("raw"))], 3)
    assert calls == ["farm", "raw"] * 3
    assert out == {"farm": [1, 3, 5], "raw": [2, 4, 6]}
    with pytest.raises(ValueError):
        rounds.run_rounds([("a", step("a"))], 0)
    with pytest.raises(ValueError):
        rounds.run_rounds([("a", step("a")), ("a", step("a"))], 1)


def test_spread_and_paired_ratios():
    assert rounds.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    assert rounds.spread([5]) == {"median": 5.0, "min": 5, "max": 5}
    with pytest.raises(ValueError):
        rounds.spread([])
    assert rounds.paired_ratios([2.0, 6.0], [1.0, 3.0]) == [2.0, 2.0]
    assert rounds.paired_ratios([2.0, 6.0], [1.0]) is None  # not every round has a baseline
    assert rounds.paired_ratios([2.0], [0.0]) is None
    assert rounds.paired_ratios([2.0], None) is None


def test_median_fields_reduces_numbers_and_keeps_agreement():
    records = [
        {"cpu": {"broker": 10.0, "client": 1}, "threads": 1, "source": "a", "tasks": 3},
        {"cpu": {"broker": 30.0, "client": 1}, "threads": 1, "source": "b", "tasks": 1},
        {"cpu": {"broker": 20.0, "client": 1}, "threads": 1, "source": "a", "tasks": 2},
    ]
    out = rounds.median_fields(records)
    assert out == {
        "cpu": {"broker": 20.0, "client": 1},
        "threads": 1,  # all agree: kept as it is (an int stays an int)
        "source": ["a", "b", "a"],  # strings that differ are listed per round
        "tasks": 2.0,
    }
    assert rounds.median_fields([]) == {}


def test_rounds_entry_medians_spread_ratio_and_target():
    e = rounds.rounds_entry(
        [10.0, 30.0, 12.0],
        [20.0, 20.0, 10.0],
        unit="tasks/s",
        target=rounds.at_least(0.8),
        in_flight=16,
    )
    assert (e["measured"], e["measured_min"], e["measured_max"]) == (12.0, 10.0, 30.0)
    assert (e["baseline"], e["baseline_min"], e["baseline_max"]) == (20.0, 10.0, 20.0)
    assert e["ratio"] == 0.6  # ratio of the medians, not the median of the ratios
    assert (e["ratio_min"], e["ratio_max"]) == (0.5, 1.5)  # per round: 0.5, 1.5, 1.2
    assert e["target"] == "ratio >= 0.8" and e["meets_target"] is False
    assert e["measured_rounds"] == [10.0, 30.0, 12.0] and e["in_flight"] == 16
    assert e["unit"] == "tasks/s"

    alone = rounds.rounds_entry([1.0, 2.0], unit="s")
    assert alone["baseline"] is None and alone["ratio"] is None and alone["ratio_min"] is None
    assert alone["target"] is None and alone["meets_target"] is None and alone["measured"] == 1.5


def test_targets_on_ratio_or_measured():
    assert rounds.at_most(1.2).describe() == "ratio <= 1.2"
    assert rounds.at_least(0.8).describe() == "ratio >= 0.8"
    strict = rounds.at_most(0.5, on="measured", strict=True, text="< 0.5 % per card")
    assert strict.describe() == "< 0.5 % per card"
    assert strict.met(0.49) is True and strict.met(0.5) is False and strict.met(None) is None
    assert rounds.at_most(0.5).met(0.5) is True and rounds.at_least(2, strict=True).met(2) is False
    e = rounds.rounds_entry(
        [90_000.0, 110_000.0, 120_000.0],
        [10.0, 10.0, 10.0],
        unit="tasks/s",
        target=rounds.at_least(100_000, on="measured", text=">= 100,000 tasks/s"),
    )
    assert e["meets_target"] is True and e["target"] == ">= 100,000 tasks/s"
