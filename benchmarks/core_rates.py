"""Farm throughput: the submit/sync loop behind ``farm.routing`` (one task per stream) and
``farm.pipelined`` (bursts of B tasks per stream), with CPU accounting of every farm process.

Each ``measure_*`` call is one round and returns its figures; ``*_entry`` reduces the rounds
(and the raw echo's rounds measured beside them) to the result entry.

Routing keeps K streams, spread round-robin over the cards, each holding exactly one
``execute_async``; the loop syncs them in turn and resubmits, so K tasks are outstanding whenever
one is submitted. Pipelined queues a burst per stream and syncs once per burst (the client
batches the burst into few SUBMIT messages). Either runs in one thread or one thread per card.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from benchmarks.core_farm import FarmProcess, Slot, acl_ok, interleave, load_acl
from benchmarks.core_report import PIPELINED_TARGET_TPS, ROUTING_RATIO_TARGET
from benchmarks.rounds import Target, at_least, median_fields, rounds_entry

__all__ = ["measure_pipelined", "measure_routing", "pipelined_entry", "routing_entry"]


# --------------------------------------------------------------------------------------------
# CPU of the farm's processes over a window
# --------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime+stime of a process from /proc (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuWindow:
    """CPU % of several pids over a window opened by :meth:`open` and closed by :meth:`close`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._c0: dict[str, float] = {}

    def open(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = {k: _cpu_seconds(p) for k, p in self.pids.items()}

    def close(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        return {
            k: round(100.0 * (_cpu_seconds(p) - self._c0[k]) / elapsed, 1)
            for k, p in self.pids.items()
        }


# --------------------------------------------------------------------------------------------
# the submit/sync loop: routing (burst 1) and pipelined (burst B)
# --------------------------------------------------------------------------------------------


def _burst_loop(
    slots: list[Slot],
    burst: int,
    counter: list[int],
    index: int,
    stop: threading.Event,
    marks: list[tuple[float, int]] | None = None,
    window: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Keep ``burst`` tasks queued on every stream: sync a stream (its tasks are done), refill.

    With ``burst`` 1 this is the K-in-flight window: K = len(slots) streams holding one task each,
    so K tasks are outstanding whenever one is submitted. With ``marks`` the loop times its own
    window (``(warmup_s, duration_s)``) and stops; otherwise it runs until ``stop`` is set and the
    caller samples ``counter``.
    """
    acl = load_acl()
    ex, sync, set_ctx = acl.mdl.execute_async, acl.rt.synchronize_stream, acl.rt.set_context
    current = None
    for s in slots:
        if s.context != current:
            acl_ok(set_ctx(s.context), "set_context")
            current = s.context
        for _ in range(burst):
            acl_ok(ex(s.model, s.inputs, s.outputs, s.stream), "execute_async")
    t_measure = time.perf_counter() + window[0]
    while not stop.is_set():
        for s in slots:
            if s.context != current:
                acl_ok(set_ctx(s.context), "set_context")
                current = s.context
            acl_ok(sync(s.stream), "synchronize_stream")
            counter[index] += burst
            for _ in range(burst):
                acl_ok(ex(s.model, s.inputs, s.outputs, s.stream), "execute_async")
        if marks is not None:
            now = time.perf_counter()
            if not marks:
                if now >= t_measure:
                    marks.append((now, counter[index]))
            elif now >= marks[0][0] + window[1]:
                marks.append((now, counter[index]))
                break
    for s in slots:
        acl_ok(set_ctx(s.context), "set_context")
        acl_ok(sync(s.stream), "synchronize_stream")


def _loop_rate(
    groups: list[list[Slot]], burst: int, warmup_s: float, duration_s: float
) -> tuple[float, int, float]:
    """One loop per group: inline for one group, a thread per group otherwise."""
    counter = [0] * len(groups)
    stop = threading.Event()
    if len(groups) == 1:
        marks: list[tuple[float, int]] = []
        _burst_loop(groups[0], burst, counter, 0, stop, marks, (warmup_s, duration_s))
        (t0, n0), (t1, n1) = marks
        return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            _burst_loop(groups[i], burst, counter, i, stop)
        except BaseException as exc:  # re-raised below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(groups))]
    for t in threads:
        t.start()
    try:
        time.sleep(warmup_s)
        t0, n0 = time.perf_counter(), sum(counter)
        time.sleep(duration_s)
        t1, n1 = time.perf_counter(), sum(counter)
    finally:
        stop.set()
        for t in threads:
            t.join(30.0)
    if errors:
        raise errors[0]
    return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0


def _measure_loop(
    farm: FarmProcess, slots: list[Slot], burst: int, duration_s: float, threads: bool
) -> dict[str, Any]:
    """Run the loop over ``slots`` (one thread, or one per card) with CPU accounting."""
    if threads:
        by_dev: dict[int, list[Slot]] = {}
        for s in slots:
            by_dev.setdefault(s.device, []).append(s)
        groups = list(by_dev.values())
    else:
        groups = [slots]
    pids = {"broker": farm.state["pid"], "client": os.getpid()}
    pids.update({f"card{i}": pid for i, pid in enumerate(farm.card_pids)})
    cpu = _CpuWindow(pids)
    cpu.open()
    tps, tasks, window = _loop_rate(groups, burst, min(0.2, duration_s / 2), duration_s)
    pct = cpu.close()
    cards_total = round(sum(v for k, v in pct.items() if k.startswith("card")), 1)
    return {
        "tasks_per_s": round(tps, 1),
        "tasks": tasks,
        "window_s": round(window, 4),
        "threads": len(groups),
        "cards_used": len({s.device for s in slots}),
        "cpu_percent": {"broker": pct["broker"], "client": pct["client"], "cards": cards_total},
        "cpu_us_per_task": {
            "broker": round(1e4 * pct["broker"] / tps, 2),
            "client": round(1e4 * pct["client"] / tps, 2),
            "cards": round(1e4 * cards_total / tps, 2),
        },
    }


def measure_routing(
    farm: FarmProcess, by_card: list[list[Slot]], in_flight: int, duration_s: float, threads: bool
) -> dict[str, Any]:
    """One round: tasks/s with ``in_flight`` streams (one task each) spread round-robin over the
    cards, with the CPU of every farm process over the window."""
    return _measure_loop(farm, interleave(by_card, in_flight), 1, duration_s, threads)


def measure_pipelined(
    farm: FarmProcess, by_card: list[list[Slot]], burst: int, duration_s: float, threads: bool
) -> dict[str, Any]:
    """One round: bursts of ``burst`` execute_async per stream, one sync per burst, over every
    slot."""
    return _measure_loop(
        farm, interleave(by_card, sum(map(len, by_card))), burst, duration_s, threads
    )


def _rate_entry(
    rounds: list[dict[str, Any]],
    raw_echo: list[dict[str, Any]],
    target: Target | None,
    **extra: Any,
) -> dict[str, Any]:
    """Tasks/s of the farm's rounds against the raw echo's rounds; the rest of the rounds'
    figures (tasks, window, CPU) as medians."""
    context = median_fields([{k: v for k, v in r.items() if k != "tasks_per_s"} for r in rounds])
    return rounds_entry(
        [r["tasks_per_s"] for r in rounds],
        [r["tasks_per_s"] for r in raw_echo],
        unit="tasks/s",
        target=target,
        **extra,
        **context,
    )


def routing_entry(
    rounds: list[dict[str, Any]], raw_echo: list[dict[str, Any]], in_flight: int, cards: int
) -> dict[str, Any]:
    """The routing entry: median tasks/s against the raw 3-hop echo at the same in-flight
    count; the issue's target applies at 16 in flight."""
    target = at_least(ROUTING_RATIO_TARGET) if in_flight == 16 else None
    return _rate_entry(rounds, raw_echo, target, in_flight=in_flight, cards=cards)


def pipelined_entry(
    rounds: list[dict[str, Any]],
    raw_batched: list[dict[str, Any]],
    cards: int,
    streams_per_card: int,
    burst: int,
) -> dict[str, Any]:
    """The pipelined entry: median tasks/s against the raw batched echo (a transport ceiling);
    the issue's target, an absolute rate, applies on 8 cards."""
    target = None
    if cards == 8:
        text = f">= {PIPELINED_TARGET_TPS:,.0f} tasks/s"
        target = at_least(PIPELINED_TARGET_TPS, on="measured", text=text)
    return _rate_entry(
        rounds, raw_batched, target, cards=cards, streams_per_card=streams_per_card, burst=burst
    )
