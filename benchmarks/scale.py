"""How the farm's cost grows (issue 12, goal 5): cards and client processes swept, one big farm.

``python -m benchmarks.scale [--quick] [--rounds N] [--big-cards N] [--out-dir DIR]
[--markdown] [--no-plots]`` writes ``scale.json``, ``scale.md`` and three PNGs into
``--out-dir`` (default ``benchmarks/results/scale``) and prints the JSON (``--markdown``: the
summary) on stdout.

* ``cards_sweep`` - a farm of N cards (1, 2, 4, 8, 16, 64): its start time (launch of ``python -m
  npufarm up`` to the state file, i.e. every card ready; the median of ``rounds`` starts), its
  idle CPU over a few seconds (psutil: broker, cards, forkserver), and a load point with
  ``base_clients`` client processes (:func:`benchmarks.scale_load.load_point`: saturated closed
  loop at ``in_flight`` requests in flight, then a light open loop at ``light_rps``).
* ``clients_sweep`` - on the ``client_cards``-card farm of that sweep, the same load point with
  1, 2, 4, 8 client processes (the in-flight requests dealt round-robin over them).
* ``big_farm`` - ``big_cards`` (256) cards on this box: start time, idle CPU, the light load over
  every 8th card, and a saturated run with one request in flight per 8 cards. If the farm cannot
  start (timeout, /dev/shm), the error is reported in its place.
* ``costs`` - least-squares lines through those points (:mod:`benchmarks.scale_report`): start
  time and idle CPU per card, throughput and p99 per card and per added client process.

The load is ``npufarm bench``'s driver (:func:`loadtest.loadgen.run_bench`) on the zero-latency
model with ``time_scale`` 0, so throughput is the farm's (and the clients') own CPU cost per
request; every farm is a :class:`benchmarks.core_farm.FarmProcess` (private config, SIGTERMed and
swept afterwards) with small HBM (``hbm``, 8 MiB) so that 256 cards fit in /dev/shm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.core_farm import REPO, BenchError, FarmProcess, shm_free
from benchmarks.scale_load import Load, farm_facts, hbm_bytes, idle_cpu, load_point, spread
from benchmarks.scale_plots import write_plots
from benchmarks.scale_report import costs, markdown

__all__ = ["Plan", "main", "run"]

log = logging.getLogger(__name__)

DEFAULT_OUT_DIR = REPO / "benchmarks" / "results" / "scale"


@dataclass(frozen=True)
class Plan:
    """What one run sweeps; ``--quick`` is a smoke test (few cards, tiny windows)."""

    cards: tuple[int, ...] = (1, 2, 4, 8, 16, 64)
    clients: tuple[int, ...] = (1, 2, 4, 8)
    base_clients: int = 2  # client processes of the cards sweep
    client_cards: int = 8  # the cards sweep's farm the clients sweep runs on
    in_flight: int = 16
    light_rps: float = 200.0
    rounds: int = 3
    warmup_s: float = 0.5
    window_s: float = 1.0
    light_window_s: float = 2.0
    idle_window_s: float = 2.0
    big_cards: int = 256
    big_idle_window_s: float = 3.0
    cards_per_task: int = 8  # big farm: one request in flight per this many cards
    hbm: str = "8MiB"
    start_timeout_s: float = 180.0

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if not quick:
            return cls()
        return cls(
            cards=(1, 4),
            clients=(1, 2),
            client_cards=4,
            in_flight=4,
            light_rps=100.0,
            rounds=2,
            warmup_s=0.1,
            window_s=0.3,
            light_window_s=0.3,
            idle_window_s=0.5,
            big_cards=16,
            big_idle_window_s=0.5,
            start_timeout_s=60.0,
        )

    def __post_init__(self) -> None:
        if self.client_cards not in self.cards:
            raise ValueError(f"client_cards {self.client_cards} is not one of cards {self.cards}")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")

    def load(self, clients: int, **extra: Any) -> Load:
        return Load(
            in_flight=extra.pop("in_flight", self.in_flight),
            clients=clients,
            light_rps=self.light_rps,
            rounds=self.rounds,
            warmup_s=self.warmup_s,
            window_s=self.window_s,
            light_window_s=self.light_window_s,
            **extra,
        )


def _host() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _start(n: int, plan: Plan) -> FarmProcess | dict[str, Any]:
    """A started farm of ``n`` cards, or what stopped it (no room in /dev/shm, start failed)."""
    knobs = {"cards": n, "hbm_per_card": plan.hbm, "start_timeout_s": plan.start_timeout_s}
    need, free = n * hbm_bytes(plan.hbm), shm_free()
    if need > free:
        return {**knobs, "error": f"/dev/shm has {free} bytes free, {n} cards need {need}"}
    farm = FarmProcess(n, hbm=plan.hbm)
    t0 = time.perf_counter()
    try:
        return farm.start(plan.start_timeout_s)
    except BenchError as exc:  # start() stopped the farm; report what happened in its place
        return {**knobs, "error": str(exc)[-2000:], "waited_s": round(time.perf_counter() - t0, 2)}


def _stopped(farm: FarmProcess, point: dict[str, Any]) -> dict[str, Any]:
    farm.stop()
    point.update(stop_s=farm.stop_s, killed=farm.killed, leftover_shm=len(farm.leftover_shm))
    return point


def _started_rounds(n: int, plan: Plan) -> tuple[FarmProcess | dict[str, Any], dict[str, Any]]:
    """``plan.rounds`` starts of an ``n``-card farm, all but the last stopped at once: the last
    farm (or what stopped a start) and the start figures as :func:`spread` s of the rounds."""
    starts: list[dict[str, Any]] = []
    for _ in range(plan.rounds):
        farm = _start(n, plan)
        if isinstance(farm, dict):
            return farm, {}
        starts.append(farm_facts(farm))
        if len(starts) < plan.rounds:
            farm.stop()
    keys = ("start_s", "broker_uptime_at_announce_s")
    return farm, {f"{k}_rounds": spread([s[k] for s in starts if s[k] is not None]) for k in keys}


def _cards_point(n: int, plan: Plan, clients_sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """One farm of the cards sweep (and the clients sweep, on ``plan.client_cards`` cards); its
    start time is the median of ``plan.rounds`` starts."""
    farm, starts = _started_rounds(n, plan)
    if isinstance(farm, dict):
        return farm
    point: dict[str, Any] = {}
    try:
        point = farm_facts(farm) | starts
        point["start_s"] = starts["start_s_rounds"]["median"]
        point["broker_uptime_at_announce_s"] = starts["broker_uptime_at_announce_s_rounds"][
            "median"
        ]
        point["idle"] = idle_cpu(farm, plan.idle_window_s)
        point["load"] = load_point(farm, plan.load(plan.base_clients))
        if n == plan.client_cards:
            for m in plan.clients:
                same = m == plan.base_clients
                clients_sweep.append(point["load"] if same else load_point(farm, plan.load(m)))
    finally:
        _stopped(farm, point)
    return point


def _big_farm(plan: Plan) -> dict[str, Any]:
    """``plan.big_cards`` cards: start, idle CPU, light load and 1 in flight per 8 cards."""
    n, per_task = plan.big_cards, plan.cards_per_task
    farm = _start(n, plan)
    if isinstance(farm, dict):
        return farm
    point: dict[str, Any] = {}
    try:
        point = {**farm_facts(farm), "cards_per_task": per_task}
        point["idle"] = idle_cpu(farm, plan.big_idle_window_s)
        driven = tuple(range(0, n, per_task))
        load = plan.load(plan.base_clients, in_flight=len(driven), cards=driven)
        point["load"] = load_point(farm, load)
    finally:
        _stopped(farm, point)
    return point


def run(plan: Plan, quick: bool = False) -> dict[str, Any]:
    """Measure everything in ``plan``; return the JSON-able result (plots not yet written)."""
    started = time.perf_counter()
    result: dict[str, Any] = {
        "schema": "npufarm.bench.scale/1",
        "quick": quick,
        "host": _host(),
        "plan": dataclasses.asdict(plan),
        "cards_sweep": [],
        "clients_sweep": [],
    }
    for n in plan.cards:
        log.info("scale: %d cards ...", n)
        result["cards_sweep"].append(_cards_point(n, plan, result["clients_sweep"]))
    if plan.big_cards:
        log.info("scale: big farm, %d cards ...", plan.big_cards)
        result["big_farm"] = _big_farm(plan)
    result["costs"] = costs(result)
    result["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Sweep cards and client processes, start a big farm; write JSON and PNGs.",
    )
    parser.add_argument("--quick", action="store_true", help="few cards, tiny windows (a test)")
    parser.add_argument("--rounds", type=int, help="rounds per point (default 3, quick 2)")
    parser.add_argument("--big-cards", type=int, help="cards of the big farm (0: none)")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="scale.json, .md, PNGs")
    parser.add_argument(
        "--markdown", action="store_true", help="print the summary instead of the JSON"
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    plan = Plan.for_mode(args.quick)
    changes = {"rounds": args.rounds, "big_cards": args.big_cards}
    plan = dataclasses.replace(plan, **{k: v for k, v in changes.items() if v is not None})
    result = run(plan, quick=args.quick)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = [] if args.no_plots else write_plots(result, out)
    text = json.dumps(result, indent=2)
    summary = markdown(result)
    (out / "scale.json").write_text(text + "\n", encoding="utf-8")
    (out / "scale.md").write_text(summary + "\n", encoding="utf-8")
    print(summary if args.markdown else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
