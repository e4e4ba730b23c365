"""The scale benchmark's reading of its points: least-squares lines through them (the per-card
and per-client costs, :func:`costs`) and the markdown summary (:func:`markdown`). Pure.

A cost is the slope of ``y = intercept + slope * x`` over the sweep's points (medians of the
rounds), with ``r2`` saying how well a line fits: a low ``r2`` means the cost is not linear
(e.g. throughput that stops growing once the cores are saturated) and the slope is only an
average over the range. ``per_doubling`` is the same fit against ``log2(x)``: what each
doubling of cards or clients adds, the better reading when the points are 1, 2, 4, ... and the
curve flattens. ``steps`` is the slope between each two neighbouring points (``Δy / Δx``):
where a curve bends, they say which step pays and which costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["COSTS", "costs", "linear_fit", "markdown", "steps"]

#: cost name -> (sweep, x key, y path in a point, unit, meaning)
COSTS: dict[str, tuple[str, str, tuple[str, ...], str, str]] = {
    "start_s_per_card": (
        "cards",
        "cards",
        ("start_s",),
        "s per card",
        "launch to every card ready",
    ),
    "idle_cpu_percent_per_card": (
        "cards",
        "cards",
        ("idle", "farm_percent"),
        "% of a core per card",
        "idle farm: broker + cards + forkserver",
    ),
    "throughput_rps_per_card": (
        "cards",
        "cards",
        ("load", "saturated", "throughput_rps", "median"),
        "req/s per card",
        "saturated, fixed in-flight",
    ),
    "p99_ms_per_card": (
        "cards",
        "cards",
        ("load", "saturated", "p99_ms", "median"),
        "ms per card",
        "saturated p99",
    ),
    "light_p99_ms_per_card": (
        "cards",
        "cards",
        ("load", "light", "p99_ms", "median"),
        "ms per card",
        "light-load p99",
    ),
    "throughput_rps_per_client": (
        "clients",
        "clients",
        ("saturated", "throughput_rps", "median"),
        "req/s per added client process",
        "saturated, fixed in-flight",
    ),
    "p99_ms_per_client": (
        "clients",
        "clients",
        ("saturated", "p99_ms", "median"),
        "ms per added client process",
        "saturated p99",
    ),
    "light_p99_ms_per_client": (
        "clients",
        "clients",
        ("light", "p99_ms", "median"),
        "ms per added client process",
        "light-load p99",
    ),
}


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Least-squares ``y = intercept + slope * x``; None figures with fewer than 2 x values."""
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None]
    out: dict[str, Any] = {"slope": None, "intercept": None, "r2": None, "points": len(pairs)}
    if len({x for x, _ in pairs}) < 2:
        return out
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (intercept + slope * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    out.update(
        slope=float(f"{slope:.4g}"),
        intercept=float(f"{intercept:.4g}"),
        r2=round(1.0 - residual / total, 3) if total > 0 else None,
    )
    return out


def steps(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """``Δy / Δx`` between neighbouring points, in the order of ``xs`` (equal xs skipped)."""
    pairs = sorted((x, y) for x, y in zip(xs, ys) if y is not None)
    return [
        float(f"{(y1 - y0) / (x1 - x0):.4g}")
        for (x0, y0), (x1, y1) in zip(pairs, pairs[1:])
        if x1 != x0
    ]


def _get(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _points(result: dict[str, Any], sweep: str) -> list[dict[str, Any]]:
    """The points of a sweep; the cards sweep also gets the big farm (its start, idle and light
    load are measured alike; its saturated run has another in-flight count, so it is left out)."""
    if sweep == "clients":
        return list(result.get("clients_sweep", []))
    points = list(result.get("cards_sweep", []))
    big = result.get("big_farm") or {}
    if big.get("start_s") is not None:
        points.append({**big, "load": {"light": _get(big, ("load", "light"))}})
    return points


def costs(result: dict[str, Any]) -> dict[str, Any]:
    """Every :data:`COSTS` entry: the fit, its unit and meaning, and the points it went through."""
    out = {}
    for name, (sweep, x_key, path, unit, meaning) in COSTS.items():
        points = [p for p in _points(result, sweep) if _get(p, path) is not None]
        xs = [p[x_key] for p in points]
        ys = [_get(p, path) for p in points]
        doubling = linear_fit([math.log2(x) for x in xs], ys)
        out[name] = {
            **linear_fit(xs, ys),
            "unit": unit,
            "meaning": meaning,
            "per_doubling": {"slope": doubling["slope"], "r2": doubling["r2"]},
            "steps": steps(xs, ys),
            "x": xs,
            "y": ys,
        }
    return out


# --------------------------------------------------------------------------------------------
# markdown


def _num(value: Any, fmt: str = "{:,.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def _range(node: dict[str, Any] | None, fmt: str = "{:,.3g}") -> str:
    """``median (min–max)`` of a :func:`benchmarks.scale_load.spread`."""
    if not node or node.get("median") is None:
        return "-"
    med, lo, hi = (fmt.format(node[k]) for k in ("median", "min", "max"))
    return f"{med} ({lo}–{hi})"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _load_cells(load: dict[str, Any] | None) -> list[str]:
    load = load or {}
    sat, light = load.get("saturated") or {}, load.get("light") or {}
    return [
        _range(sat.get("throughput_rps"), "{:,.0f}"),
        _range(sat.get("p99_ms"), "{:.2f}"),
        _range(light.get("p99_ms"), "{:.2f}"),
        _num(load.get("loadavg_1m_at_start"), "{:.1f}"),
    ]


def _sweep_tables(result: dict[str, Any]) -> list[str]:
    plan = result["plan"]
    lines = [
        f"Cards, {plan['base_clients']} client processes, {plan['in_flight']} requests in flight "
        f"(saturated) / {plan['light_rps']:g} req/s (light):",
        "",
    ]
    rows = [
        [
            str(p["cards"]),
            _num(p.get("start_s"), "{:.2f}"),
            _num(_get(p, ("idle", "farm_percent")), "{:.1f}"),
            _num(_get(p, ("idle", "per_card_percent")), "{:.2f}"),
            *_load_cells(p.get("load")),
        ]
        for p in result.get("cards_sweep", [])
    ]
    head = ["cards", "start s", "idle CPU %", "% per card", "req/s", "p99 ms", "light p99 ms"]
    head.append("load avg")
    lines += _table(head, rows)
    failed = [p for p in result.get("cards_sweep", []) if p.get("error")]
    lines += [f"- {p['cards']} cards did not run: {p['error'][-300:]}" for p in failed]
    lines += [
        "",
        f"Client processes, {plan['client_cards']} cards, {plan['in_flight']} in flight:",
        "",
    ]
    rows = [
        [str(p["clients"]), _num(p["saturated"].get("client_cpu_util_max")), *_load_cells(p)]
        for p in result.get("clients_sweep", [])
    ]
    head = ["clients", "max CPU per client", "req/s", "p99 ms", "light p99 ms", "load avg"]
    return lines + _table(head, rows)


def _big_lines(big: dict[str, Any] | None) -> list[str]:
    if not big:
        return []
    head = f"{big.get('cards')} cards on one box, {big.get('hbm_per_card')} HBM each"
    if big.get("error"):
        return ["", f"{head}: **did not run**: {big['error'][-600:]}"]
    idle, load = big.get("idle") or {}, big.get("load") or {}
    light, sat = load.get("light") or {}, load.get("saturated") or {}
    every = big.get("cards_per_task")
    rows = [
        ["start (launch to every card ready)", _num(big.get("start_s"), "{:.2f} s")],
        ["broker's own start figure", _num(big.get("broker_uptime_at_announce_s"), "{:.2f} s")],
        ["stop (SIGTERM to exit)", _num(big.get("stop_s"), "{:.2f} s")],
        ["idle CPU, farm", _num(idle.get("farm_percent"), "{:.1f} % of a core")],
        [
            "idle CPU, broker / cards",
            f"{_num(idle.get('broker_percent'), '{:.1f}')} % / "
            f"{_num(idle.get('cards_percent'), '{:.1f}')} %",
        ],
        ["idle CPU per card", _num(idle.get("per_card_percent"), "{:.3f} %")],
        [
            f"light load {_num(light.get('rate_rps'), '{:g}')} req/s over every {every}th card:"
            " p50 / p99",
            f"{_range(light.get('p50_ms'), '{:.2f}')} / {_range(light.get('p99_ms'), '{:.2f}')} ms",
        ],
        [
            f"{load.get('in_flight')} in flight (1 per {every} cards): req/s, p99",
            f"{_range(sat.get('throughput_rps'), '{:,.0f}')}, "
            f"{_range(sat.get('p99_ms'), '{:.2f}')} ms",
        ],
    ]
    return ["", f"{head}:", "", *_table(["", "measured"], rows)]


def markdown(result: dict[str, Any]) -> str:
    """The summary: the sweep tables, the big farm, and the costs."""
    plan = result["plan"]
    load = result["host"].get("loadavg_at_start")
    lines = [
        f"Scale run ({'quick' if result.get('quick') else 'full'}, {result['host']['cpus']} "
        f"cores, load average at start {load}, {result.get('elapsed_s')} s; medians of "
        f"{plan['rounds']} rounds of {plan['window_s']:g} s, min–max in brackets):",
        "",
        *_sweep_tables(result),
        *_big_lines(result.get("big_farm")),
        "",
        "Costs (least-squares slope over the points):",
        "",
    ]
    rows = [
        [
            name,
            _num(c["slope"], "{:.4g}"),
            c["unit"],
            _num(c["intercept"], "{:.4g}"),
            _num(c["r2"], "{:.2f}"),
            _num(c["per_doubling"]["slope"], "{:.4g}"),
            _num(c["per_doubling"]["r2"], "{:.2f}"),
            ", ".join(f"{v:+.3g}" for v in c["steps"]) or "-",
            c["meaning"],
        ]
        for name, c in (result.get("costs") or {}).items()
    ]
    head = ["cost", "slope", "unit", "intercept", "r²", "per doubling", "r² (log2 x)", "steps"]
    head.append("of")
    lines += _table(head, rows)
    return "\n".join(lines)
