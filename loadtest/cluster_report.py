"""The cluster parts of an ``npufarm bench --ray`` result (pure): latency percentiles from merged
histograms, per card, per node and overall, and the ``per_node`` sections.

The result keeps the single-farm schema (:mod:`loadtest.report`: the renderer and plots read it
unchanged), with the cluster's cards numbered ``0..N-1`` over the nodes (ordered by Ray node
name, farm name, node id; then the card's device id on its node); it adds, per phase,
``per_node`` and, run-wide, ``cluster``::

    "phases": [{..., "latency_ms": from the merge of every worker's histograms,
                "per_card": {"3": {..., "latency_ms": merged histograms of card 3}},
                "per_node": {NODE_ID: {"node_name", "farm", "cards": [global ids],
                                       **summary without per_card (latency_ms merged)}}}],
    "cluster": {"ray", "nodes": [{"node_id", "node_name", "farm", "address", "hostname",
                                   "cards": {"global id": device id on the node},
                                   "offset_s"}],
                "workers": [{"index", "node_id", "accelerator_ids", "visible_devices",
                             "device_count", "pid"}],
                "histograms": loadtest.histograms.PRECISION,
                "latency_from": ...}

Counts, rates and errors come from the request samples as on one farm (every request is counted
once wherever it ran); the ``latency_ms`` figures named above come from HdrHistograms (each
worker's per phase and card, recorded in the worker, merged here: never an average of
percentiles); the fault windows' figures stay exact over the samples.

:func:`node_table` / :func:`print_node_table` render ``per_node`` (``rich``, imported there): the
per-node table ``npufarm bench --ray`` and ``npufarm report`` of its result print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from loadtest.histograms import PRECISION, merge
from loadtest.report import summarize
from loadtest.schema import DEFAULT_PERCENTILES, as_samples

__all__ = [
    "LATENCY_FROM",
    "NODE_CAPTION",
    "apply_histograms",
    "per_node",
    "cluster_section",
    "node_table",
    "print_node_table",
]

LATENCY_FROM = (
    "merged HdrHistograms for phases[].latency_ms, per_card and per_node; "
    "fault windows from the request samples"
)


def apply_histograms(
    phase: dict[str, Any],
    histograms: Mapping[int, Sequence[str]],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> None:
    """Set ``phase``'s overall and per-card ``latency_ms`` from the encoded histograms of each
    card (``{global card: [encoded, ...]}``: one per worker that drove it)."""
    every = [h for parts in histograms.values() for h in parts]
    phase["latency_ms"] = merge(every).figures(percentiles)
    for card, figures in phase.get("per_card", {}).items():
        figures["latency_ms"] = merge(histograms.get(int(card), ())).figures(percentiles)


def per_node(
    samples: np.ndarray,
    window: tuple[float, float],
    histograms: Mapping[int, Sequence[str]],
    nodes: Sequence[Mapping[str, Any]],
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slo_ms: float | None = None,
) -> dict[str, Any]:
    """One summary per node (``nodes``: ``node_id``, ``node_name``, ``farm``, ``cards``:
    ``{global card: device id}``) over its cards' samples in ``window``, its latency from the
    merge of its cards' histograms."""
    samples = as_samples(samples)
    out = {}
    for node in nodes:
        cards = sorted(int(c) for c in node["cards"])
        mine = samples[np.isin(samples["card"], cards)]
        figures = summarize(mine, percentiles, slo_ms, window)
        figures.pop("per_card", None)
        parts = [h for card in cards for h in histograms.get(card, ())]
        figures["latency_ms"] = merge(parts).figures(percentiles)
        out[node["node_id"]] = {
            "node_name": node.get("node_name"),
            "farm": node.get("farm"),
            "cards": cards,
            **figures,
        }
    return out


def cluster_section(
    ray_address: str,
    nodes: Sequence[Mapping[str, Any]],
    workers: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The run-wide ``cluster`` entry."""
    return {
        "ray": ray_address,
        "nodes": [
            {
                "node_id": n["node_id"],
                "node_name": n.get("node_name"),
                "farm": n.get("farm"),
                "address": n.get("address"),
                "hostname": n.get("hostname"),
                "cards": {str(g): int(d) for g, d in n["cards"].items()},
                "offset_s": n.get("offset_s", 0.0),
            }
            for n in nodes
        ],
        "workers": [dict(w) for w in workers],
        "histograms": dict(PRECISION),
        "latency_from": LATENCY_FROM,
    }


NODE_CAPTION = (
    "node: Ray node id (first 8 characters); cards: the cluster-wide card numbers it holds; "
    "req / err: requests intended in the measured window / failed; thr/s: completed per "
    "second; p50 / p99 / max: latency in ms from the merge of its cards' histograms"
)


def node_table(result: Mapping[str, Any]):
    """A ``rich`` table of each phase's ``per_node`` figures (None for a single-farm result):
    compact as :mod:`loadtest.render`'s tables (80 columns, numbers never cut)."""
    from loadtest.tables import compact_table  # (rich: only a terminal report needs it)

    rows = [
        (p, nid, fig)
        for p in result.get("phases", [])
        for nid, fig in (p.get("per_node") or {}).items()
    ]
    if not rows:
        return None
    columns = ("<phase", "<node", "<farm", "<cards", "req", "err", "thr/s", "p50", "p99", "max")
    table = compact_table("Per node (Ray)", columns, NODE_CAPTION)
    for phase, node_id, fig in rows:
        lat = fig.get("latency_ms") or {}
        table.add_row(
            str(phase.get("name", "?")),
            str(node_id)[:8],
            str(fig.get("farm")),
            ",".join(map(str, fig.get("cards", ()))),
            str(fig.get("requests", "-")),
            str((fig.get("requests") or 0) - (fig.get("completed") or 0)),
            f"{fig.get('throughput_rps') or 0:,.1f}",
            *(_ms(lat.get(k)) for k in ("p50", "p99", "max")),
        )
    return table


def _ms(value: Any) -> str:
    """A latency as :mod:`loadtest.render`'s tables show it (3 figures, — for none)."""
    if value is None:
        return "—"
    v = float(value)
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def print_node_table(result: Mapping[str, Any], console) -> None:
    """``npufarm report``'s and the Ray demo's hook: the per-node table of a ``--ray`` result
    on ``console`` (a ``rich.console.Console``); nothing for a single-farm result."""
    if (table := node_table(result)) is not None:
        console.print()
        console.print(table)
