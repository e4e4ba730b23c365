"""The sync sanitizer: finds host accesses that skip the synchronization an async task needs.

Races are judged by **program order**, not timing: a task is *unsynced* from
:meth:`Sanitizer.task_submitted` until a synchronization that covers it returns in the caller,
even if the card finished it long ago, so a missing sync is reported on every run.

Coverage rules (task ids increase per process; every stream is a FIFO):

- :meth:`~Sanitizer.stream_synced` ``(device, stream, upto, code)`` covers the tasks of that
  stream with ``id <= upto`` for every thread: ``synchronize_stream`` passes the stream's last
  task, ``synchronize_event`` the event's record task, the synchronous ``execute``/``execute_v2``
  its own task (waiting for it means the earlier tasks of the FIFO are done too), a pageable
  ``memcpy_async`` the stream's last task (CANN returns from it only once the copy, queued
  behind the stream's earlier tasks, is done), a waiting ``destroy_stream`` the last task once
  its internal wait returned.
- :meth:`~Sanitizer.device_synced` covers every task of the device.
- :meth:`~Sanitizer.stream_observed` ``(device, stream, upto)`` covers the same tasks **for the
  calling thread only**: ``stream_query`` saying "done", ``query_event_status`` saying
  "complete" (the tasks up to the record), and a host callback while it runs (the tasks before
  its marker: the callback runs after every earlier task of its stream, the vendor's async
  samples copy the outputs back right there). The thread saw the completion; another thread it
  tells through a queue or a flag cannot be followed, so it still needs a sync of its own.
- :meth:`~Sanitizer.blocking_callback` ``(device, stream, marker)`` marks the calling thread as
  running a *blocking* callback: the tasks its stream queued after the marker wait for it to
  return (they are held in the client), so they cannot have written anything it reads.
- :meth:`~Sanitizer.task_waits` records a ``stream_wait_event``: covering the waiting task
  (either way above) also covers the awaited stream up to the event's record, transitively.
- A sync that returns a code in :data:`UNCOVERED_SYNC_CODES` (timeouts 507046/507047, a lost card
  507010, a lost farm 507901, refused calls) covers nothing: the tasks may still be running.
- A sync that returns any other nonzero code (a task error) **still covers**: the runtime waited for
  the tasks before reporting the error. It also *observes* every failure recorded so far on that
  stream (the device, for a device sync), because the runtime keeps one error slot per stream and
  reports its first error once, whatever task the sync waited for.

Failures reported by :meth:`~Sanitizer.task_finished` must be observed by such a sync before
:meth:`~Sanitizer.finalize`, else an ``unobserved_error`` finding is made. Loss codes
(507010, 507901) are not task errors: a lost card already fails every later call of its device.
``task_finished`` must be called before the completion is visible to waiters (the session's
``on_settle`` hook runs under its condition), so a sync never returns before its failures are
known. A failure for a task not (yet) submitted is buffered for its submit: a fast card can
finish a task before the submitting thread records it.

Every finding names the user's own code (:mod:`client.sanitizer_frames`): ``where`` is the
first frame outside npufarm, ``stack`` the user frames of the offending call (so a helper's line
is traced to its caller), ``submitted`` those of the task's submit.

In ``"warn"`` mode a new finding is logged once and recorded; in ``"raise"`` mode it is recorded
and :class:`SanitizerError` is raised from the ``check_*`` call, so the offending acl call fails
(the runtime's ``api`` wrapper turns it into return code 100000). A finding is identified by
``(kind, task, where)``; a repeat is not recorded or logged again (raise mode still raises).
Bookkeeping is bounded (:data:`PENDING_LIMIT` unsynced tasks, :data:`FINDINGS_LIMIT` findings,
the oldest dropped and counted), so a program that never syncs cannot grow it without end.
Everything here is pure and thread-safe (one lock); ``"off"`` returns from every method at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.sanitizer_frames import Frame, format_stack, user_frames, user_site
from client.sanitizer_report import (
    FINDING_KINDS,
    Finding,
    SanitizerError,
    json_text,
    summary_text,
)
from core import errors
from core.errors import ACL_SUCCESS, ConfigError, code_name

__all__ = [
    "FINDINGS_LIMIT",
    "FINDING_KINDS",
    "LOSS_CODES",
    "MODES",
    "PENDING_LIMIT",
    "UNCOVERED_SYNC_CODES",
    "Finding",
    "Sanitizer",
    "SanitizerError",
]

logger = logging.getLogger(__name__)

MODES = ("off", "warn", "raise")
LOSS_CODES = frozenset({errors.ACL_ERROR_RT_LOST_HEARTBEAT, errors.ACL_ERROR_RT_SOCKET_CLOSE})
"""Task end codes that mean "card or farm lost", not "the task failed"."""
_WAIT_ENDED_EARLY = (
    errors.ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
    errors.ACL_ERROR_RT_EVENT_SYNC_TIMEOUT,
)
_REFUSED = (  # the sync was rejected before it waited
    errors.ACL_ERROR_INVALID_PARAM,
    errors.ACL_ERROR_UNINITIALIZE,
    errors.ACL_ERROR_RT_PARAM_INVALID,
    errors.ACL_ERROR_RT_INVALID_DEVICEID,
    errors.ACL_ERROR_RT_CONTEXT_NULL,
    errors.ACL_ERROR_RT_STREAM_CONTEXT,
)
UNCOVERED_SYNC_CODES = frozenset((*_WAIT_ENDED_EARLY, *LOSS_CODES, *_REFUSED))
"""Sync return codes after which the tasks may still run: such a sync covers nothing."""

PENDING_LIMIT = 1 << 16
"""Unsynced tasks (and stream waits) kept at most; the oldest is dropped (and counted) beyond."""
FINDINGS_LIMIT = 10_000
"""Findings (and unobserved failures) kept at most; later ones are counted, not kept."""
_EARLY_LIMIT = 4096  # failures of not-yet-submitted tasks kept at most
_THREADS_LIMIT = 256  # threads with observations before dead threads are pruned

StreamKey = tuple[int, int]  # (device, stream)


def _ranges(pairs: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(ptr), int(ptr) + int(n)) for ptr, n in pairs or () if int(n) > 0)


def _overlaps(spans: tuple[tuple[int, int], ...], start: int, end: int) -> bool:
    return any(lo < end and start < hi for lo, hi in spans)


@dataclass(slots=True)
class _Task:
    task_id: int
    device: int
    stream: int
    reads: tuple[tuple[int, int], ...]
    writes: tuple[tuple[int, int], ...]
    call: str
    origin: tuple[Frame, ...] = ()
    waits: tuple[int, int] | None = None  # stream_wait_event: (awaited stream, record task)


@dataclass(slots=True)
class _Failure:
    task: _Task
    code: int


class Sanitizer:
    """Program-order sync checker for one acl session (see the module docstring)."""

    def __init__(self, mode: str = "off") -> None:
        if mode not in MODES:
            raise ConfigError(f"sanitizer mode must be one of {MODES!r}, not {mode!r}")
        self.mode = mode
        self.enabled = mode != "off"
        self._lock = threading.Lock()
        # device -> stream -> task id -> unsynced task (dicts keep submission = id order)
        self._pending: dict[int, dict[int, dict[int, _Task]]] = {}
        self._located: dict[int, StreamKey] = {}  # unsynced task id -> (device, stream)
        self._marks: dict[int, dict[StreamKey, int]] = {}  # thread -> stream -> observed upto
        self._blocking = threading.local()  # .held: (device, stream, marker) while a blocking
        # callback runs on this thread: that stream's tasks after the marker wait for it
        self._failures: dict[int, _Failure] = {}  # unobserved task errors by task id
        self._early: dict[int, int] = {}  # failure codes that arrived before their submit
        self._findings: list[Finding] = []
        self._seen: dict[tuple[str, int, str], Finding] = {}
        self.dropped: Counter[str] = Counter()  # bookkeeping dropped at its limits, by kind

    # -- task lifecycle ----------------------------------------------------------------------
    def task_submitted(
        self,
        task_id: int,
        device_id: int,
        stream_id: int,
        reads: list[tuple[int, int]],
        writes: list[tuple[int, int]],
        call: str,
    ) -> None:
        """An async task was enqueued; it is unsynced until a covering sync returns."""
        if not self.enabled:
            return
        task = _Task(
            task_id, device_id, stream_id, _ranges(reads), _ranges(writes), call, user_frames()
        )
        with self._lock:
            self._add(task)
            code = self._early.pop(task_id, ACL_SUCCESS)
            if code != ACL_SUCCESS:
                self._add_failure(_Failure(task, code))

    def task_waits(
        self, task_id: int, device_id: int, stream_id: int, on_stream: int, on_task: int
    ) -> None:
        """A ``stream_wait_event`` task: covering it covers ``on_stream`` up to ``on_task``."""
        if not self.enabled:
            return
        task = _Task(
            task_id,
            device_id,
            stream_id,
            (),
            (),
            "acl.rt.stream_wait_event",
            waits=(on_stream, on_task),
        )
        with self._lock:
            self._add(task)

    def _add(self, task: _Task) -> None:
        self._pending.setdefault(task.device, {}).setdefault(task.stream, {})[task.task_id] = task
        self._located[task.task_id] = (task.device, task.stream)
        if len(self._located) > PENDING_LIMIT:  # a program that never syncs: forget the oldest
            oldest, (device_id, stream_id) = next(iter(self._located.items()))
            del self._located[oldest]
            tasks = self._pending[device_id][stream_id]
            del tasks[oldest]
            if not tasks:
                del self._pending[device_id][stream_id]
            self.dropped["tasks"] += 1

    def task_finished(self, task_id: int, code: int) -> None:
        """The card reported the task's end; timing alone never syncs it. Any thread."""
        if not self.enabled or code == ACL_SUCCESS or code in LOSS_CODES:
            return
        with self._lock:
            located = self._located.get(task_id)
            if located is not None:
                self._add_failure(_Failure(self._pending[located[0]][located[1]][task_id], code))
            else:  # not submitted yet (a fast card): kept for task_submitted, bounded
                self._early[task_id] = code
                if len(self._early) > _EARLY_LIMIT:
                    dropped = next(iter(self._early))
                    del self._early[dropped]
                    logger.debug("failure of unknown task %d dropped", dropped)

    def _add_failure(self, failure: _Failure) -> None:
        self._failures[failure.task.task_id] = failure
        if len(self._failures) > FINDINGS_LIMIT:
            del self._failures[next(iter(self._failures))]
            self.dropped["failures"] += 1

    # -- coverage ----------------------------------------------------------------------------
    def stream_synced(self, device_id: int, stream_id: int, upto_task_id: int, code: int) -> None:
        """A sync covering the stream's tasks with ``id <= upto_task_id`` returned ``code``."""
        if not self.enabled or code in UNCOVERED_SYNC_CODES:
            return
        with self._lock:
            self._cover(device_id, stream_id, upto_task_id)
            if code != ACL_SUCCESS:
                self._observe(lambda f: f.device == device_id and f.stream == stream_id)

    def stream_observed(self, device_id: int, stream_id: int, upto_task_id: int) -> None:
        """The calling thread saw the stream's tasks with ``id <= upto_task_id`` complete (a
        query said so, or a host callback runs): covered for this thread only."""
        if not self.enabled:
            return
        me = threading.get_ident()
        with self._lock:
            marks = self._marks.get(me)
            if marks is None:
                if len(self._marks) >= _THREADS_LIMIT:
                    alive = {thread.ident for thread in threading.enumerate()}
                    for ident in [i for i in self._marks if i not in alive]:
                        del self._marks[ident]
                marks = self._marks[me] = {}
            work = [(stream_id, upto_task_id)]
            while work:
                stream, upto = work.pop()
                tasks = self._pending.get(device_id, {}).get(stream)
                if not tasks or marks.get((device_id, stream), 0) >= upto:
                    continue  # nothing unsynced there (later tasks get higher ids), or known
                marks[(device_id, stream)] = upto
                for task_id, task in tasks.items():
                    if task_id > upto:
                        break
                    if task.waits is not None:
                        work.append(task.waits)

    def device_synced(self, device_id: int, code: int) -> None:
        """A device sync returned ``code``; covers every task of the device."""
        if not self.enabled or code in UNCOVERED_SYNC_CODES:
            return
        with self._lock:
            self._drop_device_tasks(device_id)
            if code != ACL_SUCCESS:
                self._observe(lambda f: f.device == device_id)

    def forget_device(self, device_id: int) -> None:
        """Device reset: its pending tasks and their unobserved failures are gone."""
        if not self.enabled:
            return
        with self._lock:
            self._drop_device_tasks(device_id)
            self._observe(lambda f: f.device == device_id)

    def _cover(self, device_id: int, stream_id: int, upto_task_id: int) -> None:
        """Drop the stream's tasks up to ``upto_task_id`` and, through the waits among them,
        the awaited streams' tasks up to their records (caller holds the lock)."""
        streams = self._pending.get(device_id)
        work = [(stream_id, upto_task_id)]
        while work and streams:
            stream, upto = work.pop()
            for marks in self._marks.values():
                if marks.get((device_id, stream), upto + 1) <= upto:
                    del marks[(device_id, stream)]  # a thread mark the sync made useless
            tasks = streams.get(stream)
            if not tasks:
                continue
            covered = []
            for task_id, task in tasks.items():
                if task_id > upto:
                    break
                covered.append(task_id)
                if task.waits is not None:
                    work.append(task.waits)
            for task_id in covered:
                del tasks[task_id]
                self._located.pop(task_id, None)
            if not tasks:
                del streams[stream]

    def _drop_device_tasks(self, device_id: int) -> None:
        for tasks in self._pending.pop(device_id, {}).values():
            for task_id in tasks:
                self._located.pop(task_id, None)
        for marks in self._marks.values():
            for key in [k for k in marks if k[0] == device_id]:
                del marks[key]

    def _observe(self, match: Any) -> None:
        for task_id in [t for t, failure in self._failures.items() if match(failure.task)]:
            del self._failures[task_id]

    # -- checks at the host's access ---------------------------------------------------------
    def check_read(self, device_id: int, ptr: int, nbytes: int, call: str) -> None:
        """The host reads device bytes: a finding if an unsynced task writes them."""
        if self.enabled and nbytes > 0:
            self._check_range("read_before_sync", device_id, ptr, nbytes, call, reads=False)

    def check_write(self, device_id: int, ptr: int, nbytes: int, call: str) -> None:
        """The host writes device bytes: a finding if an unsynced task reads (or writes) them."""
        if self.enabled and nbytes > 0:
            self._check_range("write_while_read", device_id, ptr, nbytes, call, reads=True)

    def check_free(self, device_id: int, ptr: int, size: int, call: str) -> None:
        """Device memory is freed: a finding if an unsynced task uses any of it."""
        if self.enabled and size > 0:
            self._check_range("free_while_pending", device_id, ptr, size, call, reads=True)

    def _check_range(
        self, kind: str, device_id: int, ptr: int, nbytes: int, call: str, *, reads: bool
    ) -> None:
        end = ptr + nbytes
        with self._lock:
            task, count = self._conflict(device_id, ptr, end, reads=reads)
            if task is None:
                return
            use = "reads" if _overlaps(task.reads, ptr, end) else "writes"
            head = f"task {task.task_id} ({task.call}) that {use} it is not synchronized"
            more = f" ({count - 1} more such task(s))" if count > 1 else ""
            span = f"[{ptr:#x}, +{nbytes})"
            message = {
                "read_before_sync": f"host reads {span} while {head}; synchronize its stream, "
                "an event recorded after it, or the device first",
                "write_while_read": f"host writes {span} while {head}; the task may see the old "
                "or the new bytes",
                "free_while_pending": f"frees {span} while {head}",
            }[kind] + more
            finding, new = self._record(kind, call, task, message)
        self._emit(finding, new)

    def check_destroy_stream(self, device_id: int, stream_id: int, call: str) -> None:
        """A stream is destroyed: a finding if unsynced tasks remain on it (they stay pending)."""
        if not self.enabled:
            return
        with self._lock:
            seen = self._thread_marks().get((device_id, stream_id), 0)
            tasks = [
                task
                for task in self._pending.get(device_id, {}).get(stream_id, {}).values()
                if task.task_id > seen and task.waits is None
            ]
            if not tasks:
                return
            task = tasks[-1]
            message = (
                f"destroys stream {stream_id} with {len(tasks)} unsynchronized task(s) "
                f"(latest: task {task.task_id}, {task.call}); synchronize the stream first"
            )
            finding, new = self._record("destroy_stream_pending", call, task, message)
        self._emit(finding, new)

    @contextlib.contextmanager
    def blocking_callback(self, device_id: int, stream_id: int, marker: int) -> Iterator[None]:
        """While the calling thread runs the blocking callback ``marker`` of a stream, that
        stream's later tasks are not started (see the module docstring)."""
        self._blocking.held = (device_id, stream_id, marker)
        try:
            yield
        finally:
            self._blocking.held = None

    def _thread_marks(self) -> dict[StreamKey, int]:
        return self._marks.get(threading.get_ident()) or {}

    def _conflict(
        self, device_id: int, start: int, end: int, *, reads: bool
    ) -> tuple[_Task | None, int]:
        """The latest task of the device, unsynced for the calling thread, whose writes (or
        reads, if ``reads``) overlap ``[start, end)``, and how many tasks overlap."""
        latest: _Task | None = None
        count = 0
        marks = self._thread_marks()
        held = getattr(self._blocking, "held", None)
        for stream_id, tasks in self._pending.get(device_id, {}).items():
            seen = marks.get((device_id, stream_id), 0)
            waiting = held[2] if held is not None and held[:2] == (device_id, stream_id) else None
            for task in tasks.values():
                if waiting is not None and task.task_id > waiting:
                    break  # held behind the blocking callback this thread is running
                if task.task_id > seen and (
                    _overlaps(task.writes, start, end)
                    or (reads and _overlaps(task.reads, start, end))
                ):
                    count += 1
                    if latest is None or task.task_id > latest.task_id:
                        latest = task
        return latest, count

    def _record(self, kind: str, call: str, task: _Task, message: str) -> tuple[Finding, bool]:
        frames = user_frames()
        where = user_site(frames)
        key = (kind, task.task_id, where)
        known = self._seen.get(key)
        if known is not None:
            return known, False
        finding = Finding(
            kind,
            call,
            task.device,
            task.stream,
            task.task_id,
            where,
            message,
            format_stack(frames),
            format_stack(task.origin),
        )
        if len(self._findings) >= FINDINGS_LIMIT:
            self.dropped["findings"] += 1
            return finding, False
        self._seen[key] = finding
        self._findings.append(finding)
        return finding, True

    def _emit(self, finding: Finding, new: bool) -> None:
        if self.mode == "raise":
            raise SanitizerError(finding)
        if new:
            logger.warning("sanitizer: %s", finding)

    # -- results -----------------------------------------------------------------------------
    def finalize(self, call: str = "acl.finalize") -> list[Finding]:
        """Report failures no sync observed, end the session's bookkeeping, return all findings."""
        if not self.enabled:
            return []
        with self._lock:
            new = []
            for failure in sorted(self._failures.values(), key=lambda f: f.task.task_id):
                task = failure.task
                message = (
                    f"task {task.task_id} ({task.call}) failed with {failure.code} "
                    f"({code_name(failure.code)}) and no synchronization reported it"
                )
                finding, fresh = self._record("unobserved_error", call, task, message)
                if fresh:
                    new.append(finding)
            self._failures.clear()
            self._pending.clear()
            self._located.clear()
            self._marks.clear()
            self._early.clear()
            findings = list(self._findings)
        for finding in new:
            logger.warning("sanitizer: %s", finding)
        return findings

    @property
    def findings(self) -> list[Finding]:
        with self._lock:
            return list(self._findings)

    def pending_count(self) -> int:
        """How many tasks are unsynced right now (for tests and diagnostics)."""
        with self._lock:
            return len(self._located)

    def summary(self) -> str:
        """Human text: counts by kind, then each finding with its stacks; ``none`` when clean."""
        return summary_text(self.mode, self.findings, self.dropped)

    def to_json(self) -> str:
        return json_text(self.mode, self.findings, self.dropped)

    def export(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")
