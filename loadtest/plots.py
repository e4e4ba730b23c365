"""PNG plots of an ``npufarm bench`` result (``npufarm.bench/1``) for reliability reports.

Three figures, each 1200×700 px (12×7 in at 100 dpi):

* :func:`plot_latency_over_time` — every request's latency against time since the bench began,
  one colour per card, errors as red crosses, a rolling p50/p99 over all cards, the measured
  window of each phase (warm-up hatched), and below it a fault timeline: one lane per fault kind
  and card, windows as bars, detection ▼ and recovery △ marked (short windows are also shaded
  behind the latencies).
* :func:`plot_percentiles_vs_load` — p50/p90/p99/p99.9 per phase against the offered load
  (concurrency for closed-loop phases, asked rate for open-loop ones), error counts annotated;
  throughput and goodput in a panel below.
* :func:`plot_per_card_throughput` — grouped bars: one group per phase, one bar per card, error
  counts above the bars, the even share per card as a dashed line.

The request samples are drawn by :mod:`loadtest.plot_samples`, the fault timeline by
:mod:`loadtest.plot_faults`; :mod:`loadtest.plot_style` is their shared look.
:func:`render_all` writes all three into a directory. matplotlib is imported lazily (Agg backend,
no pyplot state), so importing this module is cheap and works headless.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.plot_faults import draw_timeline, fault_lanes, fault_spans
from loadtest.plot_samples import (
    card_legend,
    draw_requests,
    draw_windows,
    measured_mask,
    sample_columns,
)
from loadtest.plot_style import (
    CARD_COLOURS,
    DPI,
    FIGSIZE,
    card_key,
    card_label,
    figure,
    log_y,
    phase_title,
    save,
)

__all__ = [
    "DPI",
    "FIGSIZE",
    "card_legend",
    "plot_latency_over_time",
    "plot_per_card_throughput",
    "plot_percentiles_vs_load",
    "render_all",
]

logger = logging.getLogger(__name__)


def _n_errors(errors: Any) -> int:
    """Error count of ``{"<code>": n}`` or of a plain number."""
    return sum(int(n) for n in errors.values()) if isinstance(errors, Mapping) else int(errors or 0)


def plot_latency_over_time(
    samples: Iterable[Mapping[str, Any]],
    fault_events: Sequence[Mapping[str, Any]] | None,
    path: str | Path,
    farm_start_s: float | None = None,
    *,
    t0_s: float | None = None,
    phases: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Per-request latency vs time, one colour per card, errors, phases; faults on a timeline.

    ``samples``: ``requests.jsonl`` rows, all times on one clock. The x axis is time since
    ``t0_s`` on that clock (default: the first request). ``fault_events``: fault windows
    (``start_s`` / ``end_s`` on the samples' clock, optional ``time_to_detect_s`` /
    ``time_to_recover_s``) or fault-log events, at ``bench_t_s`` (samples' clock) or else at
    ``farm_start_s + t_s`` (``farm_start_s`` on the samples' clock; without it ``t_s`` after the
    first request). They are drawn on a timeline below the latencies, one lane per kind and card.
    ``phases`` (``name``, ``start_s``, ``end_s``, samples' clock) mark the measured windows.
    """
    cols = sample_columns(samples)
    fig = figure("Request latency over time")
    origin = "bench start" if t0_s is not None else "first request"
    if cols["t"].size == 0:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no request samples", ha="center", va="center", transform=ax.transAxes)
        return save(fig, path)
    t0 = float(cols["t"].min()) if t0_s is None else float(t0_s)
    x, lat, err, card = cols["t"] - t0, cols["lat"], cols["err"], cols["card"]
    lo, hi = min(0.0, float(x.min())), float(x.max())
    span = (hi - lo) or 1.0
    xlim = (lo - 0.01 * span, hi + 0.01 * span)
    farm_x = None if farm_start_s is None else farm_start_s - t0
    faults = fault_spans(fault_events or [], -t0, farm_x, xlim)
    lanes = fault_lanes(faults)
    if lanes:
        ax, ax_f = fig.subplots(2, 1, sharex=True, height_ratios=[5, 0.5 + 0.3 * len(lanes)])
        draw_timeline(ax_f, lanes)
    else:
        ax = ax_f = fig.add_subplot()
    ax_f.set_xlabel(f"time since {origin} (s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlim(*xlim)

    counted = measured_mask(cols["t"], phases)  # the legend counts what the tables count
    shown, ok = draw_requests(ax, x, lat, err, card, counted, span)
    draw_windows(ax, cols, x, t0, phases, counted, faults, span)
    if len(shown) < np.count_nonzero(ok):
        ax.set_title(
            f"{len(shown):,} of {np.count_nonzero(ok):,} successful requests drawn",
            fontsize=9,
            color="dimgray",
        )
    fig.legend(loc="outside right upper", fontsize=9, framealpha=0.9)
    return save(fig, path)


def _set_load_axis(ax, phases: Sequence[Mapping[str, Any]]) -> list[float]:
    """x: concurrency (all phases closed-loop) or asked rate (all open), each phase once; else
    the phase names, evenly spaced. Returns the phases' x positions."""
    modes = {p.get("mode") for p in phases}
    key = {frozenset({"open"}): "rate", frozenset({"closed"}): "concurrency"}.get(frozenset(modes))
    xs = [p.get(key) for p in phases] if key else [None]
    if None in xs or len(set(xs)) != len(xs):
        ax.set_xlabel("phase")
        ax.set_xticks(range(len(phases)), [phase_title(p, "\n") for p in phases])
        ax.set_xlim(-0.5, len(phases) - 0.5)
        return list(range(len(phases)))
    xs = [float(v) for v in xs]
    rate = "offered rate (requests/s asked)"
    ax.set_xlabel(rate if key == "rate" else "concurrency (requests in flight)")
    if min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2 if all(float(v).is_integer() for v in xs) else 10)
        ax.minorticks_off()
    ax.set_xticks(xs, [f"{v:g}" for v in xs])
    return xs


