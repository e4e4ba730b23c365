"""The farm benchmark's result schema: entries, the issue's targets, and the summary table.

Every entry under ``farm`` carries ``measured``, ``unit``, ``baseline``, ``ratio``, ``target`` and
``meets_target`` (``None`` where the issue sets no target) plus measurement-specific keys;
:func:`summarize` turns a result into rows and :func:`markdown_table` renders them.
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
    "p50_vs_rtt",
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


def p50_vs_rtt(
    times_s: np.ndarray, raw_rtt: dict[str, Any] | None, target: float, note: str, samples: int
) -> dict[str, Any]:
    """A latency entry: p50 in µs against the raw 3-hop RTT p50, met if ratio <= target."""
    stats = percentiles_us(times_s * 1e6)
    baseline = raw_rtt["p50_us"] if raw_rtt else None
    ratio = ratio_of(stats["p50_us"], baseline)
    return entry(
        stats["p50_us"],
        unit="us",
        baseline=baseline,
        target=f"p50 ratio <= {target}{note}",
        met=None if ratio is None else ratio <= target,
        samples=samples,
        **stats,
    )


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


def _row(metric: str, item: dict[str, Any] | None) -> dict[str, Any] | None:
    if not item:
        return None
    return {
        "metric": metric,
        "unit": item.get("unit"),
        "measured": item.get("measured"),
        "baseline": item.get("baseline"),
        "ratio": item.get("ratio"),
        "target": item.get("target"),
        "met": item.get("meets_target"),
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
        rows.append(_row(f"farm start {key.replace('_', ' ')}", item))
        if item.get("broker_uptime_at_announce_s") is not None:
            rows.append(
                {
                    "metric": f"  broker's own start figure, {key.replace('_', ' ')}",
                    "unit": "s",
                    "measured": item["broker_uptime_at_announce_s"],
                    "baseline": None,
                    "ratio": None,
                    "target": None,
                    "met": None,
                }
            )
        if item.get("stop_s") is not None:
            rows.append(
                {
                    "metric": f"  farm stop {key.replace('_', ' ')}",
                    "unit": "s",
                    "measured": item["stop_s"],
                    "baseline": None,
                    "ratio": None,
                    "target": None,
                    "met": None,
                }
            )
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


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary rows as a markdown table (numbers formatted by unit, unmet targets bold)."""
    lines = [
        "| metric | unit | measured | raw baseline | ratio | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in summary:
        unit = r.get("unit")
        lines.append(
            f"| {r['metric']} | {unit or ''} | {_fmt(r['measured'], unit)} | "
            f"{_fmt(r['baseline'], unit)} | {_fmt(r['ratio'])} | {r['target'] or '-'} | "
            f"{_fmt(r['met'])} |"
        )
    return "\n".join(lines)
