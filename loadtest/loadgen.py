"""``npufarm bench``: the command line and :func:`run_bench`, which runs a :class:`BenchConfig` on
one farm (:class:`loadtest.bench_run.BenchRun`: worker processes, the data-flow diagram is there)
or, with ``config.ray``, on a Ray cluster with a farm per node
(:class:`loadtest.ray_bench.RayBenchRun`: the workers are Ray actors). ``BenchRun`` and
``Collector`` are re-exported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from client.embedded import EmbeddedFarm
from core.errors import NpuFarmError
from core.statefile import resolve_address
from farm.admin import query_status
from loadtest.bench_run import READY_TIMEOUT_S, BenchRun, Collector
from loadtest.cluster_report import node_table
from loadtest.plan import DEFAULT_MODEL, BenchConfig, parse_sweep
from loadtest.render import print_bench_summary, write_bench_plots

__all__ = ["BenchRun", "Collector", "run_bench", "bench_main"]

logger = logging.getLogger(__name__)


def run_bench(
    config: BenchConfig, on_phase_start: Callable[[str, float], None] | None = None
) -> dict[str, Any]:
    """Run every phase of ``config`` against a running farm; return the result (and write the
    files to ``config.out_dir`` if set). Ctrl-C (in the main thread) ends the run early, with a
    result of what was measured. ``on_phase_start(name, t0)`` is called as each phase is handed
    to the workers, ``t0`` its start on the ``time.monotonic()`` clock (warm-up included): an
    experiment can time a fault to the load. With ``config.ray`` the workers are Ray actors on
    a cluster (:mod:`loadtest.ray_bench`)."""
    if config.ray is not None:
        from loadtest.ray_bench import run_ray_bench  # the optional ray extra

        return run_ray_bench(config, on_phase_start)
    return BenchRun(config, on_phase_start).run()


# --------------------------------------------------------------------------------------------
# the CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="npufarm bench",
        description="Drive a farm (or, with --ray, a farm per Ray node) with a closed- or "
        "open-loop inference load through pyACL, and report throughput, latency percentiles, "
        "errors, the modelled-latency accuracy and fault windows.",
    )
    add = p.add_argument
    add(
        "--address",
        help="farm endpoint (default: NPUFARM_ADDRESS, the running default farm, "
        "else an embedded farm from --config)",
    )
    add("--config", help="farm config TOML for an embedded farm")
    add(
        "--faults",
        help="fault plan TOML for an embedded farm (with --ray: its rules are injected into "
        "the nodes' farms as the bench starts, at_s counted from then; a rule with node= only "
        "into that node's)",
    )
    add(
        "--ray",
        metavar="ADDRESS",
        help='run the workers as Ray actors on a cluster ("auto" or HOST:PORT), one farm per '
        "node; needs the ray extra",
    )
    add(
        "--npus-per-worker",
        type=int,
        default=1,
        help="with --ray: the NPU resources each worker actor asks for (default 1)",
    )
    add(
        "--model",
        default=DEFAULT_MODEL,
        help="an .om (npufarm atc) or a model TOML (default: matmul)",
    )
    add("--cards", default="all", help='"all" or a comma list of device ids')
    add("--streams-per-card", type=int, help="slots per card (default: enough for the sweep)")
    add(
        "--workers",
        type=int,
        help="client processes (default: min(2, cards); with --ray: NPUs / --npus-per-worker)",
    )
    add(
        "--concurrency",
        default="1",
        help="closed loop: start:stop:step (stop included, "
        "1:16:4 runs 1,5,9,13,16) or a comma list",
    )
    add(
        "--request-rate",
        help="open loop: requests/s, start:stop:step (stop included) or a comma list",
    )
    add("--arrival", choices=("constant", "poisson"), default="constant")
    add(
        "--duration-s", type=float, help="measured seconds per phase (default 10 unless --requests)"
    )
    add("--requests", type=int, help="measured requests per phase")
    add("--warmup-s", type=float, default=1.0, help="excluded warm-up per phase")
    add("--slo-ms", type=float, help="latency objective for goodput and fault detection")
    add("--percentiles", default="50,90,95,99,99.9")
    add("--seed", type=int, default=0, help="Poisson arrivals seed")
    add(
        "--sync-timeout-ms",
        type=int,
        default=10_000,
        help="stream-sync timeout per request (also bounds how long Ctrl-C can take)",
    )
    add(
        "--out",
        help="directory for result.json, summary.csv, requests.jsonl (--per-request) "
        "and the PNGs (with matplotlib)",
    )
    add("--per-request", action="store_true", help="also write requests.jsonl")
    add("--quiet", action="store_true", help="no summary table")
    add("-v", "--verbose", action="count", default=0)
    return p


def bench_main(argv: list[str] | None = None) -> int:
    """``npufarm bench``: returns a process exit code."""
    args = _parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = BenchConfig(
            address=None if args.ray else (args.address or resolve_address()),
            model=args.model,
            cards=None if args.cards == "all" else parse_sweep(args.cards, int),
            streams_per_card=args.streams_per_card,
            workers=args.workers,
            mode="open" if args.request_rate else "closed",
            concurrency=parse_sweep(args.concurrency, int),
            rates=parse_sweep(args.request_rate) if args.request_rate else (),
            arrival=args.arrival,
            requests=args.requests,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s if args.duration_s or args.requests else 10.0,
            slo_ms=args.slo_ms,
            percentiles=parse_sweep(args.percentiles),
            seed=args.seed,
            sync_timeout_ms=args.sync_timeout_ms,
            out_dir=args.out,
            per_request=args.per_request,
            ray=args.ray,
            npus_per_worker=args.npus_per_worker,
        )
    except ValueError as exc:
        print(f"npufarm bench: {exc}", file=sys.stderr)
        return 2
    embedded = None
    try:
        if config.ray is not None:
            from loadtest.ray_bench import run_ray_bench  # the optional ray extra

            result = run_ray_bench(config, faults=args.faults)  # at_s from the bench's start
        else:
            if config.address is None:
                config, embedded = _with_embedded_farm(config, args.config, args.faults)
            result = run_bench(config)
    except (ValueError, RuntimeError, OSError, NpuFarmError) as exc:
        print(f"npufarm bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    if not args.quiet:
        print_bench_summary(result)
        if (nodes := node_table(result)) is not None:
            Console().print(nodes)
    print(write_bench_plots(result, config.out_dir, config.per_request))
    interrupted = any(p["interrupted"] for p in result["phases"])
    return 130 if interrupted else 0


def _with_embedded_farm(config: BenchConfig, config_path: str | None, faults: str | None):
    farm = EmbeddedFarm(config_path, faults=faults)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            query_status(farm.address, timeout_s=0.5)
            break
        except NpuFarmError:
            if time.monotonic() > deadline or farm.process.poll() is not None:
                farm.stop()
                raise RuntimeError("the embedded farm did not start") from None
    return dataclasses.replace(config, address=farm.address), farm