def plot_percentiles_vs_load(result: Mapping[str, Any], path: str | Path) -> Path:
    """Top: p50/p90/p99/p99.9 latency per phase against concurrency or offered rate (phase names
    when the phases mix modes), error counts annotated. Bottom: throughput and goodput."""
    phases = [p for p in result.get("phases", []) if p.get("latency_ms")]
    fig = figure("Latency percentiles vs load")
    if not phases:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no phases with latency", ha="center", va="center")
        ax.set_axis_off()
        return save(fig, path)
    ax, ax_t = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    xs = _set_load_axis(ax_t, phases)
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="major", alpha=0.3)
    styles = [
        ("p50", "#1f77b4", "-"),
        ("p90", "#2ca02c", "-"),
        ("p99", "#ff7f0e", "-"),
        ("p99.9", "#d62728", "--"),
    ]
    values = []
    for name, colour, ls in styles:
        ys = [p["latency_ms"].get(name) for p in phases]
        ys = [math.nan if v is None else float(v) for v in ys]
        if all(math.isnan(v) for v in ys):
            continue
        values += [v for v in ys if v > 0]
        ax.plot(xs, ys, marker="o", ms=7, color=colour, ls=ls, lw=2, label=name)
    if values and max(values) / max(min(values), 1e-9) > 20:
        log_y(ax, "latency (ms)")
        ax.set_ylim(min(values) / 1.5, max(values) * 2.0)
    elif values:
        ax.set_ylim(0, max(values) * 1.2)
    _annotate_phase_errors(ax, xs, phases)
    ax.legend(loc="upper left", fontsize=10, framealpha=0.9, title="latency percentile")
    _plot_rates(ax_t, xs, phases)
    return save(fig, path)


def _annotate_phase_errors(ax, xs: list, phases: list[Mapping[str, Any]]) -> None:
    """``N err`` above each phase's highest percentile when the phase had errors."""
    for x, p in zip(xs, phases):
        n_err = _n_errors(p.get("errors"))
        lat = [p["latency_ms"].get(k) for k in ("p99.9", "p99", "p50")]
        top = next((v for v in lat if v is not None), None)
        if n_err and top is not None:
            ax.annotate(
                f"{n_err} err",
                (x, top),
                xytext=(0, 9),
                textcoords="offset points",
                ha="center",
                fontsize=10,
                color="#d62728",
                fontweight="bold",
            )


def _plot_rates(ax, xs: list, phases: list[Mapping[str, Any]]) -> None:
    """Throughput and goodput per phase (requests/s) on the lower axes."""
    rates = {"throughput": "throughput_rps", "goodput": "goodput_rps"}
    for (label, key), colour, ls in zip(rates.items(), ("#555555", "#2ca02c"), ("-", "--")):
        ys = [math.nan if p.get(key) is None else float(p[key]) for p in phases]
        if not all(math.isnan(v) for v in ys):
            ax.plot(xs, ys, marker="o", color=colour, ls=ls, lw=2, label=label)
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0, top=max([ax.get_ylim()[1], 1.0]) * 1.1)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=9, framealpha=0.9)


