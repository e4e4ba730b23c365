"""``npufarm bench``'s driver on one farm: a model on a set of cards, through the real pyACL API.

Data flow (``══`` crosses a process boundary)::

    parent process: BenchRun                        worker process × M (multiprocessing "spawn")
    ───────────────────────────                     ──────────────────────────────────────────
    phase plan: t0, window, slots,    ══commands══▶ main thread ──inbox──▶ slot threads, one per
      open-loop schedule slices         Queue (1/w):                       (card, stream): pyACL
                                        Phase, STOP
    request budget (--requests)       ══Value═════▶ (closed loop: one token per request)
    stop (Ctrl-C)                     ══Event═════▶ slot loops end; acl.finalize; Bye
    Collector: samples by phase◀══results Queue════ main thread: Ready, then a numpy batch of
      (+ live table on a tty)         Ready,        samples (schema.SAMPLE_DTYPE) every 0.1 s,
      → loadtest.report → files       Samples,      then the phase's CPU time; WorkerError
                                      PhaseDone, Bye
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
The worker-process side is :mod:`loadtest.workers`, the messages between the two
:mod:`loadtest.messages`; the config and phase plan are in :mod:`loadtest.plan`, the result
schema in :mod:`loadtest.report`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from core.faults import read_fault_log
from core.statefile import resolve_address
from farm.admin import query_status
from loadtest import accuracy, report
from loadtest.live import LiveView
from loadtest.messages import (
    STOP,
    Bye,
    Phase,
    PhaseDone,
    Ready,
    Samples,
    WorkerError,
    WorkerMessage,
)
from loadtest.plan import BenchConfig, plan
from loadtest.schema import as_samples
from loadtest.workers import FLUSH_S, worker_main

__all__ = ["BenchRun", "Collector", "READY_TIMEOUT_S"]


logger = logging.getLogger(__name__)

_START_LEAD_S = 0.1  # a phase starts this long after its broadcast
READY_TIMEOUT_S = 60.0


def _farm_start_s(address: str) -> tuple[dict[str, Any], float]:
    before = time.monotonic()
    status = query_status(address)
    return status, (before + time.monotonic()) / 2 - status["uptime_s"]


class Collector:
    """What the workers sent, one :meth:`handle` per :mod:`loadtest.messages` message (pure
    bookkeeping: no queue, no clock), so the parent's side of the protocol is testable alone."""

    def __init__(self, phases: Iterable[int], live: LiveView | None = None) -> None:
        self.live = live
        self.ready: set[int] = set()
        self.bye: set[int] = set()
        self.errors: list[str] = []
        self.done: dict[int, dict[int, dict[str, Any]]] = {}  # phase → worker → stats
        self.by_phase: dict[int, list[np.ndarray]] = {index: [] for index in phases}

    def handle(self, message: WorkerMessage) -> None:
        match message:
            case Samples(rows=rows):
                for index in np.unique(rows["phase"]).tolist():
                    self.by_phase[index].append(rows[rows["phase"] == index])
                if self.live is not None:
                    self.live.add(rows)
            case PhaseDone(index=worker, phase=phase, stats=stats):
                self.done.setdefault(phase, {})[worker] = stats
            case WorkerError(message=text):
                self.errors.append(text)
            case Ready(index=worker):
                self.ready.add(worker)
            case Bye(index=worker):
                self.bye.add(worker)
            case _:
                raise TypeError(f"unexpected message from a bench worker: {message!r}")


