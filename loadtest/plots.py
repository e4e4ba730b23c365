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
from loadtest.plot_style import (
    CARD_COLOURS,
    DPI,
    FAULT_COLOURS,
    FIGSIZE,
    card_key,
    card_label,
    figure,
    log_y,
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

#: Above this many points the successful requests are thinned (errors are always all drawn).
MAX_POINTS = 150_000
_OK_CODES = (0, None, "0", "ok", "OK", "success")


def _n_errors(errors: Any) -> int:
    """Error count of ``{"<code>": n}`` or of a plain number."""
    return sum(int(n) for n in errors.values()) if isinstance(errors, Mapping) else int(errors or 0)


def _nice_step(span: float, bins: int) -> float:
    raw = max(span / max(bins, 1), 1e-6)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _columns(samples: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Columns t (intended send time, else start), lat, card, err and phase of the samples; both
    ``intended_s`` / ``start_s`` / ``end_s`` and ``t_``-prefixed names are read."""
    rows = []
    for s in samples:
        t = [s.get(k) for k in ("intended_s", "t_intended_s", "start_s", "t_start_s")]
        when = next((v for v in t if v is not None), None)
        if when is None:
            continue
        lat = s.get("latency_ms")
        end = s.get("end_s", s.get("t_end_s"))
        lat = (end - when) * 1000.0 if lat is None and end is not None else lat
        rows.append(
            (
                float(when),
                math.nan if lat is None else float(lat),
                str(s.get("card")),
                s.get("code") not in _OK_CODES,
                s.get("phase", ""),
            )
        )
    t, lat, card, err, phase = zip(*rows) if rows else ((),) * 5
    return {
        "t": np.asarray(t, dtype=float),
        "lat": np.asarray(lat, dtype=float),
        "card": np.asarray(card, dtype=object),
        "err": np.asarray(err, dtype=bool),
        "phase": np.asarray(phase, dtype=object),
    }


def _rolling_percentiles(t: np.ndarray, lat: np.ndarray, width: float):
    """Per time bin of ``width`` seconds: (bin centre, p50, p99); bins with < 5 samples are gaps."""
    if t.size == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    index = np.floor(t / width).astype(int)
    order = np.argsort(index, kind="stable")
    index, lat = index[order], lat[order]
    edges = np.flatnonzero(np.diff(index)) + 1
    centres, p50, p99 = [], [], []
    for chunk_i, chunk in zip(np.split(index, edges), np.split(lat, edges)):
        centres.append((chunk_i[0] + 0.5) * width)
        ok = chunk.size >= 5
        p50.append(np.percentile(chunk, 50) if ok else np.nan)
        p99.append(np.percentile(chunk, 99) if ok else np.nan)
    return np.asarray(centres), np.asarray(p50), np.asarray(p99)


def _draw_requests(ax, x, lat, err, card, counted, span: float) -> tuple[np.ndarray, np.ndarray]:
    """The requests on ``ax``: successes by card (at most :data:`MAX_POINTS`), the rolling
    p50 / p99 over all cards, errors as red crosses; (indices drawn, successful mask)."""
    ok = ~err & np.isfinite(lat)
    # one scatter in random order, so no card is painted over all the others
    shown = np.random.default_rng(0).permutation(np.flatnonzero(ok))[:MAX_POINTS]
    cards = sorted(set(card.tolist()), key=card_key)
    colour_of = {c: CARD_COLOURS[i % len(CARD_COLOURS)] for i, c in enumerate(cards)}
    ax.scatter(
        x[shown],
        lat[shown],
        s=6 if shown.size > 20_000 else 12,
        alpha=0.45,
        linewidths=0,
        c=[colour_of[c] for c in card[shown]],
        rasterized=True,
    )
    for c, label in card_legend(card, err, counted):
        ax.plot([], [], ls="", marker="o", ms=7, color=colour_of[c], label=label)
    positive = lat[ok & (lat > 0)]
    if positive.size and np.percentile(positive, 99.9) / max(np.min(positive), 1e-9) > 30:
        log_y(ax, "latency (ms)")
    width = _nice_step(span, 60)
    centres, p50, p99 = _rolling_percentiles(x[ok], lat[ok], width)
    ax.plot(centres, p50, color="black", lw=1.6, label=f"p50, all cards ({width:g} s bins)")
    ax.plot(centres, p99, color="black", lw=1.6, ls="--", label="p99, all cards")
    err_lat = err & np.isfinite(lat)
    if err_lat.any():
        n_err = int(np.count_nonzero(err & counted))
        ax.scatter(
            x[err_lat],
            lat[err_lat],
            marker="x",
            s=28,
            color="#d62728",
            lw=1.2,
            label=f"error ({n_err})",
            zorder=4,
        )
    return shown, ok


def _draw_windows(ax, cols, x, t0: float, phases, counted, faults, span: float) -> None:
    """The phases' measured windows (warm-up hatched; without ``phases`` the extent of each
    phase's samples) and, when there are a few, the short fault windows shaded behind."""
    if phases is None:  # no measured windows given: the extent of each phase's samples
        names = [n for n in dict.fromkeys(cols["phase"].tolist()) if n != ""]
        spans = [(x[cols["phase"] == n] + t0, n) for n in names]
        phases = [{"name": n, "start_s": t.min(), "end_s": t.max()} for t, n in spans]
        _draw_phase_windows(ax, phases if len(phases) > 1 else [], t0, hatch=False)
    else:
        warm = int(np.count_nonzero(~counted))
        hatch_label = f"not measured (warm-up: {warm} requests, not counted)"
        _draw_phase_windows(ax, phases, t0, hatch=True, label=hatch_label)
    short = [f for f in faults if 0 < f["end"] - f["start"] < 0.25 * span]
    for f in short if len(short) <= 6 else []:  # a few short windows: shaded behind the data
        ax.axvspan(
            f["start"],
            f["end"],
            color=FAULT_COLOURS.get(f["kind"], "#444444"),
            alpha=0.12,
            lw=0,
            zorder=0,
        )


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
    cols = _columns(samples)
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

    counted = _measured(cols["t"], phases)  # the legend counts what the tables count
    shown, ok = _draw_requests(ax, x, lat, err, card, counted, span)
    _draw_windows(ax, cols, x, t0, phases, counted, faults, span)
    if len(shown) < np.count_nonzero(ok):
        ax.set_title(
            f"{len(shown):,} of {np.count_nonzero(ok):,} successful requests drawn",
            fontsize=9,
            color="dimgray",
        )
    fig.legend(loc="outside right upper", fontsize=9, framealpha=0.9)
    return save(fig, path)


def _phase_title(phase: Mapping[str, Any], sep: str = ": ") -> str:
    """``c4`` → ``c4: concurrency 4``, ``r200`` → ``r200: 200 req/s``."""
    name = str(phase.get("name", "?"))
    if phase.get("concurrency") is not None:
        load = f"concurrency {phase['concurrency']}"
    elif phase.get("rate") is not None:
        load = f"{float(phase['rate']):g} req/s"
    else:
        return name
    return name if load in name else f"{name}{sep}{load}"


def _measured(t: np.ndarray, phases: Sequence[Mapping[str, Any]] | None) -> np.ndarray:
    """Which samples (intended times ``t``) fall in a phase's measured window ``[start_s,
    end_s)`` — what the tables count; all of them when no windows are known."""
    if phases is None:
        return np.ones(t.size, dtype=bool)
    inside = np.zeros(t.size, dtype=bool)
    for p in phases:
        if p.get("start_s") is not None and p.get("end_s") is not None:
            inside |= (t >= float(p["start_s"])) & (t < float(p["end_s"]))
    return inside


def card_legend(card: np.ndarray, err: np.ndarray, counted: np.ndarray) -> list[tuple[str, str]]:
    """(card, legend entry ``card 0 (333 req, 0 err)``): requests and errors of each card among
    the ``counted`` samples (the measured windows), so they equal the per-card table's."""
    labels = []
    for c in sorted(set(card.tolist()), key=card_key):
        mine = counted & (card == c)
        n_req, n_err = int(np.count_nonzero(mine)), int(np.count_nonzero(mine & err))
        labels.append((c, f"{card_label(c)} ({n_req} req, {n_err} err)"))
    return labels


def _draw_phase_windows(
    ax,
    phases: Sequence[Mapping[str, Any]],
    t0: float,
    hatch: bool,
    label: str = "not measured (warm-up)",
) -> None:
    """Dotted lines at each phase's start and end, its name centred at the bottom; with ``hatch``
    what lies outside every (measured) window is hatched."""
    prev_end = ax.get_xlim()[0]
    box = {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8}
    for p in phases:
        if p.get("start_s") is None or p.get("end_s") is None:
            continue
        start, end = float(p["start_s"]) - t0, float(p["end_s"]) - t0
        if hatch and start > prev_end:
            ax.axvspan(
                prev_end,
                start,
                facecolor="none",
                edgecolor="#c8c8c8",
                hatch="//",
                lw=0,
                label=label,
                zorder=0,
            )
            label = None
        for edge in (start, end):
            ax.axvline(edge, color="gray", ls=":", lw=1.0)
        ax.annotate(
            _phase_title(p),
            ((start + end) / 2, 0.0),
            xycoords=ax.get_xaxis_transform(),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            size=9,
            bbox=box,
            color="#333333",
        )
        prev_end = end


def _set_load_axis(ax, phases: Sequence[Mapping[str, Any]]) -> list[float]:
    """x: concurrency (all phases closed-loop) or asked rate (all open), each phase once; else
    the phase names, evenly spaced. Returns the phases' x positions."""
    modes = {p.get("mode") for p in phases}
    key = {frozenset({"open"}): "rate", frozenset({"closed"}): "concurrency"}.get(frozenset(modes))
    xs = [p.get(key) for p in phases] if key else [None]
    if None in xs or len(set(xs)) != len(xs):
        ax.set_xlabel("phase")
        ax.set_xticks(range(len(phases)), [_phase_title(p, "\n") for p in phases])
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
    ax.legend(loc="upper left", fontsize=10, framealpha=0.9, title="latency percentile")

    rates = {"throughput": "throughput_rps", "goodput": "goodput_rps"}
    for (label, key), colour, ls in zip(rates.items(), ("#555555", "#2ca02c"), ("-", "--")):
        ys = [math.nan if p.get(key) is None else float(p[key]) for p in phases]
        if not all(math.isnan(v) for v in ys):
            ax_t.plot(xs, ys, marker="o", color=colour, ls=ls, lw=2, label=label)
    ax_t.set_ylabel("requests/s")
    ax_t.set_ylim(bottom=0, top=max([ax_t.get_ylim()[1], 1.0]) * 1.1)
    ax_t.grid(True, alpha=0.3)
    if ax_t.get_legend_handles_labels()[0]:
        ax_t.legend(loc="upper left", fontsize=9, framealpha=0.9)
    return save(fig, path)


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
        for x, h, st in zip(offsets, heights, stats):
            n_err = _n_errors(st.get("errors"))
            if n_err:
                text = f"{n_err} err" if bar_px > 50 else str(n_err)
                ax.annotate(
                    text,
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
    share_label = "even share (phase throughput / cards it used)"
    for g, p in enumerate(phases):
        if p.get("throughput_rps") is not None:
            share = float(p["throughput_rps"]) / len(per_card[g])
            ax.hlines(
                share, g - 0.42, g + 0.42, colors="black", linestyles="--", lw=1, label=share_label
            )
            share_label = None
    if bar_px <= 50 and any(_n_errors(st.get("errors")) for pc in per_card for st in pc.values()):
        ax.set_title("red numbers above bars: failed requests", fontsize=9, color="#d62728")
    ax.set_xticks(range(len(phases)), [_phase_title(p, "\n") for p in phases])
    ax.set_xlim(-0.6, len(phases) - 0.4)
    ax.set_ylim(0, top * 1.18 or 1)
    ncol = min(len(cards) + 1, 9)
    fig.legend(loc="outside lower center", fontsize=10, ncol=ncol, frameon=False)
    return save(fig, path)


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
