"""Benchmark results from request samples: summaries, fault windows and the output files (pure).

``npufarm bench`` (:mod:`loadtest.loadgen`) records one sample per request — a row of
:data:`SAMPLE_DTYPE`: ``phase, slot, card, code, intended_s, start_s, end_s`` with times on the
host's ``time.monotonic()`` clock. Latency is ``end_s - intended_s``: in open-loop mode the
intended send time comes from the arrival schedule, so a request that waited behind a stalled one
carries its wait (no coordinated omission); in closed-loop mode ``intended_s == start_s``.
Nothing here reads a clock, talks to a farm or spawns anything. The names every part shares
(:data:`SCHEMA`, :data:`SAMPLE_DTYPE`, :data:`DEFAULT_PERCENTILES`, :func:`as_samples`,
:func:`latency_ms`, ...) live in :mod:`loadtest.schema` and are re-exported here.

Definitions: a sample is *in* a window ``[w0, w1)`` when its ``intended_s`` is; ``completed``
counts code 0, ``errors`` counts the others by ACL code; latency figures are over completed
requests; *good* = completed within ``slo_ms`` (every completed one without an SLO);
``throughput_rps`` = completed / window, ``goodput_rps`` = good / window. A *bad* sample (an
error, or over the SLO) is known to the client at its end (errors) or once the SLO has passed
(``intended_s + slo``). A fault window groups the fault-log events of one rule on one card:
from the first event to the last, or to ``first + detail.duration_s`` if later; a single event
without a duration (a disconnect, a crash) lasts until its card recovered (``end_by``
``"recovery"``), or to the end of the measured window if it never did (``"run end"``), or stays
an instant if no request noticed it (``"instant"``). Of the samples
in the measured window, *before* it are those that ended before it started, *during* it those
in flight at its start or sent until its end (a request sent just before a stall is caught by
it), *after* it those sent after its end; rates are over the three spans. Each of the three
has the figures of all cards, ``per_card``, and ``others``: the cards other than the faulted one
together, so a fault's own card is never blended with the rest.
``time_to_detect_s`` = first bad sample of that card known at/after the window start − start;
``time_to_recover_s`` = end of the first good sample of that card, after the first bad one, that
starts a run of :data:`RECOVERY_RUN` good samples in a row (in order of completion; a shorter run
counts when it reaches the last sample of the card before the horizon) − start. A stray late SLO
miss on a recovered card thus does not erase the recovery. Both None without a bad sample;
recover None if no such run followed.

Result schema ``"npufarm.bench/1"`` (JSON; every time in seconds since the bench started unless
named otherwise; card keys are strings)::

    {"schema": "npufarm.bench/1",
     "config": {BenchConfig fields},
     "farm": {"name", "endpoint", "time_scale", "cards": [device ids driven], "card_count"},
     "clock": {"bench_start_monotonic_s", "farm_start_monotonic_s"},
     "phases": [{"name": "c4" | "r200", "mode": "closed" | "open",
                 "concurrency": int | None, "rate": float | None,   # rate: requests/s asked
                 "start_s", "end_s",                               # the measured window
                 "interrupted": bool, "missed": int,   # open loop: scheduled, never sent
                 **summary,                            # see below
                 "per_card": {"0": summary without per_card, ...},
                 "generator": {"requested_rps", "achieved_rps", "lag_ms": {"p50", "p99", "max"},
                               "issue_gap_ms": {"p50", "p99", "max"},
                               "cpu_s", "cpu_us_per_request", "worker_cpu_util": [...]},
                 "fault_windows": [{"rule", "card", "kind", "code", "name", "events",
                                    "params": {"factor", "duration_s" when the rule has them},
                                    "start_s", "end_s", "end_by", "before": summary + others,
                                    "during": summary + others, "after": summary + others,
                                    "time_to_detect_s", "time_to_recover_s"}]}],
     "generator": {"workers", "slots", "start_method", "setup_s", "peak_achieved_rps",
                   "lag_ms_p50_max", "max_worker_cpu_util", "saturated"},
     "faults": [fault-log events of the run, each plus "bench_t_s"],
     "samples_file": "requests.jsonl" | None,
     "accuracy": {"model", "targets": {"p50": 0.05, "p99": 0.1}, "modelled_ms": {"0": ms},
                  "reason": why there is no figure | None, "completion_lead_us": {"0": µs}}}

    Each phase also has ``"accuracy"``: None, or ``{"modelled_ms", "requests", "p50_ms",
    "p50_ratio", "p99_ms", "p99_ratio", "within", "per_card": {"0": the same}}``: the requests'
    own latency (end − start) against the model (:mod:`loadtest.accuracy`, added by the bench).

    summary = {"requests", "completed", "errors": {"507046": n}, "error_rate", "duration_s",
               "throughput_rps", "goodput_rps", "slo_ms",
               "latency_ms": {"p50", "p90", "p95", "p99", "p99.9", "max", "mean"}}

Files (written by :mod:`loadtest.files`, re-exported here): ``result.json``
(:func:`write_json`), ``summary.csv`` (:func:`write_csv`: one row per phase with ``card =
"all"``, then one per card of it), ``requests.jsonl`` (:func:`write_jsonl`: one request a line,
``{"phase", "slot", "card", "code", "intended_s", "start_s", "end_s", "latency_ms"}``, times
since the bench started, ``phase`` the index into ``phases``; warm-up requests are included:
those intended before their phase's ``start_s``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from loadtest.files import csv_columns, read_json, write_csv, write_json, write_jsonl
from loadtest.schema import (
    DEFAULT_PERCENTILES,
    PARAMS,
    SAMPLE_DTYPE,
    SCHEMA,
    as_samples,
    latency_ms,
    percentile_key,
)

__all__ = [
    "SCHEMA",
    "SAMPLE_DTYPE",
    "DEFAULT_PERCENTILES",
    "PARAMS",
    "as_samples",
    "percentile_key",
    "latency_ms",
    "summarize",
    "group_fault_events",
    "fault_title",
    "fault_windows",
    "generator_figures",
    "generator_summary",
    "phase_result",
    "build_result",
    "write_json",
    "read_json",
    "write_csv",
    "csv_columns",
    "write_jsonl",
]


def _num(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _latency_figures(values_ms: np.ndarray, percentiles: Sequence[float]) -> dict[str, Any]:
    keys = [percentile_key(q) for q in percentiles]
    if values_ms.size == 0:
        return {**dict.fromkeys(keys), "max": None, "mean": None}
    found = np.percentile(values_ms, list(percentiles)) if percentiles else []
    out = {key: _num(v, 4) for key, v in zip(keys, found)}
    return {**out, "max": _num(values_ms.max(), 4), "mean": _num(values_ms.mean(), 4)}


def _figures(s: np.ndarray, duration_s: float, percentiles: Sequence[float], slo_ms: float | None):
    ok = s["code"] == 0
    lat = latency_ms(s)
    good = ok & (lat <= slo_ms) if slo_ms is not None else ok
    codes, counts = np.unique(s["code"][~ok], return_counts=True)
    n, completed = int(s.size), int(ok.sum())
    rate = (lambda k: _num(k / duration_s, 3)) if duration_s > 0 else (lambda k: None)
    return {
        "requests": n,
        "completed": completed,
        "errors": {str(int(c)): int(k) for c, k in zip(codes, counts)},
        "error_rate": _num((n - completed) / n) if n else None,
        "duration_s": _num(duration_s),
        "throughput_rps": rate(completed),
        "goodput_rps": rate(int(good.sum())),
        "slo_ms": slo_ms,
        "latency_ms": _latency_figures(lat[ok], percentiles),
    }


def summarize(
    samples: np.ndarray,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slo_ms: float | None = None,
    window: tuple[float, float] | None = None,
    *,
    duration_s: float | None = None,
) -> dict[str, Any]:
    """Figures of the samples in ``window`` (``[w0, w1)``; None: all of them, the duration from
    the first intended send to the last end, unless ``duration_s``), plus ``per_card``."""
    samples = as_samples(samples)
    if window is not None:
        t = samples["intended_s"]
        samples = samples[(t >= window[0]) & (t < window[1])]
        duration_s = window[1] - window[0]
    elif duration_s is not None:
        pass
    elif samples.size:
        duration_s = float(samples["end_s"].max() - samples["intended_s"].min())
    else:
        duration_s = 0.0
    result = _figures(samples, duration_s, percentiles, slo_ms)
    result["per_card"] = {
        str(int(card)): _figures(samples[samples["card"] == card], duration_s, percentiles, slo_ms)
        for card in np.unique(samples["card"])
    }
    return result


def _event(e: Any) -> dict[str, Any]:
    return e.to_dict() if hasattr(e, "to_dict") else dict(e)


def fault_title(kind: str, params: Mapping[str, Any] | None = None) -> str:
    """A fault's kind with what sets its strength: ``slow 3×`` (factor 3), ``hang 0.5 s``
    (duration), ``disconnect``; never a count, which is shown apart as events."""
    params = params or {}
    text = str(kind)
    if params.get("factor") is not None:
        text += f" {float(params['factor']):g}×"
    if params.get("duration_s") is not None:
        text += f" {float(params['duration_s']):g} s"
    return text


def group_fault_events(fault_events: Iterable[Any], farm_start_s: float) -> list[dict[str, Any]]:
    """Fault-log events (dicts or ``FaultEvent``) grouped by (rule, card), in start order, with
    absolute ``start_s`` / ``end_s`` (``farm_start_s + t_s``)."""
    groups: dict[tuple[int, int], dict[str, Any]] = {}
    for raw in fault_events:
        e = _event(raw)
        t = farm_start_s + float(e["t_s"])
        duration_s = (e.get("detail") or {}).get("duration_s")
        key = (int(e["rule"]), int(e["card"]))
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "rule": key[0],
                "card": key[1],
                "kind": e["kind"],
                "code": int(e["code"]),
                "name": (e.get("detail") or {}).get("name", ""),
                "events": 0,
                "start_s": t,
                "end_s": t,
                "duration_s": duration_s,
                "params": {k: v for k, v in (e.get("detail") or {}).items() if k in PARAMS},
            }
        g["events"] += 1
        g["start_s"], g["end_s"] = min(g["start_s"], t), max(g["end_s"], t)
    for g in groups.values():
        if g["duration_s"] is not None:
            g["end_s"] = max(g["end_s"], g["start_s"] + float(g["duration_s"]))
    return sorted(groups.values(), key=lambda g: (g["start_s"], g["card"], g["rule"]))


RECOVERY_RUN = 5  # good samples in a row that count as recovered (see the module docstring)


def _detect_recover(
    card_samples: np.ndarray, start_s: float, horizon_s: float, slo_ms: float | None
) -> tuple[float | None, float | None]:
    """(detected at, recovered at), absolute, for one fault window on one card."""
    s = card_samples
    error = s["code"] != 0
    slow = ~error & ((latency_ms(s) > slo_ms) if slo_ms is not None else False)
    known = np.where(error, s["end_s"], s["intended_s"] + (slo_ms or 0.0) / 1000.0)
    bad = (error | slow) & (known >= start_s) & (known < horizon_s)
    if not bad.any():
        return None, None
    detected = float(known[bad].min())
    first_bad_end = float(s["end_s"][bad].min())
    after = (s["end_s"] > first_bad_end) & (s["end_s"] < horizon_s)
    order = np.argsort(s["end_s"][after], kind="stable")
    good = (~error & ~slow)[after][order]
    ends = s["end_s"][after][order]
    # run[i] = length of the run of good samples starting at i (0 when sample i is bad)
    run = np.zeros(good.size + 1, np.int64)
    for i in range(good.size - 1, -1, -1):
        run[i] = run[i + 1] + 1 if good[i] else 0
    # a run of RECOVERY_RUN, or a shorter one reaching the last sample
    sustained = (run[:-1] >= RECOVERY_RUN) | (run[:-1] == good.size - np.arange(good.size))
    hits = np.flatnonzero(sustained)
    return detected, (float(ends[hits[0]]) if hits.size else None)


def _window_end(
    g: Mapping[str, Any], detected: float | None, recovered: float | None, w1: float
) -> tuple[float, str]:
    """(end, what bounded it) of a fault window: the span of its events or the rule's duration;
    an instant fault (one event, no duration: a disconnect, a crash) lasts until its card
    recovered, or to the end of the measured window if it never did; an instant no request
    noticed stays an instant."""
    if g["end_s"] > g["start_s"]:
        return g["end_s"], "duration" if g.get("duration_s") is not None else "events"
    if recovered is not None:
        return max(recovered, g["start_s"]), "recovery"
    if detected is not None:
        return max(w1, g["start_s"]), "run end"
    return g["start_s"], "instant"


def _part(samples: np.ndarray, card: int, span_s: float, percentiles, slo_ms) -> dict[str, Any]:
    """Figures of a before / during / after part: all cards with ``per_card``, and ``others``:
    the cards other than the faulted one, together."""
    figures = summarize(samples, percentiles, slo_ms, duration_s=max(0.0, span_s))
    rest = samples[samples["card"] != card]
    figures["others"] = _figures(rest, max(0.0, span_s), percentiles, slo_ms)
    return figures


def fault_windows(
    samples: np.ndarray,
    fault_events: Iterable[Any],
    farm_start_s: float,
    *,
    window: tuple[float, float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slo_ms: float | None = None,
    origin_s: float = 0.0,
) -> list[dict[str, Any]]:
    """One entry per fault window overlapping ``window`` (default: the samples' span): figures
    before / during / after it (all cards, per card, and the other cards together) and
    time-to-detect / time-to-recover on its card. Times in the output are relative to
    ``origin_s``."""
    samples = as_samples(samples)
    if window is None:
        if not samples.size:
            return []
        window = (float(samples["intended_s"].min()), float(samples["end_s"].max()))
    w0, w1 = window
    groups = [
        g
        for g in group_fault_events(fault_events, farm_start_s)
        if g["start_s"] < w1 and g["end_s"] >= w0
    ]
    t, done = samples["intended_s"], samples["end_s"]
    in_window = (t >= w0) & (t < w1)
    out = []
    for g in groups:
        start = g["start_s"]
        later = [o["start_s"] for o in groups if o["card"] == g["card"] and o["start_s"] > start]
        on_card = samples[samples["card"] == g["card"]]
        detected, recovered = _detect_recover(on_card, start, min(later, default=math.inf), slo_ms)
        end, end_by = _window_end(g, detected, recovered, w1)
        parts = {
            "before": (in_window & (done < start), start - w0),
            "during": (in_window & (done >= start) & (t <= end), end - start),
            "after": (in_window & (t > end), w1 - end),
        }
        phases = {
            name: _part(samples[mask], g["card"], span, percentiles, slo_ms)
            for name, (mask, span) in parts.items()
        }
        out.append(
            {
                **{k: g[k] for k in ("rule", "card", "kind", "code", "name", "events", "params")},
                "start_s": _num(start - origin_s),
                "end_s": _num(end - origin_s),
                "end_by": end_by,
                **phases,
                "time_to_detect_s": _num(detected - start) if detected is not None else None,
                "time_to_recover_s": _num(recovered - start) if recovered is not None else None,
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# the result


def generator_figures(
    samples: np.ndarray,
    window: tuple[float, float],
    *,
    mode: str,
    rate: float | None = None,
    worker_stats: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The generator's own figures for one phase: sends per second in the window vs ``rate``,
    lag of the actual behind the intended send (open loop), pause between two requests of a
    slot (closed loop) and the workers' CPU (``worker_stats``: ``cpu_s``, ``wall_s``,
    ``active`` slots per worker; ``samples``: the phase's, warm-up included)."""
    samples = as_samples(samples)
    w0, w1 = window
    t = samples["intended_s"]
    measured = samples[(t >= w0) & (t < w1)]
    starts = measured["start_s"]
    sent = int(((starts >= w0) & (starts < w1)).sum())
    s = measured[np.lexsort((measured["start_s"], measured["slot"]))]
    same = s["slot"][1:] == s["slot"][:-1]
    gap_ms = ((s["start_s"][1:] - s["end_s"][:-1]) * 1000.0)[same]
    cpu_s = float(sum(st["cpu_s"] for st in worker_stats))

    def pct(values: np.ndarray) -> dict[str, Any] | None:
        if not values.size:
            return None
        p50, p99 = np.percentile(values, [50, 99]).tolist()
        return {"p50": _num(p50, 4), "p99": _num(p99, 4), "max": _num(values.max(), 4)}

    return {
        "requested_rps": rate,
        "achieved_rps": _num(sent / (w1 - w0), 3) if w1 > w0 else None,
        "lag_ms": pct((starts - measured["intended_s"]) * 1000.0) if mode == "open" else None,
        "issue_gap_ms": pct(gap_ms) if mode == "closed" else None,
        "cpu_s": _num(cpu_s, 4),
        "cpu_us_per_request": _num(cpu_s / samples.size * 1e6, 2) if samples.size else None,
        "worker_cpu_util": [
            _num(st["cpu_s"] / st["wall_s"], 3)
            for st in worker_stats
            if st.get("active", 1) and st["wall_s"] > 0
        ],
    }


def generator_summary(phases: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """The run-wide ``generator`` entry from the phases' ones; saturated = a worker used 90 % of
    a core (GIL-bound) or the open-loop send lag p50 exceeded 1 ms."""
    gens = [p["generator"] for p in phases]
    utils = [u for g in gens for u in g["worker_cpu_util"]]
    lags = [g["lag_ms"]["p50"] for g in gens if g["lag_ms"]]
    return {
        **extra,
        "peak_achieved_rps": max((g["achieved_rps"] or 0 for g in gens), default=None),
        "lag_ms_p50_max": max(lags, default=None),
        "max_worker_cpu_util": max(utils, default=None),
        "saturated": bool((utils and max(utils) >= 0.9) or (lags and max(lags) > 1.0)),
    }


def phase_result(
    samples: np.ndarray,
    phase: Mapping[str, Any],
    window: tuple[float, float],
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slo_ms: float | None = None,
    fault_events: Iterable[Any] = (),
    farm_start_s: float = 0.0,
    origin_s: float = 0.0,
    worker_stats: Sequence[Mapping[str, Any]] = (),
    interrupted: bool = False,
) -> dict[str, Any]:
    """One entry of ``phases`` (``phase``: name, mode, concurrency, rate; ``samples``: the
    phase's, warm-up included; ``window``: the measured one, absolute)."""
    samples = as_samples(samples)
    head = {k: phase.get(k) for k in ("name", "mode", "concurrency", "rate")}
    return {
        **head,
        "start_s": _num(window[0] - origin_s),
        "end_s": _num(window[1] - origin_s),
        "interrupted": interrupted,
        "missed": int(sum(st.get("missed", 0) for st in worker_stats)),
        **summarize(samples, percentiles, slo_ms, window),
        "generator": generator_figures(
            samples, window, mode=phase["mode"], rate=phase.get("rate"), worker_stats=worker_stats
        ),
        "fault_windows": fault_windows(
            samples,
            fault_events,
            farm_start_s,
            window=window,
            percentiles=percentiles,
            slo_ms=slo_ms,
            origin_s=origin_s,
        ),
    }


def build_result(
    config: Mapping[str, Any],
    farm_status: Mapping[str, Any],
    runs: Iterable[tuple[Mapping[str, Any], np.ndarray, tuple[float, float], Sequence[Mapping]]],
    *,
    cards: Sequence[int],
    fault_events: Sequence[Mapping[str, Any]] = (),
    farm_start_s: float = 0.0,
    origin_s: float = 0.0,
    interrupted: bool = False,
    generator: Mapping[str, Any] | None = None,
    samples_file: str | None = None,
) -> dict[str, Any]:
    """The whole :data:`SCHEMA` result. ``runs``: per phase ``(phase, samples, window,
    worker_stats)`` as for :func:`phase_result`; ``farm_status``: the farm's STATUS reply;
    ``generator``: run-wide facts (workers, slots, ...) merged into ``generator``."""
    percentiles = config.get("percentiles") or DEFAULT_PERCENTILES
    phases = [
        phase_result(
            samples,
            phase,
            window,
            percentiles=percentiles,
            slo_ms=config.get("slo_ms"),
            fault_events=fault_events,
            farm_start_s=farm_start_s,
            origin_s=origin_s,
            worker_stats=stats,
            interrupted=interrupted,
        )
        for phase, samples, window, stats in runs
    ]
    return {
        "schema": SCHEMA,
        "config": dict(config),
        "farm": {
            "name": farm_status.get("name"),
            "endpoint": farm_status.get("endpoint"),
            "time_scale": farm_status.get("time_scale"),
            "cards": list(cards),
            "card_count": len(farm_status.get("cards", ())),
        },
        "clock": {"bench_start_monotonic_s": origin_s, "farm_start_monotonic_s": farm_start_s},
        "phases": phases,
        "generator": generator_summary(phases, **(generator or {})),
        "faults": [
            {**_event(e), "bench_t_s": _num(farm_start_s + _event(e)["t_s"] - origin_s)}
            for e in fault_events
        ],
        "samples_file": samples_file,
    }