def plot_per_card_throughput(result: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: per phase, each card's throughput; the cards' error counts above the bars
    and a dashed line at the even share (phase throughput / the cards it used)."""
    phases = [p for p in result.get("phases", []) if p.get("per_card")]
    fig = figure("Per-card throughput by phase")
    ax = fig.add_subplot()
    ax.set_ylabel("throughput (requests/s)")
    ax.set_xlabel("phase")
    ax.grid(True, axis="y", alpha=0.3)
    if not phases:
        ax.text(0.5, 0.5, "no per-card data", ha="center", va="center", transform=ax.transAxes)
        return save(fig, path)
    per_card = [{str(c): v or {} for c, v in p["per_card"].items()} for p in phases]
    cards = sorted({c for stats in per_card for c in stats}, key=card_key)
    width = 0.8 / len(cards)
    bar_px = 1050 / len(phases) * width  # room for "12 err" above a bar, or only for "12"?
    top = 0.0
    for i, c in enumerate(cards):
        offsets = [g - 0.4 + width * (i + 0.5) for g in range(len(phases))]
        stats = [by_card.get(c, {}) for by_card in per_card]
        heights = [float(s.get("throughput_rps") or 0.0) for s in stats]
        top = max(top, *heights)
        ax.bar(
            offsets,
            heights,
            width * 0.92,
            color=CARD_COLOURS[i % len(CARD_COLOURS)],
            label=card_label(c),
            edgecolor="white",
            lw=0.5,
        )
        _annotate_bar_errors(ax, offsets, heights, stats, short=bar_px <= 50)
    _plot_even_shares(ax, phases, per_card)
    if bar_px <= 50 and any(_n_errors(st.get("errors")) for pc in per_card for st in pc.values()):
        ax.set_title("red numbers above bars: failed requests", fontsize=9, color="#d62728")
    ax.set_xticks(range(len(phases)), [phase_title(p, "\n") for p in phases])
    ax.set_xlim(-0.6, len(phases) - 0.4)
    ax.set_ylim(0, top * 1.18 or 1)
    ncol = min(len(cards) + 1, 9)
    fig.legend(loc="outside lower center", fontsize=10, ncol=ncol, frameon=False)
    return save(fig, path)


def _annotate_bar_errors(
    ax, offsets: list[float], heights: list[float], stats: list[Mapping[str, Any]], *, short: bool
) -> None:
    """The error count above each bar that had errors (``12``, not ``12 err``, when ``short``)."""
    for x, h, st in zip(offsets, heights, stats):
        n_err = _n_errors(st.get("errors"))
        if n_err:
            ax.annotate(
                str(n_err) if short else f"{n_err} err",
                (x, h),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
                color="#d62728",
                weight="bold",
                bbox={"fc": "white", "ec": "none", "pad": 1, "alpha": 0.8},
            )


def _plot_even_shares(ax, phases: list[Mapping[str, Any]], per_card: list[dict]) -> None:
    """A dashed line per phase at its throughput divided by the cards it used (one legend entry)."""
    share_label = "even share (phase throughput / cards it used)"
    for g, p in enumerate(phases):
        if p.get("throughput_rps") is not None:
            share = float(p["throughput_rps"]) / len(per_card[g])
            ax.hlines(
                share, g - 0.42, g + 0.42, colors="black", linestyles="--", lw=1, label=share_label
            )
            share_label = None


def _windows_and_events(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The result's fault windows (once each, though a fault may span phases), then the fault
    events no window covers, one span per (rule, card) from its first to its last event."""
    found: dict[tuple, dict[str, Any]] = {}
    for phase in result.get("phases", []):
        for w in phase.get("fault_windows") or []:
            found.setdefault((w.get("rule"), w.get("card"), w.get("kind"), w.get("start_s")), w)
    covered = {(w.get("rule"), w.get("card")) for w in found.values()}
    loose: list[Mapping[str, Any]] = []
    for e in result.get("faults") or []:
        key = (e.get("rule"), e.get("card"))
        if key in covered:
            continue
        if e.get("bench_t_s") is None:
            loose.append(e)
            continue
        t = float(e["bench_t_s"])
        g = found.setdefault((*key, e.get("kind"), "events"), {**e, "start_s": t, "end_s": t})
        g["start_s"], g["end_s"] = min(g["start_s"], t), max(g["end_s"], t)
        g["events"] = g.get("events", 0) + 1
    return [*found.values(), *loose]


def render_all(
    result: Mapping[str, Any],
    out_dir: str | Path,
    samples: Iterable[Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write ``latency_over_time.png`` (only with ``samples``), ``percentiles_vs_load.png`` and
    ``per_card_throughput.png`` into ``out_dir``; returns the paths written.

    ``samples`` are ``requests.jsonl`` rows (times since the bench started, ``phase`` = index into
    ``result["phases"]``); the result's ``clock`` places fault events that only have ``t_s``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if samples is not None:
        clock = result.get("clock") or {}
        farm, bench = clock.get("farm_start_monotonic_s"), clock.get("bench_start_monotonic_s")
        phases = result.get("phases", [])
        names = {i: p.get("name", str(i)) for i, p in enumerate(phases)}
        rows = ({**s, "phase": names.get(s.get("phase"), s.get("phase", ""))} for s in samples)
        written.append(
            plot_latency_over_time(
                rows,
                _windows_and_events(result),
                out / "latency_over_time.png",
                farm_start_s=farm - bench if farm is not None and bench is not None else None,
                t0_s=0.0 if clock else None,
                phases=phases if clock else None,
            )
        )
    written.append(plot_percentiles_vs_load(result, out / "percentiles_vs_load.png"))
    written.append(plot_per_card_throughput(result, out / "per_card_throughput.png"))
    logger.info("rendered %d plot(s) into %s", len(written), out)
    return written
