"""What one farm costs at one size: its start time, its idle CPU (psutil), and the load points
that ``npufarm bench``'s own driver (:func:`loadtest.loadgen.run_bench`) measures on it.

A load point is two ``run_bench`` runs against the farm, each with its own client processes
(``workers``) and ``rounds`` back-to-back phases of the same setting:

* **saturated** - closed loop, ``in_flight`` slots (streams, round-robin over the driven cards)
  each issuing its next request when the previous one completes: throughput and p50/p99.
* **light** - open loop at ``light_rps`` requests/s (constant arrivals, dealt round-robin over
  the same slots) for ``light_window_s`` per round: p50/p99 when nothing queues, counted from
  the intended send time.

A request is what a service does per inference: H2D copy of the input, ``execute_async_v2``,
``synchronize_stream``, D2H copy of the output, on the zero-latency model (``time_scale`` 0, as
every :class:`~benchmarks.core_farm.FarmProcess`). Each figure is reported as the median of its
rounds, with min, max and every round.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from benchmarks.core_farm import MIB, ZERO_MODEL, FarmProcess, shm_free
from loadtest.loadgen import run_bench
from loadtest.plan import BenchConfig

__all__ = ["Load", "farm_facts", "hbm_bytes", "idle_cpu", "load_point", "spread"]

log = logging.getLogger(__name__)

_IDLE_SETTLE_S = 0.5  # start-up work (imports, first heartbeats) settles before idle is timed


@dataclass(frozen=True)
class Load:
    """One load point: how many requests in flight, from how many client processes, on which
    cards (None: every card of the farm), and how long each round runs."""

    in_flight: int
    clients: int
    light_rps: float
    rounds: int
    warmup_s: float
    window_s: float
    light_window_s: float  # longer: at a light rate a short window holds few samples for a p99
    cards: tuple[int, ...] | None = None


def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and every round of ``values`` (None when there are none)."""
    if not values:
        return {"median": None, "min": None, "max": None, "rounds": []}
    return {
        "median": round(float(np.median(values)), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "rounds": [round(v, digits) for v in values],
    }


def hbm_bytes(hbm: str) -> int:
    """``"8MiB"`` -> bytes (the only unit the scale benchmark writes)."""
    return int(hbm.removesuffix("MiB")) * MIB


def farm_facts(farm: FarmProcess) -> dict[str, Any]:
    """Start figures of a running farm: launch to state file (every card ready), the broker's
    own uptime at that announce, and the HBM per card."""
    uptime = farm.state.get("uptime_s")
    return {
        "cards": farm.cards,
        "start_s": round(farm.start_s or 0.0, 3),
        "broker_uptime_at_announce_s": None if uptime is None else round(uptime, 3),
        "hbm_per_card": farm.hbm,
        "shm_free_bytes_at_start": shm_free(),
    }


def _cpu_s(proc: psutil.Process) -> float | None:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def idle_cpu(farm: FarmProcess, window_s: float) -> dict[str, Any]:
    """CPU of the idle farm over ``window_s``: the broker, its cards and every other process
    under the broker (the forkserver), in % of one core, from psutil's ``cpu_times`` (clock-tick
    resolution: one tick over 2 s is 0.5 %, which is why the per-card figure is the cards'
    total divided by their number, not a per-card reading)."""
    time.sleep(_IDLE_SETTLE_S)
    broker = psutil.Process(farm.state["pid"])
    procs = [broker, *broker.children(recursive=True)]
    t0 = time.perf_counter()
    before = {p.pid: _cpu_s(p) for p in procs}
    time.sleep(window_s)
    after = {p.pid: _cpu_s(p) for p in procs}
    elapsed = time.perf_counter() - t0
    used = {
        pid: 100.0 * (after[pid] - before[pid]) / elapsed
        for pid in before
        if before[pid] is not None and after[pid] is not None
    }
    card_pids = set(farm.card_pids)
    cards = sum(v for pid, v in used.items() if pid in card_pids)
    total = sum(used.values())
    return {
        "window_s": round(elapsed, 3),
        "farm_percent": round(total, 2),
        "broker_percent": round(used.get(broker.pid, 0.0), 2),
        "cards_percent": round(cards, 2),
        "others_percent": round(total - cards - used.get(broker.pid, 0.0), 2),
        "per_card_percent": round(cards / max(1, len(card_pids)), 3),
        "processes": len(used),
        "source": "psutil cpu_times",
    }


def _bench(farm: FarmProcess, load: Load, mode: str) -> dict[str, Any]:
    """``load.rounds`` phases of one mode in one ``run_bench`` (one set of client processes)."""
    n_cards = len(load.cards) if load.cards is not None else farm.cards
    config = BenchConfig(
        address=farm.endpoint,
        model=str(ZERO_MODEL),
        cards=load.cards,
        streams_per_card=math.ceil(load.in_flight / n_cards),
        workers=load.clients,
        mode=mode,
        concurrency=(load.in_flight,) * load.rounds,
        rates=(load.light_rps,) * load.rounds if mode == "open" else (),
        duration_s=load.light_window_s if mode == "open" else load.window_s,
        warmup_s=load.warmup_s,
        live=False,
    )
    return run_bench(config)


def _phase_figures(result: dict[str, Any]) -> dict[str, Any]:
    """Per-round throughput and latency of a ``run_bench`` result, reduced by :func:`spread`."""
    phases = result["phases"]
    lat = [p["latency_ms"] for p in phases]
    utils = [u for p in phases for u in p["generator"]["worker_cpu_util"]]
    return {
        "throughput_rps": spread([p["throughput_rps"] for p in phases], 1),
        "p50_ms": spread([x["p50"] for x in lat if x.get("p50") is not None]),
        "p99_ms": spread([x["p99"] for x in lat if x.get("p99") is not None]),
        "requests": sum(p["completed"] for p in phases),
        "errors": sum(sum(p["errors"].values()) for p in phases),
        "client_cpu_util_max": round(max(utils), 3) if utils else None,
        "client_setup_s": result["generator"].get("setup_s"),
    }


def load_point(farm: FarmProcess, load: Load) -> dict[str, Any]:
    """Saturated (closed loop) and light (open loop) figures of ``load`` on ``farm``."""
    t0 = time.perf_counter()
    loadavg_1m = round(os.getloadavg()[0], 2)  # the box is shared: a noisy point shows here
    saturated = _phase_figures(_bench(farm, load, "closed"))
    light = _phase_figures(_bench(farm, load, "open"))
    light["rate_rps"] = load.light_rps
    driven = list(load.cards) if load.cards is not None else list(range(farm.cards))
    log.info(
        "scale: %d cards, %d clients: %.0f req/s, p99 %.2f ms; light p99 %.2f ms",
        farm.cards,
        load.clients,
        saturated["throughput_rps"]["median"] or 0.0,
        saturated["p99_ms"]["median"] or 0.0,
        light["p99_ms"]["median"] or 0.0,
    )
    return {
        "cards": farm.cards,
        "clients": load.clients,
        "in_flight": load.in_flight,
        # the closed loop's slots are the first in_flight, round-robin over the driven cards;
        # the open loop deals its arrivals over every slot, so it touches every driven card
        "cards_driven": {"saturated": min(len(driven), load.in_flight), "light": len(driven)},
        "rounds": load.rounds,
        "window_s": load.window_s,
        "light_window_s": load.light_window_s,
        "loadavg_1m_at_start": loadavg_1m,
        "saturated": saturated,
        "light": light,
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
