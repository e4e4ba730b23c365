"""Farm benchmark: what the farm costs, divided by raw baselines measured beside it, in rounds.

``python -m benchmarks.core [--quick] [--rounds N] [--out FILE] [--markdown]`` prints one JSON
document (and a markdown summary table on stderr; ``--markdown`` prints only the table, on stdout).

Every figure is the **median of N interleaved rounds** (default 5, ``--quick`` 2): a farm is
started once per phase, and each round runs every measurement of the phase followed at once by its
raw baseline (farm, raw, farm, raw, ...), so slow drift of a shared box hits both; the raw echo
helpers (:class:`benchmarks.raw.EchoRig`) stay up for the whole run. Each entry carries the
medians, the rounds' min/max, the ratio of the medians and the min/max of the per-round ratios
(:mod:`benchmarks.rounds`). Sections:

* ``baselines`` - :func:`benchmarks.raw.collect_baselines` plus a 4-in-flight raw echo, once,
  before any farm: context (direct RTT, idle helpers, every echo config). The ratios divide by
  the baselines measured in the rounds, which each entry holds.
* ``farm.routing`` - zero-latency tasks/s with K = 1/4/16 tasks in flight on 1 and 8 cards. The
  window is K streams (spread round-robin over the cards), each holding exactly one
  ``execute_async``; the loop syncs them in turn and resubmits, so K tasks are outstanding
  whenever a task is submitted. Ratio against the raw 3-hop echo at the same in-flight count.
* ``farm.pipelined`` - bursts of B ``execute_async`` per stream, then one ``synchronize_stream``
  (the client batches the burst into few SUBMIT messages), 2 streams per card; single-threaded
  and with one worker thread per card. Target: >= 100k tasks/s on 8 cards. Baseline: the raw
  echo with 64 messages of 16 tasks in flight (the batched transport ceiling).
* ``farm.latency`` - one task at a time (``execute_async`` + ``synchronize_stream``) vs raw RTT.
* ``farm.sync_finished`` - ``synchronize_stream`` on a stream with nothing pending.
* ``farm.memcpy`` - ``acl.rt.memcpy`` H2D / D2H GB/s vs warm ``np.copyto`` into shm.
* ``farm.start`` - ``python -m npufarm up`` to state file for 4/16/64 cards (plus the broker's own
  ``uptime_s`` at announce, and SIGTERM-to-exit time), a farm per size and round.
* ``farm.idle_cpu`` - CPU of each card of the idle 4-card farm of ``start``.

Where the code is: :mod:`benchmarks.core_farm` (the farm subprocess, the ACL session, the
streams), :mod:`benchmarks.core_rates` (routing and pipelined), :mod:`benchmarks.core_probes`
(latency, sync, memcpy, start, idle CPU), :mod:`benchmarks.rounds` (running rounds, their
statistics), :mod:`benchmarks.core_report` (entries, targets, the summary table); this module
lays out the phases' steps and is the CLI.

Every farm is a ``python -m npufarm up`` subprocess with a private temp config (``time_scale`` 0,
default heartbeats), a private runtime dir and ``--watch-parent``; it is SIGTERMed and waited for
(killed after a timeout), its temp dir removed, and its ``/dev/shm`` segments checked (and swept
if anything was left). ``acl.finalize()`` always runs before a farm is stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import zmq

from benchmarks import raw
from benchmarks.core_farm import MIB, FarmProcess, Slot, acl_session, setup_slots
from benchmarks.core_probes import (
    idle_cpu_entry,
    latency_entry,
    measure_latency,
    measure_memcpy,
    measure_start,
    measure_sync_finished,
    memcpy_entries,
    start_entry,
    sync_finished_entry,
)
from benchmarks.core_rates import (
    measure_pipelined,
    measure_routing,
    pipelined_entry,
    routing_entry,
)
from benchmarks.core_report import markdown_table, summarize
from benchmarks.rounds import Step, emit, run_rounds

__all__ = ["BATCHED_ECHO", "Plan", "main", "run"]

log = logging.getLogger(__name__)

BATCHED_ECHO = (64, 16)  # (in flight, tasks per message): the pipelined figures' raw ceiling
START_HBM = "64MiB"


@dataclass(frozen=True)
class Plan:
    """What one run measures: ``--quick`` has 2 rounds, shorter windows, fewer sizes."""

    rounds: int
    duration_s: float  # each rate window, farm and raw alike (after a warm-up)
    samples: int  # one-at-a-time latency samples per round
    sizes_mib: tuple[int, ...]
    start_cards: tuple[int, ...]
    idle_window_s: float
    in_flights: tuple[int, ...] = (1, 4, 16)
    burst: int = 64
    copy_repeats: int = 5

    @classmethod
    def for_mode(cls, quick: bool, rounds: int | None = None) -> Plan:
        if quick:
            plan = cls(2, 0.3, 500, (1, 16), (4, 16), 1.0)
        else:
            plan = cls(5, 1.0, 2000, (1, 16, 256), (4, 16, 64), 2.0)
        if rounds is not None:
            if rounds < 1:
                raise ValueError("rounds must be >= 1")
            plan = replace(plan, rounds=rounds)
        return plan


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


def _baselines(quick: bool, rig: raw.EchoRig) -> dict[str, Any]:
    """``raw.collect_baselines`` plus a 4-in-flight echo: the raw figures once, as context."""
    baselines = raw.collect_baselines(quick=quick)
    baselines["echo"]["if4_b1"] = raw.raw_echo_rate(4, 0.5 if quick else 1.0, rig=rig)
    return baselines


# --------------------------------------------------------------------------------------------
# the steps of a round, and the entries of the rounds
# --------------------------------------------------------------------------------------------


def _cards_key(n: int) -> str:
    return f"{n}_card" + ("s" if n != 1 else "")


def _routing_steps(
    farm: FarmProcess, by_card: list[list[Slot]], plan: Plan, rig: raw.EchoRig
) -> list[Step]:
    """Per in-flight count: the farm's window (and a thread per card where there are enough
    streams), then the raw echo at the same count."""
    steps: list[Step] = []
    for k in plan.in_flights:
        steps.append((f"if{k}", partial(measure_routing, farm, by_card, k, plan.duration_s, False)))
        if len(by_card) > 1 and k >= len(by_card):
            threaded = partial(measure_routing, farm, by_card, k, plan.duration_s, True)
            steps.append((f"if{k}_thread_per_card", threaded))
        steps.append((f"raw_echo_if{k}", partial(raw.raw_echo_rate, k, plan.duration_s, rig=rig)))
    return steps


def _routing_entries(rec: dict[str, list[Any]], plan: Plan, n_cards: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in plan.in_flights:
        for name in (f"if{k}", f"if{k}_thread_per_card"):
            if name in rec:
                out[name] = routing_entry(rec[name], rec[f"raw_echo_if{k}"], k, n_cards)
    return out


def _pipelined_steps(
    farm: FarmProcess, two: list[list[Slot]], plan: Plan, rig: raw.EchoRig
) -> list[Step]:
    """Pipelined bursts (and a thread per card on several cards), then the batched raw echo."""
    steps: list[Step] = [
        ("pipelined", partial(measure_pipelined, farm, two, plan.burst, plan.duration_s, False))
    ]
    if len(two) > 1:
        threaded = partial(measure_pipelined, farm, two, plan.burst, plan.duration_s, True)
        steps.append(("pipelined_thread_per_card", threaded))
    in_flight, batch = BATCHED_ECHO
    batched = partial(raw.raw_echo_rate, in_flight, plan.duration_s, batch, rig=rig)
    steps.append(("raw_echo_batched", batched))
    return steps


def _pipelined_entries(rec: dict[str, list[Any]], plan: Plan, n_cards: int) -> dict[str, Any]:
    key = _cards_key(n_cards)
    out: dict[str, Any] = {}
    for name, suffix in (("pipelined", ""), ("pipelined_thread_per_card", "_thread_per_card")):
        if name in rec:
            entry = pipelined_entry(rec[name], rec["raw_echo_batched"], n_cards, 2, plan.burst)
            out[key + suffix] = entry
    return out


# --------------------------------------------------------------------------------------------
# the phases: one farm each (start: a farm per size and round)
# --------------------------------------------------------------------------------------------


def _one_card_farm(plan: Plan, rig: raw.EchoRig, farm_res: dict[str, Any]) -> None:
    """One 1-card farm with 1 GiB HBM: routing, pipelined, latency, sync, memcpy."""
    with FarmProcess(1, hbm="1GiB") as farm, acl_session(farm.endpoint):
        by_card = setup_slots(1, max(plan.in_flights))
        first, second = by_card[0][:2]
        steps = _routing_steps(farm, by_card, plan, rig)
        steps += _pipelined_steps(farm, [by_card[0][:2]], plan, rig)
        steps += [
            ("latency", partial(measure_latency, first, plan.samples)),
            ("raw_rtt", partial(raw.raw_rtt, plan.samples, rig=rig)),
            ("sync_finished", partial(measure_sync_finished, second, plan.samples)),
        ]
        for m in plan.sizes_mib:
            copy = partial(measure_memcpy, m * MIB, plan.copy_repeats, first.context)
            steps.append((f"memcpy_{m}MiB", copy))
            steps.append(
                (f"raw_copy_{m}MiB", partial(raw.raw_copy_rate, m * MIB, plan.copy_repeats))
            )
        rec = _phase("1-card farm", lambda: run_rounds(steps, plan.rounds, "1-card farm"))
    farm_res["routing"]["1_card"] = _routing_entries(rec, plan, 1)
    farm_res["pipelined"].update(_pipelined_entries(rec, plan, 1))
    farm_res["latency"] = latency_entry(rec["latency"], rec["raw_rtt"])
    farm_res["sync_finished"] = sync_finished_entry(rec["sync_finished"], rec["raw_rtt"])
    farm_res["memcpy"] = {
        f"{m}MiB": memcpy_entries(rec[f"memcpy_{m}MiB"], rec[f"raw_copy_{m}MiB"])
        for m in plan.sizes_mib
    }


def _many_card_farm(n_cards: int, plan: Plan, rig: raw.EchoRig, farm_res: dict[str, Any]) -> None:
    """An ``n_cards`` farm: routing at every in-flight count (and a thread per card where there
    are enough streams), then pipelined (and a thread per card)."""
    per_card = max(2, math.ceil(max(plan.in_flights) / n_cards))
    label = f"{n_cards}-card farm"
    with FarmProcess(n_cards, hbm="64MiB") as farm, acl_session(farm.endpoint):
        by_card = setup_slots(n_cards, per_card)
        steps = _routing_steps(farm, by_card, plan, rig)
        steps += _pipelined_steps(farm, [c[:2] for c in by_card], plan, rig)
        rec = _phase(label, lambda: run_rounds(steps, plan.rounds, label))
    farm_res["routing"][_cards_key(n_cards)] = _routing_entries(rec, plan, n_cards)
    farm_res["pipelined"].update(_pipelined_entries(rec, plan, n_cards))


def _start_farms(plan: Plan, farm_res: dict[str, Any]) -> None:
    """Start/stop time per farm size, each round; the 4-card farm also measures idle CPU."""
    steps: list[Step] = [
        (
            _cards_key(n),
            partial(measure_start, n, START_HBM, plan.idle_window_s if n == 4 else None),
        )
        for n in plan.start_cards
    ]
    rec = _phase("start", lambda: run_rounds(steps, plan.rounds, "start"))
    farm_res["start"] = {
        _cards_key(n): start_entry(rec[_cards_key(n)], n, START_HBM) for n in plan.start_cards
    }
    idle = [r["idle_cpu"] for r in rec.get("4_cards", []) if "idle_cpu" in r]
    if idle:
        farm_res["idle_cpu"] = idle_cpu_entry(idle)


def run(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Measure everything; return the JSON-able result."""
    started = time.perf_counter()
    plan = Plan.for_mode(quick, rounds)
    result: dict[str, Any] = {"quick": quick, "plan": asdict(plan), "host": _host()}
    farm_res: dict[str, Any] = {"routing": {}, "pipelined": {}}
    with raw.EchoRig() as rig:
        result["baselines"] = _phase("raw baselines", lambda: _baselines(quick, rig))
        result["farm"] = farm_res
        _one_card_farm(plan, rig, farm_res)
        _many_card_farm(8, plan, rig, farm_res)
    _start_farms(plan, farm_res)
    result["summary"] = summarize(result)
    result["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core",
        description="Benchmark the farm against raw baselines in interleaved rounds; print JSON.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds, short windows, fewer sizes/cards"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 2)")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the summary table on stdout instead of the JSON (JSON still goes to --out)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    result = run(quick=args.quick, rounds=args.rounds)
    emit(
        result, markdown_table(result["summary"], result["plan"]["rounds"]), args.out, args.markdown
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
