"""Running a card's stream tasks: start what the scheduler allows, time completions, end tasks.

::

    StreamScheduler ─take_startable─▶ start (Executor, or an injected fault's effect)
        ▲                                 │ (code, modelled duration, deferred write)
        └── finish ◀── timer heap ◀───────┘ ── completion row ─▶ outbox (sent by the card loop)

A started task computes its real outputs at once and completes when its timer fires at its modelled
end, ``max(start + modelled, compute done)``, where the start is anchored at the client's submit,
the end of the stream's previous task and the time its slot freed, all modelled (device/timing.py:
the transport to the card is absorbed, a task whose end is already past ends at once). Completion
rows carry the modelled start and end, so event times and the trace show the model, not the card
loop's lateness. A deferred write is published at completion only if its memory is still the task's
(:meth:`device.executor.Publish.holds`), else the task fails with 507053. Injected task faults
(device/injection.py) crash the card, fail the task, hang it (sticky hangs end at the watchdog's
timeout or at ``recover``), slow it or corrupt its outputs.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from core.errors import ACL_ERROR_RT_DEVICE_MEM_ERROR, ACL_ERROR_RT_STREAM_ABORT, ACL_SUCCESS
from core.faults import corrupt_bytes
from core.protocol import TaskKind
from device.card_spec import CardSpec
from device.executor import Executor, Publish
from device.injection import CardFaults, TaskFault
from device.streams import StreamScheduler, Task
from device.timing import CompletionLead

__all__ = ["TaskRunner", "TurnStats", "TIMING_DIAG_ENV"]

logger = logging.getLogger(__name__)

Timer = tuple[float, int, Task, int, Publish | None]  # (send at, seq, task, code, commit)

TIMING_DIAG_ENV = "NPUFARM_TIMING_DIAG"
"""Set (non-empty) in a card's environment, its completion rows carry diagnostic stage times
after the usual six fields: device id, receipt, planned send, timer fired (``time.monotonic()``),
the loop's run-queue wait over the sleep that timer ended and the GC time since the previous
timer (s), flushed (``time.monotonic()``; benchmarks/tail.py reads them). Off by default."""


class TaskRunner:
    """The card's started tasks: the timer heap, the sticky hangs, the completion rows.

    ``stats`` is the card's counter map (``done``/``failed`` are counted here); ``crash`` ends
    the card process at an injected crash; ``clock`` is the card's (``time.monotonic``; a fake
    one in unit tests).
    """

    def __init__(
        self,
        spec: CardSpec,
        scheduler: StreamScheduler,
        executor: Executor,
        faults: CardFaults,
        stats: dict[str, Any],
        crash: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.scheduler = scheduler
        self.executor = executor
        self.faults = faults
        self.stats = stats
        self.crash = crash
        self.timers: list[Timer] = []  # heap
        self._timer_seq = itertools.count()
        self.outbox: dict[bytes, list] = {}  # client -> completion rows not yet sent
        self.hung: set[tuple[bytes, int]] = set()  # (client, task id) stuck in a sticky hang
        self.lead = CompletionLead()  # how early a completion is sent (device/timing.py)
        self.fired_s = 0.0  # when timers last fired with their rows not sent yet (0: none)
        # NPUFARM_TIMING_DIAG (benchmarks/tail.py): per task (client, id) -> [device id,
        # receipt, planned send, timer fired, run-queue wait and GC time before it fired],
        # appended to its completion row (+ the flush time, device/card.py); None (the
        # default): nothing kept, rows as usual
        self.diag: dict[tuple[bytes, int], list] | None = None
        self.turns: TurnStats | None = None  # (with diag: the card loop's, device/card.py)
        # results are written at completion, not at start, whenever completion is not at once
        self._defer = spec.min_completion_delay_s > 0 or spec.time_scale > 0

    def timing(self) -> dict[str, float]:
        """The card's latency model (its heartbeat stats), for a bench to set observed latency
        against: the profile's speed and jitter, the farm's time scale, the completion lead and
        its three parts (device/timing.py), in microseconds."""
        lead, spec = self.lead, self.spec
        return {
            "speed_factor": spec.speed_factor,
            "jitter_sigma": spec.jitter_sigma,
            "time_scale": spec.time_scale,
            "lead_us": round(lead.value * 1e6, 1),
            "transport_us": round(lead.transport.value * 1e6, 1),
            "late_us": round(lead.lateness.value * 1e6, 1),
            "flush_us": round(lead.flush.value * 1e6, 1),
        }

    def next_deadline(self, default: float) -> float:
        """The earliest timer's deadline, or ``default`` (as late) when none runs."""
        return min(default, self.timers[0][0]) if self.timers else default

    # -- starting --------------------------------------------------------------------------
    def start_ready(self, budget_end: float = float("inf")) -> bool:
        """Start every startable task; zero-latency ones finish at once, which may free a
        stream or slot for the next round. True if the time budget ran out first (the loop
        comes back at once, after a heartbeat and a look at the socket)."""
        while tasks := self.scheduler.take_startable():
            if self.clock() > budget_end:
                self.scheduler.put_back(tasks)
                return True
            for task in tasks:
                self._start(task)
        return False

    def _start(self, task: Task) -> None:
        """Start ``task`` (its times: device/timing.py's ``modelled_start``, ``modelled_end``
        and ``send_at``, inlined: this runs once per task)."""
        min_delay_s = self.spec.min_completion_delay_s
        stream = self.scheduler.streams.get((task.client, task.stream))
        start_s = task.submitted_s
        if stream is not None and stream.end_s > start_s:
            start_s = stream.end_s
        if task.slot_free_s > start_s:
            start_s = task.slot_free_s
        if task.body["k"] == TaskKind.WAIT:  # (and the awaited stream's end)
            start_s = max(start_s, self.scheduler.stream_end_s(task))
        task.started_s = start_s
        fault = self.task_fault(task) if self.faults.enabled else None
        if fault is None:
            code, duration_s, commit = self.executor.start(task, self._defer)
        else:
            code, duration_s, commit = self.start_faulty(task, fault, self._defer)
        done_s = self.clock()
        task.end_s = end_s = max(start_s + max(duration_s, min_delay_s), done_s)
        send_s = max(end_s - self.lead.value, start_s + min_delay_s, done_s)
        if self.diag is not None:
            self._note(task, max(send_s, done_s), None if send_s > done_s else done_s)
        if send_s <= done_s:  # its modelled end is (nearly) past: transport or compute was longer
            self.finish(task, code, commit)
        else:
            heapq.heappush(self.timers, (send_s, next(self._timer_seq), task, code, commit))

    def received(self, client: bytes, task_id: int, now: float) -> None:
        """Diagnostics only (:attr:`diag` set): a task reached the card at ``now``."""
        self.diag[(client, task_id)] = [self.spec.device_id, now, 0.0, 0.0, 0.0, 0.0]

    def _note(self, task: Task, due_s: float | None, fired_s: float | None) -> None:
        entry = self.diag.get((task.client, task.task_id))
        if entry is not None:
            if due_s is not None:
                entry[2] = due_s
            if fired_s is not None:
                entry[3] = fired_s
                if self.turns is not None:
                    entry[4], entry[5] = self.turns.rq_s, self.turns.gc_since_fired()

    def task_fault(self, task: Task) -> TaskFault | None:
        model = None
        if task.kind == "exec":
            entry = self.executor.models.get(task.body.get("m"))
            model = entry[0].name if entry is not None else None
        return self.faults.on_task(task.kind, task.stream, model)

    def start_faulty(
        self, task: Task, fault: TaskFault, defer: bool
    ) -> tuple[int, float, Publish | None]:
        """Start a task some injected fault fired on: (code, duration, commit)."""
        if fault.crash:
            self.crash()
        if fault.fail_code:
            return fault.fail_code, 0.0, None
        if fault.hang_s is not None and fault.hang_code:
            self.hung.add((task.client, task.task_id))
            return fault.hang_code, fault.hang_s, None  # the watchdog ends it, nothing written
        corrupt = fault.corrupt if task.kind == "exec" else None
        code, duration_s, commit = self.executor.start(task, defer or corrupt is not None)
        if fault.hang_s is not None:
            duration_s = max(duration_s, fault.hang_s)
        duration_s *= fault.slow_factor
        if corrupt is not None and commit is not None:
            commit = self._corrupted(commit, corrupt)
        return code, duration_s, commit

    def _corrupted(self, publish: Publish, pattern: str) -> Publish | None:
        if pattern == "stale":
            return None  # the outputs keep their old bytes
        rng = self.faults.injector.corrupt_rng

        def corrupt(published: Publish) -> None:
            for destination in published.destinations:
                flat = destination.reshape(-1).view(np.uint8)
                corrupt_bytes(flat, destination.dtype, pattern, rng)

        publish.post = corrupt
        return publish

    # -- ending ----------------------------------------------------------------------------
    def end_hangs(self) -> None:
        """``recover``: the sticky hangs that fired end now (with their fault's code: nothing
        was computed), instead of at the watchdog's timeout."""
        now = self.clock()
        ended = [entry for entry in self.timers if (entry[2].client, entry[2].task_id) in self.hung]
        for entry in ended:
            entry[2].end_s = now
        self.timers = [(now, *entry[1:]) if entry in ended else entry for entry in self.timers]
        heapq.heapify(self.timers)

    def fire_timers(self, now: float) -> None:
        """End the tasks whose completion is due, at their modelled end (not at ``now``: the
        loop's lateness must not push the stream's next task back); how late each timer fired
        feeds the lead."""
        if self.timers and self.timers[0][0] <= now:
            self.fired_s = now  # (the card's flush: how long until the rows were sent)
        while self.timers and self.timers[0][0] <= now:
            send_s, _, task, code, commit = heapq.heappop(self.timers)
            self.lead.fired(now - send_s)
            if self.diag is not None:
                self._note(task, None, now)
            self.finish(task, code, commit)

    def finish(self, task: Task, code: int, commit: Publish | None = None) -> None:
        """End a started task at its modelled ``end_s``: publish its deferred write, free its
        stream and slot, queue its completion row."""
        if commit is not None and code == ACL_SUCCESS:
            if commit.holds(self.executor):
                commit()  # results appear at completion, as on hardware
            else:  # its memory was freed meanwhile (and may be someone else's now)
                code = ACL_ERROR_RT_DEVICE_MEM_ERROR
        self.scheduler.finish(task)
        self.hung.discard((task.client, task.task_id))
        self.complete(task.client, task.task_id, code, task.started_s, task.end_s, task)

    def end_tasks(self, client: bytes) -> int:
        """End every task of a departed ``client`` still queued or running here with 107023
        (nothing more is computed or written), rows sent at the loop's next flush; how many."""
        now = self.clock()
        tasks = [entry[2] for entry in self.timers if entry[2].client == client]
        for task in tasks:
            task.end_s = now  # (aborted now: their slots are free from now on)
        if tasks:
            self.timers = [entry for entry in self.timers if entry[2].client != client]
            heapq.heapify(self.timers)
        tasks += self.scheduler.drop_client(client)
        for task in tasks:
            self.hung.discard((client, task.task_id))
            start_s = task.started_s or now
            self.complete(client, task.task_id, ACL_ERROR_RT_STREAM_ABORT, start_s, now, task)
        return len(tasks)

    def complete(
        self,
        client: bytes,
        task_id: int,
        code: int,
        start_s: float,
        end_s: float,
        task: Task | None = None,
    ) -> None:
        """Count a task's end and queue its completion row for ``client``."""
        self.stats["done" if code == ACL_SUCCESS else "failed"] += 1
        if task is None:
            row = [task_id, code, start_s, end_s, 0, start_s]
        else:  # (proto.completion_row, inlined: once per task)
            row = [task_id, code, start_s, end_s, task.stream, task.submitted_s or start_s]
        if self.diag is not None:
            row += self.diag.pop((client, task_id), ())
        rows = self.outbox.get(client)
        if rows is None:
            self.outbox[client] = [row]
        else:
            rows.append(row)


class TurnStats:
    """Diagnostics of the card loop (with :attr:`TaskRunner.diag` only): how long its thread
    waited on a run queue over its last sleep (``/proc/thread-self/schedstat`` field 2: woken,
    but no core free), and the process's GC time. Made by the loop's thread (the file names the
    thread that opened it)."""

    def __init__(self) -> None:
        self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        self.rq_s = 0.0  # run-queue wait over the last sleep
        self._mark_s = 0.0
        self._gc_s = self._gc_fired_s = self._gc_start_s = 0.0
        gc.callbacks.append(self._on_gc)

    def waited_s(self) -> float:
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def before_sleep(self) -> None:
        self._mark_s = self.waited_s()

    def after_sleep(self) -> None:
        self.rq_s = self.waited_s() - self._mark_s

    def gc_since_fired(self) -> float:
        """GC time since the previous call (the previous timer fired)."""
        value, self._gc_fired_s = self._gc_s - self._gc_fired_s, self._gc_s
        return value

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start_s = time.monotonic()
        else:
            self._gc_s += time.monotonic() - self._gc_start_s
