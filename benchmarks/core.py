"""Farm benchmark: what the farm costs, divided by raw baselines measured in the same run.

``python -m benchmarks.core [--quick] [--out FILE] [--markdown]`` prints one JSON document (and a
markdown summary table on stderr; ``--markdown`` prints only the table, on stdout). Sections:

* ``baselines`` - :func:`benchmarks.raw.collect_baselines` plus a 4-in-flight raw echo.
* ``farm.routing`` - zero-latency tasks/s with K = 1/4/16 tasks in flight on 1 and 8 cards. The
  window is K streams (spread round-robin over the cards), each holding exactly one
  ``execute_async``; the loop syncs them in turn and resubmits, so K tasks are outstanding
  whenever a task is submitted. Ratio against the raw 3-hop echo at the same in-flight count.
* ``farm.pipelined`` - bursts of B ``execute_async`` per stream, then one ``synchronize_stream``
  (the client batches the burst into few SUBMIT messages), 2 streams per card; single-threaded
  and with one worker thread per card. Target: >= 100k tasks/s on 8 cards.
* ``farm.latency`` - one task at a time (``execute_async`` + ``synchronize_stream``) vs raw RTT.
* ``farm.sync_finished`` - ``synchronize_stream`` on a stream with nothing pending.
* ``farm.memcpy`` - ``acl.rt.memcpy`` H2D / D2H GB/s vs warm ``np.copyto`` into shm.
* ``farm.start`` - ``python -m npufarm up`` to state file for 4/16/64 cards (plus the broker's own
  ``uptime_s`` at announce, and SIGTERM-to-exit time).
* ``farm.idle_cpu`` - CPU of each card of an idle 4-card farm.

Where the code is: :mod:`benchmarks.core_farm` (the farm subprocess, the ACL session, the
streams), :mod:`benchmarks.core_rates` (routing and pipelined), :mod:`benchmarks.core_probes`
(latency, sync, memcpy, start, idle CPU), :mod:`benchmarks.core_report` (entries, targets, the
summary table); this module runs them in order and is the CLI.

Every farm is a ``python -m npufarm up`` subprocess with a private temp config (``time_scale`` 0,
default heartbeats), a private runtime dir and ``--watch-parent``; it is SIGTERMed and waited for
(killed after a timeout), its temp dir removed, and its ``/dev/shm`` segments checked (and swept
if anything was left). ``acl.finalize()`` always runs before a farm is stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks import raw
from benchmarks.core_farm import MIB, FarmProcess, Slot, acl_ok, acl_session, setup_slots
from benchmarks.core_probes import (
    measure_latency,
    measure_memcpy,
    measure_start,
    measure_sync_finished,
)
from benchmarks.core_rates import measure_pipelined, measure_routing
from benchmarks.core_report import markdown_table, summarize

__all__ = ["Plan", "main", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What one run measures: ``--quick`` shortens windows and drops the largest sizes."""

    duration_s: float
    samples: int
    sizes_mib: tuple[int, ...]
    start_cards: tuple[int, ...]
    idle_window_s: float
    in_flights: tuple[int, ...] = (1, 4, 16)
    burst: int = 64

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(0.4, 500, (1, 16), (4, 16), 1.0)
        return cls(1.0, 2000, (1, 16, 256), (4, 16, 64), 2.0)


