"""The scale benchmark's figures (PNG, through :mod:`loadtest.plot_style`'s figure and save):
throughput and p99 against cards and against client processes, and start time and idle CPU
against cards with their fitted lines. Each point is the median of its rounds, the bar its
min–max.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.plot_style import CARD_COLOURS, figure, save

__all__ = ["write_plots"]

log = logging.getLogger(__name__)

_THROUGHPUT, _SATURATED, _LIGHT = CARD_COLOURS[0], CARD_COLOURS[1], CARD_COLOURS[2]


def _medians(nodes: Sequence[dict[str, Any] | None]) -> tuple[list, list]:
    """(medians, [below, above]) of :func:`benchmarks.scale_load.spread` nodes, for errorbar."""
    med, err = [], [[], []]
    for node in nodes:
        node = node or {}
        m = node.get("median")
        med.append(m)
        err[0].append(0.0 if m is None else m - node["min"])
        err[1].append(0.0 if m is None else node["max"] - m)
    return med, err


def _series(ax, xs: list[int], nodes: list, label: str, colour: str) -> None:
    pairs = [(x, n) for x, n in zip(xs, nodes) if n and n.get("median") is not None]
    if not pairs:
        return
    med, err = _medians([n for _, n in pairs])
    ax.errorbar(
        [x for x, _ in pairs], med, yerr=err, marker="o", capsize=4, color=colour, label=label
    )


def _x_axis(ax, xs: list[int], label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, labels=[str(x) for x in xs])
    ax.set_xlabel(label)
    ax.grid(True, alpha=0.3)


def _load_figure(points: list[dict[str, Any]], x_key: str, title: str, path: Path) -> Path:
    """Throughput (left) and saturated / light p99 (right) against ``x_key``."""
    xs = [p[x_key] for p in points]
    loads = [p.get("load", p) for p in points]
    fig = figure(title)
    left, right = fig.subplots(1, 2)
    _series(left, xs, [ld["saturated"]["throughput_rps"] for ld in loads], "req/s", _THROUGHPUT)
    left.set_ylabel("requests/s (saturated, closed loop)")
    left.set_ylim(bottom=0)
    _series(right, xs, [ld["saturated"]["p99_ms"] for ld in loads], "saturated", _SATURATED)
    _series(right, xs, [ld["light"]["p99_ms"] for ld in loads], "light load", _LIGHT)
    right.set_ylabel("p99 latency, ms")
    right.set_ylim(bottom=0)
    right.legend()
    for ax in (left, right):
        _x_axis(ax, xs, x_key.replace("clients", "client processes"))
    return save(fig, path)


def _cost_figure(result: dict[str, Any], path: Path) -> Path:
    """Start time (left) and idle farm CPU (right) against cards, with the fitted lines."""
    fig = figure("npufarm scale: what an idle card costs")
    axes = fig.subplots(1, 2)
    fits = result.get("costs") or {}
    for ax, name, label in (
        (axes[0], "start_s_per_card", "start time (launch to all cards ready), s"),
        (axes[1], "idle_cpu_percent_per_card", "idle CPU of the farm, % of one core"),
    ):
        fit = fits.get(name) or {}
        xs, ys = fit.get("x") or [], fit.get("y") or []
        ax.plot(xs, ys, "o", color=_THROUGHPUT, label="measured")
        if fit.get("slope") is not None and xs:
            line = [fit["intercept"] + fit["slope"] * x for x in xs]
            ax.plot(
                xs, line, "--", color=_SATURATED, label=f"fit: {fit['slope']:.4g} {fit['unit']}"
            )
        ax.set_ylabel(label)
        ax.set_xlabel("cards")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save(fig, path)


def write_plots(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write the PNGs into ``out_dir``; return their paths (matplotlib must be installed)."""
    out = Path(out_dir)
    plan = result["plan"]
    written = []
    measured = [p for p in result.get("cards_sweep", []) if p.get("load")]
    if measured:
        title = (
            f"npufarm scale: cards ({plan['base_clients']} client processes, "
            f"{plan['in_flight']} in flight / {plan['light_rps']:g} req/s light)"
        )
        written.append(_load_figure(measured, "cards", title, out / "scale_cards.png"))
    if result.get("clients_sweep"):
        title = f"npufarm scale: client processes ({plan['client_cards']} cards)"
        written.append(
            _load_figure(result["clients_sweep"], "clients", title, out / "scale_clients.png")
        )
    if result.get("costs"):
        written.append(_cost_figure(result, out / "scale_cost.png"))
    log.info("scale: wrote %s", ", ".join(map(str, written)))
    return [str(p) for p in written]
