"""Per-stream FIFO scheduling on one card: pure state, no sockets, no clock of its own.

Streams are keyed by ``(client identity, stream id)`` because stream ids are per client process.
Tasks on one stream start strictly in order, one at a time; different streams run concurrently up
to ``slots`` tasks at once (the card's AI cores). A ``wait`` task (stream_wait_event) holds its
stream until no task with an id at or below the awaited record is queued or running on the other
stream; ``record`` and ``wait`` tasks take no slot.

A client's task ids increase, and its runtime sends a record before any wait on it, so a wait
only ever depends on tasks with smaller ids: that is what makes waits deadlock-free.
:meth:`StreamScheduler.bad_wait` refuses a wait that breaks it (a record id at or above the
wait's own, or one never submitted on the awaited stream) before it is queued; two waits on
each other's streams would otherwise hold both streams silently for ever. The scheduler knows
what a stream has seen only while its entry lives: a wait on a stream already destroyed (its
entry retired, everything drained) passes when the client has submitted a task with that id.

A stream entry lives from its first task until its client destroys the stream (``retire``: at
once when idle, else when its last queued task finishes) or leaves, so entries do not pile up
over a long client's life.

The scheduler also keeps what the card's latency model (device/timing.py) anchors a task's
start at, from the times the card puts on its tasks: each stream's ``end_s``, the modelled end
of its last finished task, and the modelled times at which the free execution slots freed (a
heap; a task taking a slot takes the earliest, in ``Task.slot_free_s``, and gives it back at
its ``end_s``). :meth:`StreamScheduler.stream_end_s` gives a task's stream anchor.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from core.protocol import TaskKind

__all__ = ["Task", "CardStream", "StreamScheduler"]

logger = logging.getLogger(__name__)

StreamKey = tuple[bytes, int]
_SLOT_FREE_KINDS = frozenset({TaskKind.RECORD, TaskKind.WAIT})  # tasks that take no exec slot


@dataclass(slots=True)
class Task:
    client: bytes
    stream: int
    task_id: int
    body: dict[str, Any]
    submitted_s: float  # the client's submit stamp (device/timing.py), else the card's receipt
    started_s: float = 0.0  # modelled start
    end_s: float = 0.0  # modelled end, once ended
    slot_free_s: float = 0.0  # when the execution slot it took freed (modelled)

    @property
    def key(self) -> StreamKey:
        return (self.client, self.stream)

    @property
    def kind(self) -> str:
        return self.body["k"]

    @property
    def takes_slot(self) -> bool:
        return self.body["k"] not in _SLOT_FREE_KINDS


@dataclass(slots=True)
class CardStream:
    key: StreamKey
    queue: deque[Task] = field(default_factory=deque)
    running: Task | None = None
    last_done: int = 0
    done: int = 0
    last_seen: int = 0  # highest task id submitted on this stream
    end_s: float = 0.0  # modelled end of its last finished task

    def blocks(self, task_id: int) -> bool:
        """True while a task with id <= ``task_id`` is still queued or running here."""
        if self.running is not None and self.running.task_id <= task_id:
            return True
        return bool(self.queue) and self.queue[0].task_id <= task_id


class StreamScheduler:
    """Decides which queued tasks may start; the card loop starts and finishes them."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a card needs at least one execution slot")
        self.slots = slots
        self.streams: dict[StreamKey, CardStream] = {}
        self.running_slots = 0
        self.free_slots: list[float] = [0.0] * slots  # heap: when each free slot freed (modelled)
        self._ready: deque[StreamKey] = deque()
        self._waiters: dict[StreamKey, list[StreamKey]] = {}
        self._retiring: set[StreamKey] = set()  # destroyed by the client, not drained yet
        self._highest: dict[bytes, int] = {}  # client -> highest task id it submitted

    # -- queries ---------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return sum(len(s.queue) for s in self.streams.values())

    @property
    def running(self) -> int:
        return sum(1 for s in self.streams.values() if s.running is not None)

    def stream_count(self) -> int:
        return len(self.streams)

    def queue_depths(self, limit: int = 32) -> dict[int, int]:
        """Queued + running tasks of the busiest streams (stream id -> depth), at most
        ``limit`` of them (for metrics)."""
        depths = [
            (len(s.queue) + (s.running is not None), key[1])
            for key, s in self.streams.items()
            if s.queue or s.running is not None
        ]
        return {stream: depth for depth, stream in sorted(depths, reverse=True)[:limit]}

    # -- events ----------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        stream = self.streams.get(task.key)
        if stream is None:
            stream = self.streams[task.key] = CardStream(task.key)
        elif self._retiring:
            self._retiring.discard(task.key)  # the id is in use again
        stream.queue.append(task)
        if task.task_id > stream.last_seen:
            stream.last_seen = task.task_id
        if task.task_id > self._highest.get(task.client, 0):
            self._highest[task.client] = task.task_id
        if stream.running is None and len(stream.queue) == 1:
            self._ready.append(task.key)

    def bad_wait(self, client: bytes, body: dict[str, Any]) -> str | None:
        """Why a (valid-looking) wait task must be refused, or None: its record ``wt`` must be
        an earlier task of the client, already submitted on stream ``ws``."""
        task_id, awaited, record = body["t"], body["ws"], body["wt"]
        if record >= task_id:
            return f"wait {task_id} names record {record}, not an earlier task"
        stream = self.streams.get((client, awaited))
        seen = stream.last_seen if stream is not None else self._highest.get(client, 0)
        if record > seen:
            return f"wait {task_id}: record {record} was never submitted on stream {awaited}"
        return None

    def take_startable(self) -> list[Task]:
        """Pop every task that may start now, in a fair round-robin over ready streams."""
        started: list[Task] = []
        parked: list[StreamKey] = []
        ready, streams, free_slots = self._ready, self.streams, self.free_slots
        while ready:
            key = ready[0]
            stream = streams.get(key)
            if stream is None or stream.running is not None or not stream.queue:
                ready.popleft()
                continue
            head = stream.queue[0]
            kind = head.body["k"]
            if kind == TaskKind.WAIT and not self._wait_satisfied(head):
                ready.popleft()
                self._waiters.setdefault((head.client, head.body["ws"]), []).append(key)
                continue
            takes_slot = kind not in _SLOT_FREE_KINDS
            if takes_slot and self.running_slots >= self.slots:
                # no slot: this stream stays ready; slot-free heads of later streams may go on
                parked.append(ready.popleft())
                continue
            ready.popleft()
            stream.queue.popleft()
            stream.running = head
            if takes_slot:
                self.running_slots += 1
                head.slot_free_s = heapq.heappop(free_slots) if free_slots else 0.0
            started.append(head)
        ready.extend(parked)
        return started

    def put_back(self, tasks: list[Task]) -> None:
        """Undo :meth:`take_startable` for tasks the card did not start after all."""
        for task in reversed(tasks):
            stream = self.streams.get(task.key)
            if stream is None or stream.running is not task:
                continue
            stream.running = None
            stream.queue.appendleft(task)
            if task.takes_slot:
                self._free_slot(task.slot_free_s)
            self._ready.appendleft(task.key)

    def finish(self, task: Task) -> None:
        """Mark ``task`` (previously returned by :meth:`take_startable`) as done."""
        key = (task.client, task.stream)
        stream = self.streams.get(key)
        if stream is None or stream.running is not task:
            logger.debug("finish of a task that is not running: %s", task.task_id)
            return
        stream.running = None
        stream.last_done = task.task_id
        stream.done += 1
        if task.end_s > stream.end_s:
            stream.end_s = task.end_s
        if task.body["k"] not in _SLOT_FREE_KINDS:
            self._free_slot(task.end_s)
        if stream.queue:
            self._ready.append(key)
        elif self._retiring and key in self._retiring:
            self._retiring.discard(key)
            del self.streams[key]
        if self._waiters:
            for waiter in self._waiters.pop(key, ()):
                self._ready.append(waiter)

    def retire(self, key: StreamKey) -> bool:
        """The client destroyed stream ``key``: forget it once drained. True if gone now."""
        stream = self.streams.get(key)
        if stream is None:
            return True
        if stream.queue or stream.running is not None:
            self._retiring.add(key)
            return False
        del self.streams[key]
        return True

    def drop_client(self, client: bytes) -> list[Task]:
        """Forget every stream of a departed client; return the tasks that were queued (the
        running ones are the card's: its timers)."""
        dropped: list[Task] = []
        for key in [k for k in self.streams if k[0] == client]:
            stream = self.streams.pop(key)
            dropped.extend(stream.queue)
            if stream.running is not None and stream.running.takes_slot:
                self._free_slot(stream.running.end_s)  # (set by the card as it ended it)
            self._waiters.pop(key, None)
            self._retiring.discard(key)
        self._ready = deque(k for k in self._ready if k[0] != client)
        self._highest.pop(client, None)
        return dropped

    def stream_end_s(self, task: Task) -> float:
        """The modelled end of the task before ``task`` on its stream (0 if none), and for a
        wait also of the awaited stream's last finished task: at or after the awaited record's
        end (0 when that stream's entry is gone)."""
        stream = self.streams.get(task.key)
        end_s = stream.end_s if stream is not None else 0.0
        if task.body["k"] == TaskKind.WAIT:
            awaited = self.streams.get((task.client, task.body["ws"]))
            if awaited is not None:
                end_s = max(end_s, awaited.end_s)
        return end_s

    def _free_slot(self, freed_s: float) -> None:
        self.running_slots -= 1
        if len(self.free_slots) < self.slots:
            heapq.heappush(self.free_slots, freed_s)

    def _wait_satisfied(self, task: Task) -> bool:
        if task.body["ws"] == task.stream:
            return True  # the stream's own FIFO already orders it
        other = self.streams.get((task.client, task.body["ws"]))
        return other is None or not other.blocks(task.body["wt"])
