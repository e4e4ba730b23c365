"""``npufarm bench``: drive a model on a set of cards through the real pyACL API and report.

Data flow (``══`` crosses a process boundary)::

    parent process: run_bench                       worker process × M (multiprocessing "spawn")
    ───────────────────────────                     ──────────────────────────────────────────
    phase plan: t0, window, slots,    ══commands══▶ main thread ──inbox──▶ slot threads, one per
      open-loop schedule slices         Queue (1/w)                        (card, stream): pyACL
    request budget (--requests)       ══Value═════▶ (closed loop: one token per request)
    stop (Ctrl-C)                     ══Event═════▶ slot loops end; acl.finalize; "bye"
    collect: samples by phase  ◀══results Queue════ main thread: a numpy batch of samples
      (+ live table on a tty)         batches,      (report.SAMPLE_DTYPE) every 0.1 s,
      → loadtest.report → files         phase_done    then the phase's CPU time
          ║ STATUS: uptime, fault-log path           ║ acl: ZeroMQ messages + /dev/shm copies
          ╚══════════════▶ farm: broker ══▶ cards ◀══╝

Slots are the (card, stream) pairs, ordered round-robin over the cards (slot k: card
``cards[k % n]``, its stream ``k // n``) and dealt round-robin to the workers, so each worker
process has its own GIL and ACL client. Closed loop: the first ``concurrency`` slots each issue
the next request when the previous completes (1 ms pause after an error). Open loop: a schedule
of intended send times (constant or Poisson, seeded) is dealt round-robin to all slots; a slot
sleeps until the next intended time or, when late, sends at once, and latency counts from the
intended time, so a stall shows in the percentiles (no coordinated omission). Intended times
more than 2 s past the phase end are not sent (``missed``). Each phase has its own warm-up,
excluded from the figures. Times are ``time.monotonic()``, one clock for every process on the
host (and the farm's, which gives fault-log times via the farm's uptime).

The generator measures itself (``generator`` in the result): achieved vs requested rate, the lag
of actual behind intended send times, the pause a closed-loop slot takes between two requests,
and the workers' CPU (a worker near 100 % of a core is GIL-bound: add ``--workers``).
The worker-process side is :mod:`loadtest.workers`; the result schema is in :mod:`loadtest.report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import report
from loadtest.workers import _FLUSH_S, _worker_main

__all__ = ["BenchConfig", "parse_sweep", "arrival_offsets", "run_bench", "bench_main"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "configs" / "models" / "matmul.toml")
_START_LEAD_S = 0.1  # a phase starts this long after its broadcast
_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run: a sweep of closed-loop concurrencies or open-loop rates."""

    address: str | None = None  # None: NPUFARM_ADDRESS or the running default farm
    model: str = DEFAULT_MODEL
    cards: tuple[int, ...] | None = None  # None: every card of the farm
    streams_per_card: int | None = None  # None: closed ceil(max concurrency / cards), open 1
    workers: int | None = None  # processes; None: min(2, cards)
    mode: str = "closed"  # closed | open
    concurrency: tuple[int, ...] = (1,)
    rates: tuple[float, ...] = ()  # open loop, requests/s
    arrival: str = "constant"  # constant | poisson
    duration_s: float | None = 10.0  # per phase, after the warm-up
    requests: int | None = None  # per phase, after the warm-up
    warmup_s: float = 1.0
    slo_ms: float | None = None
    percentiles: tuple[float, ...] = report.DEFAULT_PERCENTILES
    seed: int = 0
    sync_timeout_ms: int = 10_000
    out_dir: str | None = None
    per_request: bool = False
    live: bool | None = None  # None: when stdout is a terminal

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open") or self.arrival not in ("constant", "poisson"):
            raise ValueError(f"mode {self.mode!r} / arrival {self.arrival!r} unknown")
        values = self.concurrency if self.mode == "closed" else self.rates
        if not values or min(values) <= 0:
            raise ValueError(f"{self.mode} loop needs positive concurrency / rates, got {values}")
        if self.duration_s is None and self.requests is None:
            raise ValueError("bound each phase with duration_s or requests")
        if (self.duration_s or 1) <= 0 or (self.requests or 1) <= 0 or self.warmup_s < 0:
            raise ValueError("duration_s and requests must be > 0, warmup_s >= 0")
        if self.sync_timeout_ms <= 0 or (self.workers or 1) < 1 or (self.streams_per_card or 1) < 1:
            raise ValueError("sync_timeout_ms, workers and streams_per_card must be >= 1")


