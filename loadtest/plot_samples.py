"""The request samples of :func:`loadtest.plots.plot_latency_over_time`: their columns, which
of them the tables count (the phases' measured windows), the scatter by card with a rolling
p50 / p99 and the errors, and the phase windows and short fault windows behind them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from loadtest.plot_style import (
    CARD_COLOURS,
    FAULT_COLOURS,
    card_key,
    card_label,
    log_y,
    phase_title,
)

__all__ = [
    "MAX_POINTS",
    "card_legend",
    "draw_requests",
    "draw_windows",
    "measured_mask",
    "sample_columns",
]

logger = logging.getLogger(__name__)

#: Above this many points the successful requests are thinned (errors are always all drawn).
MAX_POINTS = 150_000
_OK_CODES = (0, None, "0", "ok", "OK", "success")


def _nice_step(span: float, bins: int) -> float:
    raw = max(span / max(bins, 1), 1e-6)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def sample_columns(samples: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
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


def draw_requests(ax, x, lat, err, card, counted, span: float) -> tuple[np.ndarray, np.ndarray]:
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


def draw_windows(ax, cols, x, t0: float, phases, counted, faults, span: float) -> None:
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


def measured_mask(t: np.ndarray, phases: Sequence[Mapping[str, Any]] | None) -> np.ndarray:
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
            phase_title(p),
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
