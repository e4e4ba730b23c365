"""The pure side of :mod:`benchmarks.compare`: benchmark JSON flattened into metrics, each side's
median/min/max, the NEW/OLD ratio of medians, and the aligned table.

A metric is a finite number of the JSON document keyed by its dotted path
(``farm.routing.8_cards.if16.measured``); lists are skipped, since a list position is no stable
name for a metric.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "compare_metrics",
    "flatten_metrics",
    "markdown_table",
    "ratio_of_medians",
    "sample_stats",
    "select_metrics",
]


def flatten_metrics(doc: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number of a JSON document, keyed by its dotted path (``farm.latency.p50_us``).

    Booleans, strings, None and lists (and whatever they hold) are skipped: a list position is no
    stable name for a metric. Key order follows the document.
    """
    out: dict[str, float] = {}
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            out.update(flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(doc, int | float) and not isinstance(doc, bool) and math.isfinite(doc):
        out[prefix] = float(doc)
    return out


def select_metrics(metrics: Mapping[str, float], patterns: Iterable[str]) -> dict[str, float]:
    """The metrics whose key matches one of the fnmatch ``patterns`` (all when there are none)."""
    patterns = list(patterns)
    if not patterns:
        return dict(metrics)
    return {k: v for k, v in metrics.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def sample_stats(values: list[float]) -> dict[str, float | int] | None:
    """Median, min, max and count of one side's samples of a metric; None without samples."""
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratio_of_medians(new: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> float | None:
    """NEW median / OLD median, or None when a side is missing or the OLD median is 0."""
    if new is None or old is None or old["median"] == 0:
        return None
    return round(new["median"] / old["median"], 4)


def compare_metrics(
    old_runs: list[dict[str, float]], new_runs: list[dict[str, float]]
) -> dict[str, Any]:
    """Per metric, the stats of each side and their ratio; plus the metrics one side lacks.

    ``old_runs`` and ``new_runs`` are flattened results, one per successful run. A metric present
    on a side in some runs only is compared over the runs that have it (``n`` says how many).
    """
    keys: dict[str, None] = {}
    for run in [*old_runs, *new_runs]:
        keys.update(dict.fromkeys(run))
    metrics: dict[str, Any] = {}
    missing: dict[str, list[str]] = {"old": [], "new": []}
    for key in keys:
        old = sample_stats([r[key] for r in old_runs if key in r])
        new = sample_stats([r[key] for r in new_runs if key in r])
        for side, stats in (("old", old), ("new", new)):
            if stats is None:
                missing[side].append(key)
        metrics[key] = {"old": old, "new": new, "ratio": ratio_of_medians(new, old)}
    return {"metrics": metrics, "missing": missing}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cells(key: str, entry: Mapping[str, Any]) -> list[str]:
    cells = [key]
    for side in ("old", "new"):
        stats = entry[side]
        if stats is None:
            cells += ["missing", "", ""]
        else:
            cells += [_number(stats["median"]), _number(stats["min"]), _number(stats["max"])]
    ratio = entry["ratio"]
    cells.append("-" if ratio is None else f"{ratio:.3f}")
    return cells


def markdown_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """An aligned markdown table: metric, median/min/max of each side, NEW/OLD of medians."""
    header = ["metric", "old median", "old min", "old max", "new median", "new min", "new max"]
    header.append("new/old")
    rows = [header] + [_cells(key, entry) for key, entry in metrics.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]])
    return "\n".join([line(rows[0]), rule + "|", *(line(r) for r in rows[1:])])