def parse_sweep(text: str, kind: type = float) -> tuple:
    """``"a:b:c"`` → a, a+c, a+2c, ... below b, then b itself: the stated bounds are both run
    (``1:16:4`` → 1, 5, 9, 13, 16); ``"a:b"`` steps by 1; ``"x,y,z"`` a list; ``"x"`` one."""
    text = text.strip()
    if ":" not in text:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    parts = [float(p) for p in text.split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] <= 0):
        raise ValueError(f"sweep {text!r}: expected start:stop[:step] with step > 0")
    start, stop, step = (*parts, 1.0) if len(parts) == 2 else parts
    if stop < start:
        raise ValueError(f"sweep {text!r}: stop {stop:g} is below start {start:g}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    values = [kind(start + i * step) for i in range(count)]
    if abs(float(values[-1]) - stop) > 1e-9 * max(1.0, abs(stop)):
        values.append(kind(stop))  # the step did not land on it: the bound is run too
    return tuple(dict.fromkeys(values))


def arrival_offsets(rate: float, arrival: str, *, warmup_s: float, duration_s: float | None,
                    requests: int | None, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Intended send times (s from the phase start, the first at 0 for constant arrivals): the
    warm-up ones, then ``requests`` or up to ``warmup_s + duration_s``, whichever ends first."""
    limit_s = warmup_s + duration_s if duration_s is not None else math.inf
    wanted = math.ceil(warmup_s * rate) + 1 + (requests if requests is not None else math.inf)
    if arrival == "constant":
        times = np.arange(min(wanted, limit_s * rate + 1)) / rate
    else:
        rng, chunks, last = np.random.default_rng(seed), [], 0.0
        while last < limit_s and sum(c.size for c in chunks) < wanted:
            chunks.append(last + np.cumsum(rng.exponential(1.0 / rate, 4096)))
            last = float(chunks[-1][-1])
        times = np.concatenate(chunks)
    times = times[times < limit_s]
    if requests is not None:
        times = times[: int((times < warmup_s).sum()) + requests]
    return times


# --------------------------------------------------------------------------------------------
# the parent


def _plan(config: BenchConfig, cards: list[int]) -> tuple[list[tuple[int, int]], list[dict]]:
    """(slots as (slot id, card), phases)."""
    n = len(cards)
    spc = config.streams_per_card or (
        math.ceil(max(config.concurrency) / n) if config.mode == "closed" else 1
    )
    slots = [(k, cards[k % n]) for k in range(n * spc)]
    if config.mode == "closed" and max(config.concurrency) > len(slots):
        raise ValueError(f"concurrency {max(config.concurrency)} > {n} cards × {spc} streams")
    phases = []
    for value in config.concurrency if config.mode == "closed" else config.rates:
        i = len(phases)
        if config.mode == "closed":
            phase = {"name": f"c{value}", "concurrency": value, "rate": None,
                     "slots": dict.fromkeys(range(value))}  # fmt: skip
        else:
            offsets = arrival_offsets(value, config.arrival, warmup_s=config.warmup_s,
                                      duration_s=config.duration_s, requests=config.requests,
                                      seed=config.seed + i)  # fmt: skip
            sids = [sid for sid, _ in slots]
            phase = {"name": f"r{value:g}", "concurrency": None, "rate": value,
                     "slots": {sid: offsets[j :: len(sids)] for j, sid in enumerate(sids)},
                     "last_s": float(offsets[-1]) if offsets.size else 0.0}  # fmt: skip
        phases.append({"index": i, "mode": config.mode, **phase})
    return slots, phases


class _Live:
    """Rich progress bar + per-card table while a terminal watches (no-op otherwise)."""

    def __init__(self, enabled: bool, cards: list[int]) -> None:
        self.enabled, self.cards, self.live, self.next_s = enabled, cards, None, 0.0
        if enabled:
            from rich.live import Live
            from rich.progress import Progress

            self.progress = Progress()
            self.live = Live(self.progress, refresh_per_second=4)
            self.live.start()

    def phase(self, name: str, t0: float, total_s: float | None) -> None:
        if self.live is not None:
            self.finish()
            self.t0, self.total = t0, total_s
            self.task = self.progress.add_task(name, total=total_s)
            self.counts = {c: [0, 0, np.empty(0)] for c in self.cards}

    def add(self, batch: np.ndarray) -> None:
        if self.live is None:
            return
        for card, entry in self.counts.items():
            rows = batch[batch["card"] == card]
            ok = rows["code"] == 0
            entry[0], entry[1] = entry[0] + int(ok.sum()), entry[1] + int((~ok).sum())
            entry[2] = np.concatenate([entry[2], report.latency_ms(rows[ok])])[-4096:]
        if (now := time.monotonic()) >= self.next_s:
            self.next_s = now + 0.25
            self.progress.update(self.task, completed=max(0.0, now - self.t0))
            self.live.update(self._render())

    def _render(self):
        from rich.console import Group
        from rich.table import Table

        table = Table("card", "ok", "errors", "p50 ms", "p99 ms (last 4096)")
        for card, (ok, errors, lat) in self.counts.items():
            p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (math.nan, math.nan)
            table.add_row(str(card), str(ok), str(errors), f"{p50:.2f}", f"{p99:.2f}")
        return Group(self.progress, table)

    def finish(self) -> None:
        """Mark the current phase's bar complete."""
        if getattr(self, "task", None) is not None:
            total = self.total or 1.0
            self.progress.update(self.task, total=total, completed=total)
            self.live.update(self._render())

    def close(self) -> None:
        if self.live is not None:
            self.finish()
            self.live.stop()


def _farm_start_s(address: str) -> tuple[dict[str, Any], float]:
    from farm.admin import query_status

    before = time.monotonic()
    status = query_status(address)
    return status, (before + time.monotonic()) / 2 - status["uptime_s"]


def run_bench(
    config: BenchConfig, on_phase_start: Callable[[str, float], None] | None = None
) -> dict[str, Any]:
    """Run every phase of ``config`` against a running farm; return the result (and write the
    files to ``config.out_dir`` if set). Ctrl-C (in the main thread) ends the run early, with a
    result of what was measured. ``on_phase_start(name, t0)`` is called as each phase is handed
    to the workers, ``t0`` its start on the ``time.monotonic()`` clock (warm-up included): an
    experiment can time a fault to the load."""
    import multiprocessing

    from core.statefile import resolve_address

    address = config.address or resolve_address()
    if address is None:
        raise ValueError("no farm: give an address, set NPUFARM_ADDRESS or start one")
    status, farm_start_s = _farm_start_s(address)
    all_cards = [c["device_id"] for c in status["cards"]]
    cards = list(config.cards) if config.cards is not None else all_cards
    if not cards or set(cards) - set(all_cards):
        raise ValueError(f"cards {cards}: the farm has {all_cards}")
    slots, phases = _plan(config, cards)
    n_workers = min(config.workers or min(2, len(cards)), len(slots))
    ctx = multiprocessing.get_context("spawn")
    results, stop_all, budget = ctx.Queue(), ctx.Event(), ctx.Value("q", 0)
    commands = [ctx.Queue() for _ in range(n_workers)]
    level = logging.getLogger().getEffectiveLevel()
    procs = [
        ctx.Process(target=_worker_main, name=f"npufarm-bench-{i}", daemon=True, args=(
            i, address, [s for s in slots if s[0] % n_workers == i], config.model,
            config.sync_timeout_ms, level, commands[i], results, stop_all, budget))
        for i in range(n_workers)
    ]  # fmt: skip
    bench_t0 = time.monotonic()
    state = {"interrupted_s": None, "ready": set(), "bye": set(), "errors": [], "done": {}}
    by_phase: dict[int, list[np.ndarray]] = {p["index"]: [] for p in phases}
    live = _Live(sys.stdout.isatty() if config.live is None else config.live, cards)

    def on_sigint(signum, frame) -> None:
        if state["interrupted_s"] is not None:
            raise KeyboardInterrupt
        state["interrupted_s"] = time.monotonic()
        stop_all.set()
        logger.warning("interrupted: stopping the workers (Ctrl-C again to abort)")

    def pump(timeout_s: float = _FLUSH_S) -> None:
        try:
            kind, worker, *rest = results.get(timeout=timeout_s)
        except queue.Empty:
            dead = [
                p.name
                for i, p in enumerate(procs)
                if p.exitcode is not None and i not in state["bye"]
            ]
            if dead:
                state["errors"].append(f"worker processes died: {dead}")
            return
        if kind == "samples":
            for index in np.unique(rest[0]["phase"]).tolist():
                by_phase[index].append(rest[0][rest[0]["phase"] == index])
            live.add(rest[0])
        elif kind == "phase_done":
            state["done"].setdefault(rest[0], {})[worker] = rest[1]
        elif kind == "error":
            state["errors"].append(rest[0])
        elif kind in ("ready", "bye"):
            state[kind].add(worker)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while len(state["ready"]) < n_workers and not state["errors"]:
            if state["interrupted_s"] is not None:
                break
            if time.monotonic() > deadline:
                state["errors"].append(f"workers not ready within {_READY_TIMEOUT_S:g}s")
            pump()
        state["setup_s"] = time.monotonic() - bench_t0
        for phase in phases:
            if state["errors"] or state["interrupted_s"] is not None:
                break
            t0 = time.monotonic() + _START_LEAD_S
            warm_end = t0 + config.warmup_s
            end = warm_end + config.duration_s if config.duration_s is not None else math.inf
            if config.mode == "open" and config.requests is not None:
                end = min(end, t0 + phase["last_s"] + 1.0 / phase["rate"])
            budget.value = config.requests or 0
            phase.update(t0=t0, warm_end=warm_end, end=end, budget=config.requests is not None)
            live.phase(phase["name"], t0, end - t0 if math.isfinite(end) else None)
            for i, command in enumerate(commands):
                mine = {sid: v for sid, v in phase["slots"].items() if sid % n_workers == i}
                command.put({**phase, "slots": mine})
            if on_phase_start is not None:
                on_phase_start(phase["name"], t0)
            while len(state["done"].get(phase["index"], {})) < n_workers and not state["errors"]:
                pump()
            phase["ran"] = True
    finally:
        for command in commands:
            command.put(None)
        deadline = time.monotonic() + config.sync_timeout_ms / 1000.0 + 10.0
        while len(state["bye"]) < n_workers and time.monotonic() < deadline:
            pump()
            if all(not p.is_alive() for p in procs) and results.empty():
                break
        for proc in (p for p in procs if p.pid is not None):
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                logger.error("bench worker %s did not stop; terminating it", proc.name)
                proc.terminate()
                proc.join()
        live.close()
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if state["errors"]:
        raise RuntimeError("; ".join(state["errors"]))
    status, _ = _farm_start_s(address)
    return _result(config, status, farm_start_s, bench_t0, cards, slots, n_workers,
                   [p for p in phases if p.get("ran")], by_phase, state)  # fmt: skip


def _fault_events(status: dict[str, Any]) -> list[dict[str, Any]]:
    from core.faults import read_fault_log

    faults = status.get("faults") or {}
    if not faults.get("counts") or not Path(faults.get("log") or "").is_file():
        return []
    return [e.to_dict() for e in read_fault_log(faults["log"])]


def _result(config, status, farm_start_s, bench_t0, cards, slots, n_workers, phases, by_phase,
            state) -> dict[str, Any]:  # fmt: skip
    cut = state["interrupted_s"]
    events = [e for e in _fault_events(status) if farm_start_s + e["t_s"] >= bench_t0]
    runs = []
    for phase in phases:
        parts = by_phase[phase["index"]]
        samples = np.concatenate(parts) if parts else report.as_samples([])
        if cut is not None:  # what ended after Ctrl-C may have failed because of it
            samples = samples[samples["end_s"] <= cut]
        measured = samples[samples["intended_s"] >= phase["warm_end"]]
        w1 = min(phase["end"], cut or math.inf)
        budget_done = config.requests is not None and measured.size >= config.requests
        if phase["mode"] == "closed" and (budget_done or not math.isfinite(w1)):
            w1 = min(w1, float(measured["end_s"].max()) if measured.size else phase["warm_end"])
        window = (phase["warm_end"], max(w1, phase["warm_end"]))
        stats = list(state["done"].get(phase["index"], {}).values())
        runs.append((phase, samples, window, stats))
    out_dir = Path(config.out_dir) if config.out_dir else None
    result = report.build_result(
        dataclasses.asdict(config), status, runs, cards=cards, fault_events=events,
        farm_start_s=farm_start_s, origin_s=bench_t0, interrupted=cut is not None,
        generator={"workers": n_workers, "slots": len(slots), "start_method": "spawn",
                   "setup_s": round(state["setup_s"], 3)},
        samples_file="requests.jsonl" if out_dir and config.per_request else None,
    )  # fmt: skip
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report.write_json(result, out_dir / "result.json")
        report.write_csv(result, out_dir / "summary.csv")
        if config.per_request:
            samples = np.concatenate([run[1] for run in runs] or [report.as_samples([])])
            report.write_jsonl(samples, out_dir / "requests.jsonl", origin_s=bench_t0)
    return result


# --------------------------------------------------------------------------------------------
# the CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npufarm bench", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--address", help="farm endpoint (default: NPUFARM_ADDRESS, the running default farm, "
        "else an embedded farm from --config)")  # fmt: skip
    add("--config", help="farm config TOML for an embedded farm")
    add("--faults", help="fault plan TOML for an embedded farm")
    add(
        "--model",
        default=DEFAULT_MODEL,
        help="an .om (npufarm atc) or a model TOML (default: matmul)",
    )
    add("--cards", default="all", help='"all" or a comma list of device ids')
    add("--streams-per-card", type=int, help="slots per card (default: enough for the sweep)")
    add("--workers", type=int, help="client processes (default: min(2, cards))")
    add("--concurrency", default="1", help="closed loop: start:stop:step (stop included, "
        "1:16:4 runs 1,5,9,13,16) or a comma list")  # fmt: skip
    add("--request-rate", help="open loop: requests/s, start:stop:step (stop included) or a "
        "comma list")  # fmt: skip
    add("--arrival", choices=("constant", "poisson"), default="constant")
    add("--duration-s", type=float, help="measured seconds per phase (default 10 unless "
        "--requests)")  # fmt: skip
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
    add("--out", help="directory for result.json, summary.csv, requests.jsonl (--per-request) "
        "and the PNGs (with matplotlib)")  # fmt: skip
    add("--per-request", action="store_true", help="also write requests.jsonl")
    add("--quiet", action="store_true", help="no summary table")
    add("-v", "--verbose", action="count", default=0)
    return p


def bench_main(argv: list[str] | None = None) -> int:
    """``npufarm bench``: returns a process exit code."""
    args = _parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from core.statefile import resolve_address

    try:
        config = BenchConfig(
            address=args.address or resolve_address(), model=args.model,
            cards=None if args.cards == "all" else parse_sweep(args.cards, int),
            streams_per_card=args.streams_per_card, workers=args.workers,
            mode="open" if args.request_rate else "closed",
            concurrency=parse_sweep(args.concurrency, int),
            rates=parse_sweep(args.request_rate) if args.request_rate else (),
            arrival=args.arrival, requests=args.requests, warmup_s=args.warmup_s,
            duration_s=args.duration_s if args.duration_s or args.requests else 10.0,
            slo_ms=args.slo_ms, percentiles=parse_sweep(args.percentiles), seed=args.seed,
            sync_timeout_ms=args.sync_timeout_ms, out_dir=args.out, per_request=args.per_request,
        )  # fmt: skip
    except ValueError as exc:
        print(f"npufarm bench: {exc}", file=sys.stderr)
        return 2
    from core.errors import NpuFarmError

    embedded = None
    try:
        if config.address is None:
            config, embedded = _with_embedded_farm(config, args.config, args.faults)
        result = run_bench(config)
    except (ValueError, RuntimeError, OSError, NpuFarmError) as exc:
        print(f"npufarm bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    from loadtest.render import print_bench_summary, write_bench_plots

    if not args.quiet:
        print_bench_summary(result)
    print(write_bench_plots(result, config.out_dir, config.per_request))
    interrupted = any(p["interrupted"] for p in result["phases"])
    return 130 if interrupted else 0


def _with_embedded_farm(config: BenchConfig, config_path: str | None, faults: str | None):
    from client.embedded import EmbeddedFarm
    from core.errors import NpuFarmError
    from farm.admin import query_status

    farm = EmbeddedFarm(config_path, faults=faults)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        try:
            query_status(farm.address, timeout_s=0.5)
            break
        except NpuFarmError:
            if time.monotonic() > deadline or farm.process.poll() is not None:
                farm.stop()
                raise RuntimeError("the embedded farm did not start") from None
    return dataclasses.replace(config, address=farm.address), farm
