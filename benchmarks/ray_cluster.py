"""Cluster overhead through Ray: the same ``npufarm bench --ray`` on 1 node × 4 cards and on
2 nodes × 2 cards, in one run, and the time from ``ray start`` to the NPUs being visible.

::

    python -m benchmarks.ray_cluster [--duration-s 5] [--rounds 2] [--out FILE] [--markdown]

For each load (``modelled``: time_scale 5, i.e. 10 ms per matmul request, closed loop with one
request per card in flight, so the cards set the pace; ``cpu-bound``: time_scale 0, two per
card, so the 2 cores do), a cluster is started with the tests' harness
(:mod:`tests.system.ray_harness`: a farm per node, ``ray start`` per node with its
``NPUFARM_ADDRESS``, Ray's own NPU detection) in each layout, the bench runs once, the cluster
stops; the layouts alternate, ``--rounds`` times, and the figures are the rounds' medians (each
round's are kept). Reported per layout: throughput, p50/p99 (merged histograms), errors, the
``ray start`` time of each node and the time from the first ``ray start`` until
``ray.cluster_resources()`` shows every NPU, and the box's 1-minute load average before and
after (other work on the box shows there); then the 2×2 / 1×4 ratios. Everything shares this
box's 2 cores: the 2-node layout pays for a second raylet and farm, not for a network.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.rounds import emit
from loadtest.plan import BenchConfig

__all__ = ["measure_layout", "run", "main"]

logger = logging.getLogger(__name__)

SCHEMA = "npufarm.bench.ray_cluster/1"
LAYOUTS = {"1x4": (4,), "2x2": (2, 2)}
LOADS = {  # name: (farm time_scale, closed-loop concurrency)
    "modelled": (5.0, 4),
    "cpu-bound": (0.0, 8),
}


def measure_layout(cards: tuple[int, ...], time_scale: float, concurrency: int, duration_s: float):
    """Start a cluster of ``cards`` per node, run the bench once, stop it; the figures."""
    import ray

    from loadtest.loadgen import run_bench
    from tests.conftest import poll_for
    from tests.system.ray_harness import start_cluster, stop_cluster

    root = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    load_before = os.getloadavg()[0]
    cluster = start_cluster(root, cards, time_scale=time_scale)
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        poll_for(lambda: ray.cluster_resources().get("NPU", 0) == sum(cards), 60.0, 0.02)
        visible_s = time.monotonic() - cluster.nodes[0].start_s
        config = BenchConfig(
            ray=cluster.address,
            concurrency=(concurrency,),
            duration_s=duration_s,
            warmup_s=1.0,
            live=False,
        )
        result = run_bench(config)
    finally:
        ray.shutdown()
        stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)
    phase = result["phases"][0]
    return {
        "nodes": len(cards),
        "cards": sum(cards),
        "throughput_rps": phase["throughput_rps"],
        "completed": phase["completed"],
        "errors": phase["errors"],
        "latency_ms": {k: phase["latency_ms"][k] for k in ("p50", "p99", "max")},
        "per_node_p99_ms": [n["latency_ms"]["p99"] for n in phase["per_node"].values()],
        "ray_start_s": [round(n.up_s - n.start_s, 3) for n in cluster.nodes],
        "first_ray_start_to_npus_visible_s": round(visible_s, 3),
        "worker_cpu_util": phase["generator"]["worker_cpu_util"],
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The first round's record with the medians of the rounds' figures, and every round's."""
    med = statistics.median
    out = dict(rounds[0])
    out["throughput_rps"] = round(med(r["throughput_rps"] for r in rounds), 1)
    out["latency_ms"] = {
        k: round(med(r["latency_ms"][k] for r in rounds), 3) for k in ("p50", "p99", "max")
    }
    out["first_ray_start_to_npus_visible_s"] = round(
        med(r["first_ray_start_to_npus_visible_s"] for r in rounds), 3
    )
    out["ray_start_s"] = [round(med(v), 3) for v in zip(*(r["ray_start_s"] for r in rounds))]
    out["errors"] = {"rounds": [r["errors"] for r in rounds]}
    out["rounds"] = rounds
    return out


def run(duration_s: float, rounds: int = 2) -> dict[str, Any]:
    loads = {}
    for load, (time_scale, concurrency) in LOADS.items():
        got: dict[str, list] = {name: [] for name in LAYOUTS}
        for _ in range(rounds):  # alternate the layouts: drift on the box hits both alike
            for name, cards in LAYOUTS.items():
                got[name].append(measure_layout(cards, time_scale, concurrency, duration_s))
        layouts = {name: _median(runs) for name, runs in got.items()}
        one, two = layouts["1x4"], layouts["2x2"]
        loads[load] = {
            "time_scale": time_scale,
            "concurrency": concurrency,
            "layouts": layouts,
            "throughput_2x2_over_1x4": _ratio(two["throughput_rps"], one["throughput_rps"]),
            "p99_2x2_over_1x4": _ratio(two["latency_ms"]["p99"], one["latency_ms"]["p99"]),
        }
    return {
        "schema": SCHEMA,
        "box": {"cpus": os.cpu_count()},
        "duration_s": duration_s,
        "rounds": rounds,
        "model": "matmul (fixed 2 ms × time_scale)",
        "loads": loads,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| load | layout | req/s | p50 ms | p99 ms | errors | `ray start` s | "
        "first `ray start` → NPUs visible s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for load, entry in result["loads"].items():
        for name, f in entry["layouts"].items():
            lat = f["latency_ms"]
            lines.append(
                f"| {load} | {name} | {f['throughput_rps']:,.0f} | {lat['p50']:.2f} | "
                f"{lat['p99']:.2f} | {sum(sum(e.values()) for e in f['errors']['rounds'])} | "
                f"{', '.join(f'{s:.1f}' for s in f['ray_start_s'])} | "
                f"{f['first_ray_start_to_npus_visible_s']:.1f} |"
            )
        lines.append(
            f"| {load} | **2x2 / 1x4** | **{entry['throughput_2x2_over_1x4']}** | | "
            f"**{entry['p99_2x2_over_1x4']}** | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured s per bench")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each layout (medians)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--markdown", action="store_true", help="only the table on stdout")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level)
    result = run(args.duration_s, args.rounds)
    emit(result, table(result), args.out, args.markdown)


if __name__ == "__main__":
    main()
