"""Interleaved rounds: run a benchmark's steps round after round, and reduce the rounds to entries.

A box shared with other work drifts by tens of percent within a minute, so one window says little
and a ratio of two windows taken a minute apart says less. :func:`run_rounds` runs an ordered list
of steps (a farm measurement, then its raw baseline, then the next pair ...) ``rounds`` times, so
slow drift hits a figure and its baseline alike; :func:`rounds_entry` turns one figure's rounds
(and its baseline's) into a result entry: the **median** of the rounds as ``measured`` /
``baseline``, their min and max, the ratio of the medians, and the min/max of the per-round
ratios (round *i*'s figure over round *i*'s baseline). A target is judged on the medians.

Shared by :mod:`benchmarks.core` and :mod:`benchmarks.cabi`.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.core_report import entry, ratio_of

__all__ = [
    "Step",
    "Target",
    "emit",
    "at_least",
    "at_most",
    "median_fields",
    "paired_ratios",
    "rounds_entry",
    "run_rounds",
    "spread",
]

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Any]]  # (name, measurement): one step of a round


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def run_rounds(steps: Sequence[Step], rounds: int, label: str = "") -> dict[str, list[Any]]:
    """Run every ``(name, fn)`` step in order, ``rounds`` times; each name's results in order.

    Names may repeat only across rounds, not within one (a step's results are its own list).
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    names = [name for name, _ in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"step names repeat: {names}")
    out: dict[str, list[Any]] = {name: [] for name in names}
    for n in range(rounds):
        started = time.perf_counter()
        for name, fn in steps:
            out[name].append(fn())
        log.info("%s round %d/%d in %.2f s", label, n + 1, rounds, time.perf_counter() - started)
    return out


# --------------------------------------------------------------------------------------------
# statistics of rounds
# --------------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median (rounded to 3 places), min and max of a non-empty sequence of numbers."""
    if not values:
        raise ValueError("no values")
    return {
        "median": round(float(statistics.median(values)), 3),
        "min": min(values),
        "max": max(values),
    }


def paired_ratios(
    measured: Sequence[float], baseline: Sequence[float] | None
) -> list[float] | None:
    """Round *i*'s figure over round *i*'s baseline; None unless both sides have every round
    and no baseline is 0."""
    if not baseline or len(baseline) != len(measured) or not all(baseline):
        return None
    return [m / b for m, b in zip(measured, baseline, strict=True)]


def median_fields(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One record from several rounds' records with the same keys: numbers become their median
    (a value all rounds agree on stays as it is), nested mappings are reduced alike, anything
    else is kept when all rounds agree and listed per round otherwise.

    Meant for the context figures beside a measurement (CPU %, sample counts, percentiles);
    fields where the median is the wrong summary (a leak count, a kill flag) are the caller's.
    """
    if not records:
        return {}
    out: dict[str, Any] = {}
    for key in records[0]:
        values = [r.get(key) for r in records]
        first = values[0]
        if all(v == first for v in values):
            out[key] = first
        elif all(isinstance(v, Mapping) for v in values):
            out[key] = median_fields(values)  # type: ignore[arg-type]
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = round(float(statistics.median(values)), 3)  # type: ignore[type-var]
        else:
            out[key] = values
    return out


# --------------------------------------------------------------------------------------------
# targets and entries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on an entry's ``ratio`` (of the medians) or on its ``measured`` median."""

    bound: float
    upper: bool  # met when the value is <= bound (< when strict); else >= bound (> when strict)
    on: str = "ratio"  # "ratio" or "measured"
    strict: bool = False
    text: str | None = None  # how the table states it; default "ratio <= 1.2"

    def describe(self) -> str:
        if self.text is not None:
            return self.text
        op = ("<" if self.upper else ">") + ("" if self.strict else "=")
        return f"{self.on} {op} {self.bound}"

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        if self.upper:
            return value < self.bound if self.strict else value <= self.bound
        return value > self.bound if self.strict else value >= self.bound


def at_most(
    bound: float, on: str = "ratio", text: str | None = None, strict: bool = False
) -> Target:
    """A :class:`Target` met when the value is at most ``bound`` (below it when ``strict``)."""
    return Target(bound, True, on, strict, text)


def at_least(
    bound: float, on: str = "ratio", text: str | None = None, strict: bool = False
) -> Target:
    """A :class:`Target` met when the value is at least ``bound`` (above it when ``strict``)."""
    return Target(bound, False, on, strict, text)


def rounds_entry(
    measured: Sequence[float],
    baseline: Sequence[float] | None = None,
    *,
    unit: str,
    target: Target | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A result entry (:func:`benchmarks.core_report.entry`) from one figure's rounds.

    ``measured`` / ``baseline`` are the medians of the rounds, ``ratio`` the ratio of those
    medians; beside them ``measured_min`` / ``measured_max``, ``baseline_min`` /
    ``baseline_max``, ``ratio_min`` / ``ratio_max`` (over the per-round ratios, when both sides
    have every round) and the rounds themselves (``measured_rounds``, ``baseline_rounds``).
    ``target`` is judged on the medians.
    """
    mine = spread(measured)
    base = spread(baseline) if baseline else None
    base_median = base["median"] if base else None
    ratios = paired_ratios(measured, baseline)
    judged = {"ratio": ratio_of(mine["median"], base_median), "measured": mine["median"]}
    return entry(
        mine["median"],
        unit=unit,
        baseline=base_median,
        target=target.describe() if target else None,
        met=target.met(judged[target.on]) if target else None,
        measured_min=mine["min"],
        measured_max=mine["max"],
        baseline_min=base["min"] if base else None,
        baseline_max=base["max"] if base else None,
        ratio_min=round(min(ratios), 3) if ratios else None,
        ratio_max=round(max(ratios), 3) if ratios else None,
        measured_rounds=list(measured),
        baseline_rounds=list(baseline) if baseline else None,
        **extra,
    )


def emit(result: dict, table: str, out: str | None, markdown: bool) -> None:
    """A benchmark's output: the JSON to ``out`` (if given) and to stdout with the table on
    stderr, or only the table on stdout with ``markdown``."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    if markdown:
        print(table)
    else:
        print(text)
        print(table, file=sys.stderr)
