"""The farm benchmark's result schema: entries, the issue's targets, and the summary table.

Every entry under ``farm`` carries ``measured``, ``unit``, ``baseline``, ``ratio``, ``target`` and
``meets_target`` (``None`` where the issue sets no target) plus measurement-specific keys; entries
made from interleaved rounds (:func:`benchmarks.rounds.rounds_entry`) also carry the rounds'
``*_min`` / ``*_max``. :func:`summarize` turns a result into rows and :func:`markdown_table`
renders them, each figure as "median (min–max)".
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "IDLE_CPU_TARGET",
    "LATENCY_RATIO_TARGET",
    "MEMCPY_RATIO_TARGET",
    "PIPELINED_TARGET_TPS",
    "ROUTING_RATIO_TARGET",
    "START_64_TARGET_S",
    "SYNC_DONE_RATIO_TARGET",
    "entry",
    "markdown_table",
    "percentiles_us",
    "ratio_of",
    "summarize",
]

# targets from the issue
ROUTING_RATIO_TARGET = 0.80  # of the raw 3-hop echo rate, at 16 in flight
PIPELINED_TARGET_TPS = 100_000.0  # async tasks/s on 8 cards, batched
LATENCY_RATIO_TARGET = 1.20  # added latency per async task vs raw 3-hop RTT p50
SYNC_DONE_RATIO_TARGET = 0.10  # "no round trip": far below one raw RTT
MEMCPY_RATIO_TARGET = 0.80  # of a warm raw copy
START_64_TARGET_S = 1.5
IDLE_CPU_TARGET = 0.5  # percent of one core, per card


# --------------------------------------------------------------------------------------------
# entries
# --------------------------------------------------------------------------------------------


def percentiles_us(values: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean of ``values`` (already in microseconds), rounded."""
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50_us": round(float(p50), 2),
        "p90_us": round(float(p90), 2),
        "p99_us": round(float(p99), 2),
        "mean_us": round(float(values.mean()), 2),
    }


def ratio_of(measured: float | None, baseline: float | None) -> float | None:
    """``measured / baseline`` rounded, or None when either is missing (or the baseline is 0)."""
    if measured is None or not baseline:
        return None
    return round(measured / baseline, 3)


def entry(
    measured: float | None,
    *,
    unit: str,
    baseline: float | None = None,
    target: str | None = None,
    met: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A result entry: measured, baseline, ratio, target and meets_target (None = no target)."""
    return {
        "measured": measured,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio_of(measured, baseline),
        "target": target,
        "meets_target": met,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------


_SPREAD_KEYS = ("measured_min", "measured_max", "baseline_min", "baseline_max")


def _row(metric: str, item: dict[str, Any] | None) -> dict[str, Any] | None:
    if not item:
        return None
    row = {
        "metric": metric,
        "unit": item.get("unit"),
        "measured": item.get("measured"),
        "baseline": item.get("baseline"),
        "ratio": item.get("ratio"),
        "target": item.get("target"),
        "met": item.get("meets_target"),
    }
    row.update({k: item.get(k) for k in (*_SPREAD_KEYS, "ratio_min", "ratio_max")})
    return row


def _side_row(metric: str, item: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A row for a side figure of an entry (``key``, with ``key_min`` / ``key_max`` when there
    were rounds): no baseline, no target; None when the entry lacks it."""
    if item.get(key) is None:
        return None
    return {
        "metric": metric,
        "unit": "s",
        "measured": item[key],
        "measured_min": item.get(f"{key}_min"),
        "measured_max": item.get(f"{key}_max"),
        "baseline": None,
        "ratio": None,
        "target": None,
        "met": None,
    }


def _cards(n: int) -> str:
    return f"{n} card" + ("s" if n != 1 else "")


def _threads(item: dict[str, Any]) -> str:
    return ", thread per card" if item.get("threads", 1) > 1 else ""


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the summary table, in a fixed order; missing measurements are skipped."""
    farm = result.get("farm", {})
    rows: list[dict[str, Any] | None] = []
    for routing in farm.get("routing", {}).values():
        for item in routing.values():
            label = f"routing {_cards(item['cards'])}, {item['in_flight']} in flight"
            rows.append(_row(label + _threads(item), item))
    for item in farm.get("pipelined", {}).values():
        label = (
            f"pipelined bursts of {item['burst']}, {_cards(item['cards'])} x "
            f"{item['streams_per_card']} streams"
        )
        rows.append(_row(label + _threads(item), item))
    rows.append(_row("latency per async task p50", farm.get("latency")))
    rows.append(_row("sync on a finished stream p50", farm.get("sync_finished")))
    for size, both in farm.get("memcpy", {}).items():
        rows.append(_row(f"memcpy H2D {size}", both.get("h2d")))
        rows.append(_row(f"memcpy D2H {size}", both.get("d2h")))
    for key, item in farm.get("start", {}).items():
        name = key.replace("_", " ")
        rows.append(_row(f"farm start {name}", item))
        figure = f"  broker's own start figure, {name}"
        rows.append(_side_row(figure, item, "broker_uptime_at_announce_s"))
        rows.append(_side_row(f"  farm stop {name}", item, "stop_s"))
    rows.append(_row("idle CPU per card (mean)", farm.get("idle_cpu")))
    return [r for r in rows if r is not None]


def _fmt(value: Any, unit: str | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float | int):
        if unit == "tasks/s":
            return f"{value:,.0f}"
        if unit == "us":
            return f"{value:.1f}"
        if unit == "s":
            return f"{value:.3f}"
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    return str(value)


def _cell(value: Any, low: Any, high: Any, unit: str | None = None) -> str:
    """``value`` formatted by unit, with `` (low–high)`` when the rounds spread."""
    text = _fmt(value, unit)
    if value is None or low is None or high is None or low == high:
        return text
    return f"{text} ({_fmt(low, unit)}–{_fmt(high, unit)})"


def markdown_table(summary: list[dict[str, Any]], rounds: int | None = None) -> str:
    """The summary rows as a markdown table: each figure as "median (min–max)" over the rounds
    (the range left out where all rounds agree), numbers formatted by unit, unmet targets bold.
    ``rounds``, when given, is named in the header."""
    of = f"median of {rounds} (min–max)" if rounds else "median (min–max)"
    lines = [
        f"| metric | unit | measured, {of} | raw baseline, {of} | ratio of medians "
        "(min–max of rounds) | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in summary:
        unit = r.get("unit")
        measured = _cell(r["measured"], r.get("measured_min"), r.get("measured_max"), unit)
        baseline = _cell(r["baseline"], r.get("baseline_min"), r.get("baseline_max"), unit)
        ratio = _cell(r["ratio"], r.get("ratio_min"), r.get("ratio_max"))
        lines.append(
            f"| {r['metric']} | {unit or ''} | {measured} | {baseline} | {ratio} | "
            f"{r['target'] or '-'} | {_fmt(r['met'])} |"
        )
    return "\n".join(lines)
