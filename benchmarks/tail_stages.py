"""Where a modelled task's latency goes, the pure part of :mod:`benchmarks.tail`: the record
of one request, its stages, the tail decomposition, the table, and the run-queue readings.

The stages of a request, on the host's one CLOCK_MONOTONIC (they add up to end-to-end)::

    client: start ─pre_submit─▶ stamp (execute_async)                 (input copy, the submit)
    card:   stamp ─model_wait─▶ modelled start ─model_run─▶ modelled end
                  ─lead─▶ planned send (≤ 0: sent early) ─timer_late─▶ timer fired
                  ─card_flush─▶ COMPLETE sent                         (the card loop's turn)
    broker + client: ─way_back─▶ client received the rows            (broker hop, client wake)
    client: ─sync_return─▶ synchronize_stream returned ─post─▶ output copied (end)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = [
    "BANDS",
    "INFO",
    "MODELLED_MS",
    "RECORD",
    "STAGES",
    "decompose",
    "rounded",
    "run_queue",
    "schedstat_ns",
    "stages",
    "table",
]

MODELLED_MS = 5.0
BANDS = (50.0, 90.0, 99.0, 99.9)
STAGES = (
    "pre_submit",
    "model_wait",
    "model_run",
    "lead",
    "timer_late",
    "card_flush",
    "way_back",
    "sync_return",
    "post",
)
RECORD = np.dtype(
    [(name, "f8") for name in ("start", "stamp", "m_start", "m_end", "received", "due")]
    + [(name, "f8") for name in ("fired", "flushed", "receipt", "sync_ret", "done")]
    + [(name, "f8") for name in ("card_rq", "card_gc", "client_rq")]
    + [("io_thread", "?"), ("gc", "?")]
)
"""One request: client and card times (``time.monotonic()``, s); the card loop's run-queue
wait over the sleep its timer ended and its GC time since the previous timer, the client
thread's run-queue wait during the sync (s); who received the completion; a client GC during
the request."""
INFO = ("way_in", "card_rq", "card_gc", "client_rq")
"""Shown apart, not part of the sum: the way to the card (absorbed by the model) and the
scheduling and GC waits that explain part of ``timer_late`` and ``way_back``."""

# --------------------------------------------------------------------------------------------
# the decomposition (pure)
# --------------------------------------------------------------------------------------------


def stages(records: np.ndarray) -> dict[str, np.ndarray]:
    """Each stage's duration (ms) per request, ``e2e`` and the :data:`INFO` figures; the
    stages add up to ``e2e``."""
    r = records
    bounds = ("start", "stamp", "m_start", "m_end", "due", "fired", "flushed", "receipt")
    bounds += ("sync_ret", "done")
    out = {name: (r[b] - r[a]) * 1e3 for name, a, b in zip(STAGES, bounds, bounds[1:])}
    out["e2e"] = (r["done"] - r["start"]) * 1e3
    out["way_in"] = (r["received"] - r["stamp"]) * 1e3
    for name in INFO[1:]:
        out[name] = r[name] * 1e3
    return out


def rounded(value: float) -> float:
    return round(float(value), 4)


def decompose(records: np.ndarray, modelled_ms: float = MODELLED_MS) -> dict[str, Any]:
    """The tail of ``records`` (:data:`RECORD`) stage by stage: end-to-end percentiles and
    ratios to ``modelled_ms``; each stage's median; per band (p50 ... p99.9) the requests at
    or above it: their count, mean e2e, mean per stage, its excess over the stage's median,
    the stage with the largest excess, the share received by the I/O thread and overlapping a
    client GC."""
    if records.size == 0:
        return {"requests": 0}
    parts = stages(records)
    e2e = parts["e2e"]
    medians = {name: float(np.median(values)) for name, values in parts.items()}
    out: dict[str, Any] = {
        "requests": int(records.size),
        "modelled_ms": modelled_ms,
        "e2e_ms": {f"p{q:g}": rounded(np.percentile(e2e, q)) for q in BANDS},
        "ratio": {f"p{q:g}": rounded(np.percentile(e2e, q) / modelled_ms) for q in BANDS},
        "median_ms": {name: rounded(value) for name, value in medians.items()},
        "io_thread_share": rounded(records["io_thread"].mean()),
        "gc_share": rounded(records["gc"].mean()),
        "bands": {},
    }
    for q in BANDS:
        tail = e2e >= np.percentile(e2e, q)
        mean = {name: float(values[tail].mean()) for name, values in parts.items()}
        excess = {name: rounded(mean[name] - medians[name]) for name in (*STAGES, *INFO)}
        top = max(STAGES, key=lambda name: excess[name])
        out["bands"][f"p{q:g}"] = {
            "requests": int(tail.sum()),
            "threshold_ms": rounded(np.percentile(e2e, q)),
            "mean_ms": {name: rounded(value) for name, value in mean.items()},
            "excess_ms": excess,
            "top": top,
            "io_thread_share": rounded(records["io_thread"][tail].mean()),
            "gc_share": rounded(records["gc"][tail].mean()),
        }
    return out


def table(results: dict[str, Any]) -> str:
    """A markdown table: per case and band, e2e, the three largest stage excesses and the
    run-queue and GC waits' excesses."""
    lines = ["| case | band | e2e ms (×model) | n | largest excess over the median (ms) "]
    lines[0] += "| of which: card run queue / card GC / client run queue (ms) |"
    lines.append("|---|---|---|---|---|---|")
    for case, result in results.items():
        for band, entry in result.get("bands", {}).items():
            ranked = sorted(STAGES, key=lambda n: -entry["excess_ms"][n])[:3]
            text = ", ".join(f"{n} {entry['excess_ms'][n]:+.3f}" for n in ranked)
            ratio = result["ratio"][band]
            waits = " / ".join(f"{entry['excess_ms'][n]:+.3f}" for n in INFO[1:])
            lines.append(
                f"| {case} | {band} | {entry['threshold_ms']:.3f} (×{ratio:.3f}) "
                f"| {entry['requests']} | {text} | {waits} |"
            )
    return "\n".join(lines)


def schedstat_ns(pid: int) -> tuple[int, int]:
    """(ns waited on a run queue, timeslices) summed over a process's threads (0s if gone)."""
    waited = slices = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as handle:
                fields = handle.read().split()
        except OSError:
            continue
        waited, slices = waited + int(fields[1]), slices + int(fields[2])
    return waited, slices


def run_queue(before: dict, after: dict, wall_s: float) -> dict[str, dict[str, float]]:
    """Per group of pids: run-queue wait (ms per s of run) and mean wait per timeslice (µs)
    between two ``{group: {pid: (ns waited, slices)}}`` snapshots."""
    out = {}
    for group, pids in after.items():
        waited = sum(w - before.get(group, {}).get(p, (0, 0))[0] for p, (w, _) in pids.items())
        slices = sum(s - before.get(group, {}).get(p, (0, 0))[1] for p, (_, s) in pids.items())
        out[group] = {
            "processes": len(pids),
            "wait_ms_per_s": rounded(waited / 1e6 / max(wall_s, 1e-9)),
            "wait_us_per_slice": rounded(waited / 1e3 / max(slices, 1)),
        }
    return out
