"""``npufarm demo --ray ADDRESS``: the fault experiment of :mod:`loadtest.demo` on a Ray cluster
with a farm per node, small enough for a laptop-sized cluster.

1. Connects to the cluster, lists its NPU nodes (Ray node id, node name, farm) and cards.
2. Runs an open-loop Poisson load over every NPU of the cluster through ``npufarm bench --ray``
   (one Ray actor per NPU); :data:`_DROP_INTO_LOAD_S` into it, card 0 of the *last* node drops
   its link: a ``disconnect`` rule with ``node=`` that node's id, sent through the node agents,
   so the other nodes never see it. That node's actor gets 507010, resets the device and carries
   on with the restarted card; the others keep their latency.
3. Writes the report (``result.json`` with ``per_node`` and ``cluster``, ``summary.csv``,
   ``requests.jsonl``, PNGs) and prints the phase, per-card, fault-window and per-node tables.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rich.console import Console

from core.fault_plan import FaultRule
from loadtest.demo import demo_config
from loadtest.loadgen import run_bench
from loadtest.plan import DEFAULT_MODEL
from loadtest.plots import render_all
from loadtest.ray_nodes import NodeSet, connect
from loadtest.render import load_samples, render_terminal

__all__ = ["run_ray_demo"]

logger = logging.getLogger(__name__)

_DROP_INTO_LOAD_S = 2.0


def _link_drop(nodes: NodeSet, node_index: int, at_monotonic_s: float) -> FaultRule:
    """A disconnect of card 0 of node ``node_index`` at ``at_monotonic_s`` (driver clock), as a
    farm-time rule routed by ``node=`` (the Ray node id)."""
    info = nodes.infos[node_index]
    before = time.monotonic()
    uptime_s = nodes.call("status")[node_index]["uptime_s"]
    now = (before + time.monotonic()) / 2
    rule = FaultRule(
        kind="disconnect",
        card=0,
        node=info["node_id"],
        at_s=round(uptime_s + max(0.0, at_monotonic_s - now), 3),
        name="ray-link-drop",
    )
    for done in nodes.inject([rule]):
        if done["reply"].get("code"):
            raise RuntimeError(f"demo: link drop refused: {done['reply'].get('error')}")
    return rule


def run_ray_demo(
    address: str, out_dir: str | None = None, duration_s: float = 6.0, rate: float = 200.0
) -> int:
    """Run the experiment on the cluster at ``address``; 0 when the load ran and the faulted
    node's actor recovered."""
    console = Console()
    out = Path(out_dir or f"out/demo-ray-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    ray = connect(address)
    nodes = NodeSet.start(ray)
    try:
        for info in nodes.infos:
            cards = len(info["status"].get("cards", ()))
            console.print(
                f"node {info['node_id'][:8]} ({info['node_name']}): farm {info['farm']!r} at "
                f"{info['address']}, {cards} cards"
            )
        victim = len(nodes.infos) - 1
        console.print(
            f"open-loop Poisson load, {rate:g} req/s for {duration_s:g} s over "
            f"{int(ray.cluster_resources().get('NPU', 0))} NPUs; card 0 of node "
            f"{nodes.infos[victim]['node_id'][:8]} drops its link {_DROP_INTO_LOAD_S:g} s in"
        )

        def on_phase_start(name: str, t0: float) -> None:
            rule = _link_drop(nodes, victim, t0 + _DROP_INTO_LOAD_S)
            logger.info("phase %s: %s", name, rule.to_dict())

        config = demo_config(out, rate, duration_s, ray=address, model=DEFAULT_MODEL)
        result = run_bench(config, on_phase_start=on_phase_start)
    finally:
        nodes.close()
    render_terminal(result, console)  # with the per-node table
    pictures = render_all(result, out, samples=list(load_samples(out / "requests.jsonl")))
    console.print(f"\nreport: {out}")
    for path in [out / "result.json", out / "summary.csv", *pictures]:
        console.print(f"  {path.name}")
    windows = [w for p in result["phases"] for w in p["fault_windows"]]
    recovered = any(w.get("time_to_recover_s") is not None for w in windows)
    return 0 if result["phases"] and recovered else 1
