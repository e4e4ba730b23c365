"""The fault timeline under :func:`loadtest.plots.plot_latency_over_time`: fault windows (from a
result's ``fault_windows``) or raw fault-log events placed on the plot's x axis
(:func:`fault_spans`), grouped into labelled lanes (:func:`fault_lanes`) and drawn as bars with
detection and recovery marks (:func:`draw_timeline`). Apart from the latency plot because a
fault's place and label follow their own rules (three time sources, lane folding).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from loadtest.plot_style import FAULT_COLOURS, card_key, card_label
from loadtest.report import fault_title
from loadtest.schema import PARAMS

__all__ = ["MAX_LANES", "fault_spans", "fault_lanes", "draw_timeline"]

logger = logging.getLogger(__name__)

#: At most this many fault-timeline lanes (kind, card); beyond it one lane per kind.
MAX_LANES = 8


def _fault_x(item, event, shift: float, farm_x: float | None) -> tuple[float, float] | None:
    """(start, end) on the x axis of a fault window or event; None if it has no time."""
    if item.get("start_s") is not None:
        start = float(item["start_s"]) + shift
        return start, start if item.get("end_s") is None else float(item["end_s"]) + shift
    if event.get("bench_t_s") is not None:
        t = float(event["bench_t_s"]) + shift
    elif event.get("t_s") is not None:
        t = float(event["t_s"]) + (farm_x if farm_x is not None else 0.0)
    else:
        return None
    return t, t


def fault_spans(items, shift: float, farm_x: float | None, xlim) -> list[dict[str, Any]]:
    """The fault windows / events inside ``xlim`` as x-axis spans with detect / recover times."""
    spans, skipped = [], 0
    for item in items:
        event = item["fault"] if isinstance(item.get("fault"), Mapping) else item
        where = _fault_x(item, event, shift, farm_x)
        if where is None or where[1] < xlim[0] or where[0] > xlim[1]:
            skipped += 1
            continue
        ttd, ttr = item.get("time_to_detect_s"), item.get("time_to_recover_s")
        detail = event.get("detail") or {}
        params = item.get("params") or {k: detail[k] for k in PARAMS if k in detail}
        spans.append(
            {
                "kind": str(event.get("kind", "fault")),
                "card": event.get("card"),
                "params": params,
                "events": event.get("events") or 1,
                "start": where[0],
                "end": where[1],
                "detect": None if ttd is None else where[0] + ttd,
                "recover": None if ttr is None else where[0] + ttr,
            }
        )
    if skipped:
        logger.info("%d fault(s) without a time or outside the plotted range not drawn", skipped)
    return spans


def fault_lanes(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Timeline lanes, label → spans, in order of first start: one per kind and card, or one per
    kind if that would make more than :data:`MAX_LANES`. A label names the fault with what sets
    its strength, then its event count apart: ``slow 3× @card 1: 840 events``."""
    by_card: dict[tuple, list] = {}
    for f in sorted(spans, key=lambda f: f["start"]):
        by_card.setdefault((f["kind"], f["card"]), []).append(f)
    if len(by_card) > MAX_LANES:
        by_kind: dict[tuple, list] = {}
        for (kind, _), group in by_card.items():
            by_kind.setdefault((kind, None), []).extend(group)
        by_card = by_kind
    lanes = {}
    for (kind, _), group in by_card.items():
        cards = sorted({str(f["card"]) for f in group if f["card"] is not None}, key=card_key)
        where = f" @{card_label(cards[0])}" if len(cards) == 1 else f" ({len(cards)} cards)"
        params = [f.get("params") or {} for f in group]
        title = fault_title(kind, params[0] if all(p == params[0] for p in params) else None)
        n = sum(f["events"] for f in group)
        lanes[f"{title}{where if cards else ''}: {n} event{'s' * (n != 1)}"] = group
    return lanes


def draw_timeline(ax, lanes: Mapping[str, list[dict[str, Any]]]) -> None:
    """Fault windows as bars (single events as ticks), detection ▼ and recovery △ marked."""
    marks = {
        "detect": ("v", "black", "fault detected (first bad request)"),
        "recover": ("^", "white", "recovered (first of a run of good requests)"),
    }
    labelled: set[str] = set()
    for y, group in enumerate(lanes.values()):
        colour = FAULT_COLOURS.get(group[0]["kind"], "#444444")
        bars = [(f["start"], f["end"] - f["start"]) for f in group if f["end"] > f["start"]]
        ax.broken_barh(bars, (y - 0.3, 0.6), color=colour, alpha=0.8)
        ticks = [f["start"] for f in group if f["end"] <= f["start"]]
        ax.plot(ticks, [y] * len(ticks), ls="", marker="|", ms=12, mew=2, color=colour)
        for key, (marker, face, label) in marks.items():
            at = [f[key] for f in group if f[key] is not None]
            if at:
                ax.plot(
                    at,
                    [y] * len(at),
                    ls="",
                    marker=marker,
                    ms=7,
                    mfc=face,
                    mec="black",
                    label=None if key in labelled else label,
                )
                labelled.add(key)
    ax.set_yticks(range(len(lanes)), list(lanes), fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("injected faults", fontsize=9, loc="left", color="dimgray")