def _host() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _phase(name: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    log.info("bench: %s ...", name)
    out = fn()
    log.info("bench: %s done in %.2f s", name, time.perf_counter() - t)
    return out


def _baselines(quick: bool) -> dict[str, Any]:
    """``raw.collect_baselines`` plus the 4-in-flight echo the routing table divides by."""
    baselines = raw.collect_baselines(quick=quick)
    with raw.EchoRig() as rig:
        baselines["echo"]["if4_b1"] = raw.raw_echo_rate(4, 0.5 if quick else 1.0, rig=rig)
    return baselines


def _batched_baseline(baselines: dict[str, Any]) -> float | None:
    """The best raw *batched* echo: the pipelined figures' transport ceiling."""
    batched = [v["tasks_per_s"] for v in baselines["echo"].values() if v["batch"] > 1]
    return max(batched) if batched else None


def _one_card_farm(plan: Plan, baselines: dict[str, Any], farm_res: dict[str, Any]) -> None:
    """One 1-card farm with 1 GiB HBM: routing, pipelined, latency, sync, memcpy."""
    echo, rtt = baselines["echo"], baselines["rtt"]
    with FarmProcess(1, hbm="1GiB") as farm, acl_session(farm.endpoint) as acl:
        by_card = setup_slots(1, max(plan.in_flights))
        farm_res["routing"]["1_card"] = _phase(
            "routing 1 card",
            lambda: {
                f"if{k}": measure_routing(farm, by_card, k, plan.duration_s, echo.get(f"if{k}_b1"))
                for k in plan.in_flights
            },
        )
        farm_res["pipelined"]["1_card"] = measure_pipelined(
            farm, [by_card[0][:2]], plan.burst, plan.duration_s, _batched_baseline(baselines)
        )
        farm_res["latency"] = _phase(
            "latency", lambda: measure_latency(by_card[0][0], plan.samples, rtt)
        )
        farm_res["sync_finished"] = measure_sync_finished(by_card[0][1], plan.samples, rtt)
        acl_ok(acl.rt.set_context(by_card[0][0].context), "set_context")
        farm_res["memcpy"] = _phase(
            "memcpy",
            lambda: {
                f"{m}MiB": measure_memcpy(m * MIB, 5, baselines["copy"].get(f"{m}MiB"))
                for m in plan.sizes_mib
            },
        )


def _routing_farm(
    n_cards: int, plan: Plan, baselines: dict[str, Any], pipelined: dict[str, Any]
) -> dict[str, Any]:
    """An ``n_cards`` farm: routing at every in-flight count (and a thread per card where there
    are enough streams), then pipelined into ``pipelined``; returns the routing entries."""
    per_card = max(2, math.ceil(max(plan.in_flights) / n_cards))
    echo, batched = baselines["echo"], _batched_baseline(baselines)
    out: dict[str, Any] = {}
    with FarmProcess(n_cards, hbm="64MiB") as farm, acl_session(farm.endpoint):
        by_card = setup_slots(n_cards, per_card)
        for k in plan.in_flights:
            base = echo.get(f"if{k}_b1")
            out[f"if{k}"] = measure_routing(farm, by_card, k, plan.duration_s, base)
            if n_cards > 1 and k >= n_cards:
                out[f"if{k}_thread_per_card"] = measure_routing(
                    farm, by_card, k, plan.duration_s, base, threads=True
                )
        two: list[list[Slot]] = [c[:2] for c in by_card]
        pipelined[f"{n_cards}_cards"] = measure_pipelined(
            farm, two, plan.burst, plan.duration_s, batched
        )
        if n_cards > 1:
            pipelined[f"{n_cards}_cards_thread_per_card"] = measure_pipelined(
                farm, two, plan.burst, plan.duration_s, batched, threads=True
            )
    return out


def _start_farms(plan: Plan) -> dict[str, Any]:
    """Start/stop time per farm size; the 4-card farm also measures idle CPU."""
    return {
        f"{n}_cards": _phase(
            f"start {n} cards",
            lambda n=n: measure_start(n, "64MiB", plan.idle_window_s if n == 4 else None),
        )
        for n in plan.start_cards
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure everything; return the JSON-able result."""
    started = time.perf_counter()
    plan = Plan.for_mode(quick)
    result: dict[str, Any] = {"quick": quick, "host": _host()}
    baselines = _phase("raw baselines", lambda: _baselines(quick))
    result["baselines"] = baselines
    farm_res: dict[str, Any] = {"routing": {}, "pipelined": {}}
    result["farm"] = farm_res
    _one_card_farm(plan, baselines, farm_res)
    farm_res["routing"]["8_cards"] = _phase(
        "routing 8 cards", lambda: _routing_farm(8, plan, baselines, farm_res["pipelined"])
    )
    farm_res["start"] = _start_farms(plan)
    farm_res["idle_cpu"] = farm_res["start"]["4_cards"].pop("idle_cpu")
    result["summary"] = summarize(result)
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core",
        description="Benchmark the farm against raw baselines; print JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="short windows, fewer sizes/cards")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the summary table on stdout instead of the JSON (JSON still goes to --out)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    result = run(quick=args.quick)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    table = markdown_table(result["summary"])
    if args.markdown:
        print(table)
    else:
        print(text)
        print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