class BenchRun:
    """One :func:`run_bench`: the plan, the worker processes and what they sent back.

    :meth:`run` starts the workers, waits until they are ready, hands them each phase and
    collects its samples (:meth:`_pump` reads one :mod:`loadtest.messages` message), stops them
    however the run ended, then builds the result. Used once.
    """

    start_lead_s = _START_LEAD_S  # a phase starts this long after its broadcast

    def __init__(
        self, config: BenchConfig, on_phase_start: Callable[[str, float], None] | None = None
    ) -> None:
        self.config, self.on_phase_start = config, on_phase_start
        self.address = config.address or resolve_address()
        if self.address is None:
            raise ValueError("no farm: give an address, set NPUFARM_ADDRESS or start one")
        status, self.farm_start_s = _farm_start_s(self.address)
        all_cards = [c["device_id"] for c in status["cards"]]
        self.cards = list(config.cards) if config.cards is not None else all_cards
        if not self.cards or set(self.cards) - set(all_cards):
            raise ValueError(f"cards {self.cards}: the farm has {all_cards}")
        self.slots, self.phases = plan(config, self.cards)
        self.n_workers = min(config.workers or min(2, len(self.cards)), len(self.slots))
        self.interrupted_s: float | None = None
        self.setup_s = 0.0

    def _spawn(self) -> None:
        """The queues, the shared stop event and budget, the (not yet started) processes."""
        config, n = self.config, self.n_workers
        ctx = multiprocessing.get_context("spawn")
        self.results, self.stop_all, self.budget = ctx.Queue(), ctx.Event(), ctx.Value("q", 0)
        self.commands = [ctx.Queue() for _ in range(n)]
        level = logging.getLogger().getEffectiveLevel()
        self.procs = [
            ctx.Process(
                target=worker_main,
                name=f"npufarm-bench-{i}",
                daemon=True,
                args=(
                    i,
                    self.address,
                    [s for s in self.slots if s[0] % n == i],
                    config.model,
                    config.sync_timeout_ms,
                    level,
                    self.commands[i],
                    self.results,
                    self.stop_all,
                    self.budget,
                ),
            )
            for i in range(n)
        ]

    def run(self) -> dict[str, Any]:
        self._spawn()
        self.bench_t0 = time.monotonic()
        live = sys.stdout.isatty() if self.config.live is None else self.config.live
        self.live = LiveView(live, self.cards)
        self.got = Collector([p["index"] for p in self.phases], self.live)
        self.errors = self.got.errors
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main_thread else None
        try:
            self._start_workers()
            for phase in self.phases:
                if self.errors or self.interrupted_s is not None:
                    break
                self._run_phase(phase)
        finally:
            self._stop_workers()
            self.live.close()
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        if self.errors:
            raise RuntimeError("; ".join(self.errors))
        return self._result()

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted_s is not None:
            raise KeyboardInterrupt
        self.interrupted_s = time.monotonic()
        self.stop_all.set()
        logger.warning("interrupted: stopping the workers (Ctrl-C again to abort)")

    def _pump(self, timeout_s: float = FLUSH_S) -> None:
        """Handle one worker message, or notice dead workers when none came in ``timeout_s``."""
        try:
            message = self.results.get(timeout=timeout_s)
        except queue.Empty:
            dead = [
                p.name
                for i, p in enumerate(self.procs)
                if p.exitcode is not None and i not in self.got.bye
            ]
            if dead:
                self.errors.append(f"worker processes died: {dead}")
            return
        self.got.handle(message)

    def _start_workers(self) -> None:
        """Start the processes; return once every one is ready, failed, or the run interrupted."""
        for proc in self.procs:
            proc.start()
        self._await_ready(READY_TIMEOUT_S)

    def _await_ready(self, timeout_s: float) -> None:
        """Pump until every worker is ready, one failed, or the run is interrupted."""
        deadline = time.monotonic() + timeout_s
        while len(self.got.ready) < self.n_workers and not self.errors:
            if self.interrupted_s is not None:
                break
            if time.monotonic() > deadline:
                self.errors.append(f"workers not ready within {timeout_s:g}s")
            self._pump()
        self.setup_s = time.monotonic() - self.bench_t0

    def _phase_window(self, phase: dict[str, Any]) -> tuple[float, float, float]:
        """``phase``'s start, warm-up end and end on this clock (set in ``phase`` too), shown
        in the live view."""
        config = self.config
        t0 = time.monotonic() + self.start_lead_s
        warm_end = t0 + config.warmup_s
        end = warm_end + config.duration_s if config.duration_s is not None else math.inf
        if config.mode == "open" and config.requests is not None:
            end = min(end, t0 + phase["last_s"] + 1.0 / phase["rate"])
        phase.update(t0=t0, warm_end=warm_end, end=end)
        self.live.phase(phase["name"], t0, end - t0 if math.isfinite(end) else None)
        return t0, warm_end, end

    def _run_phase(self, phase: dict[str, Any]) -> None:
        """Hand ``phase`` to every worker (:meth:`_deliver`) and collect until it is done."""
        t0, warm_end, end = self._phase_window(phase)
        self._deliver(phase, (t0, warm_end, end))
        if self.on_phase_start is not None:
            self.on_phase_start(phase["name"], t0)
        while len(self.got.done.get(phase["index"], {})) < self.n_workers and not self.errors:
            self._pump()
        phase["ran"] = True

    def _deliver(self, phase: dict[str, Any], window: tuple[float, float, float]) -> None:
        """Each worker process its share of the slots, through its command queue."""
        counted = self.config.requests is not None
        self.budget.value = self.config.requests or 0
        for i, command in enumerate(self.commands):
            mine = {sid: v for sid, v in phase["slots"].items() if sid % self.n_workers == i}
            command.put(Phase(phase["index"], *window, counted, mine))

    def _stop_workers(self) -> None:
        """Tell every worker to stop (:meth:`_send_stop`), collect until each said bye
        (:meth:`_workers_gone` ends it early), then :meth:`_end_workers`."""
        self._send_stop()
        deadline = time.monotonic() + self.config.sync_timeout_ms / 1000.0 + 10.0
        while len(self.got.bye) < self.n_workers and time.monotonic() < deadline:
            self._pump()
            if self._workers_gone():
                break
        self._end_workers(deadline)

    def _send_stop(self) -> None:
        for command in self.commands:
            command.put(STOP)

    def _workers_gone(self) -> bool:
        return all(not p.is_alive() for p in self.procs) and self.results.empty()

    def _end_workers(self, deadline: float) -> None:
        """Join the worker processes; terminate any that hangs past ``deadline``."""
        for proc in (p for p in self.procs if p.pid is not None):
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                logger.error("bench worker %s did not stop; terminating it", proc.name)
                proc.terminate()
                proc.join()

    def _runs(self) -> list[tuple[dict[str, Any], np.ndarray, tuple[float, float], list]]:
        """Per phase that ran: (phase, samples, measured window, worker stats)."""
        config, cut, runs = self.config, self.interrupted_s, []
        for phase in (p for p in self.phases if p.get("ran")):
            parts = self.got.by_phase[phase["index"]]
            samples = np.concatenate(parts) if parts else as_samples([])
            if cut is not None:  # what ended after Ctrl-C may have failed because of it
                samples = samples[samples["end_s"] <= cut]
            measured = samples[samples["intended_s"] >= phase["warm_end"]]
            w1 = min(phase["end"], cut or math.inf)
            budget_done = config.requests is not None and measured.size >= config.requests
            if phase["mode"] == "closed" and (budget_done or not math.isfinite(w1)):
                w1 = min(w1, float(measured["end_s"].max()) if measured.size else phase["warm_end"])
            window = (phase["warm_end"], max(w1, phase["warm_end"]))
            stats = list(self.got.done.get(phase["index"], {}).values())
            runs.append((phase, samples, window, stats))
        return runs

    def _result(self) -> dict[str, Any]:
        """The result (:func:`loadtest.report.build_result`), written to ``out_dir`` if set."""
        status, _ = _farm_start_s(self.address)
        events = [e for e in _fault_events(status) if self.farm_start_s + e["t_s"] >= self.bench_t0]
        runs = self._runs()
        result = self._build_result(status, events, runs, "spawn")
        self._write(result, runs)
        return result

    def _build_result(
        self, status: dict[str, Any], events: list, runs: list, start_method: str
    ) -> dict[str, Any]:
        """The report of ``runs`` (:meth:`_runs`) with the accuracy figures."""
        config = self.config
        result = report.build_result(
            dataclasses.asdict(config),
            status,
            runs,
            cards=self.cards,
            fault_events=events,
            farm_start_s=self.farm_start_s,
            origin_s=self.bench_t0,
            interrupted=self.interrupted_s is not None,
            generator={
                "workers": self.n_workers,
                "slots": len(self.slots),
                "start_method": start_method,
                "setup_s": round(self.setup_s, 3),
            },
            samples_file="requests.jsonl" if config.out_dir and config.per_request else None,
        )
        accuracy.annotate(result, config.model, status, self.cards, runs)
        return result

    def _write(self, result: dict[str, Any], runs: list) -> None:
        """result.json, summary.csv and (``--per-request``) requests.jsonl in ``out_dir``."""
        config = self.config
        if not config.out_dir:
            return
        out_dir = Path(config.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        report.write_json(result, out_dir / "result.json")
        report.write_csv(result, out_dir / "summary.csv")
        if config.per_request:
            samples = np.concatenate([run[1] for run in runs] or [as_samples([])])
            report.write_jsonl(samples, out_dir / "requests.jsonl", origin_s=self.bench_t0)


def _fault_events(status: dict[str, Any]) -> list[dict[str, Any]]:
    faults = status.get("faults") or {}
    if not faults.get("counts") or not Path(faults.get("log") or "").is_file():
        return []
    return [e.to_dict() for e in read_fault_log(faults["log"])]
