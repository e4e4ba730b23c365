"""The sync sanitizer: finds host accesses that skip the synchronization an async task needs.

Races are judged by **program order**, not timing: a task is *unsynced* from
:meth:`Sanitizer.task_submitted` until a synchronization that covers it returns in the caller,
even if the card finished it long ago, so a missing sync is reported on every run.

Coverage rules (task ids increase per process; every stream is a FIFO):

- :meth:`~Sanitizer.stream_synced` ``(device, stream, upto, code)`` covers the tasks of that
  stream with ``id <= upto``: ``synchronize_stream`` passes the stream's last task,
  ``synchronize_event`` the event's record task, the synchronous ``execute``/``execute_v2`` its
  own task (waiting for it means the earlier tasks of the FIFO are done too), a waiting
  ``destroy_stream`` may pass the last task once its internal wait returned.
- :meth:`~Sanitizer.device_synced` covers every task of the device.
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

In ``"warn"`` mode a new finding is logged once and recorded; in ``"raise"`` mode it is recorded
and :class:`SanitizerError` is raised from the ``check_*`` call, so the offending acl call fails
(the runtime's ``api`` wrapper turns it into return code 100000). A finding is identified by
``(kind, task, where)``; a repeat is not recorded or logged again (raise mode still raises).
Everything here is pure and thread-safe (one lock); ``"off"`` returns from every method at once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farm import errors
from farm.errors import ACL_SUCCESS, ConfigError, NpuFarmError, code_name

__all__ = [
    "FINDING_KINDS",
    "LOSS_CODES",
    "MODES",
    "UNCOVERED_SYNC_CODES",
    "Finding",
    "Sanitizer",
    "SanitizerError",
]

logger = logging.getLogger(__name__)

MODES = ("off", "warn", "raise")
FINDING_KINDS = (
    "read_before_sync",
    "write_while_read",
    "free_while_pending",
    "destroy_stream_pending",
    "unobserved_error",
)
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

_PACKAGES = ("acl", "client", "farm", "device")
_EARLY_LIMIT = 4096  # failures of not-yet-submitted tasks kept at most


def _own_dirs() -> tuple[str, ...]:
    """Directory prefixes of npufarm's own packages (frames there are not the caller's)."""
    prefixes: set[str] = set()
    for name in _PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in (os.path.abspath(folder), os.path.realpath(folder)):
                prefixes.add(os.path.normcase(path) + os.sep)
    return tuple(sorted(prefixes))


_OWN_DIRS = _own_dirs()
_own_file: dict[str, bool] = {}  # co_filename -> inside npufarm's packages (cache)


def _caller_where() -> str:
    """``"file:line"`` of the first stack frame outside npufarm's packages (``"<unknown>"``)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        own = _own_file.get(filename)
        if own is None:
            own = os.path.normcase(os.path.abspath(filename)).startswith(_OWN_DIRS)
            _own_file[filename] = own
        if not own:
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


@dataclass(frozen=True)
class Finding:
    """One sanitizer finding: what the caller did wrong, where, and against which task."""

    kind: str
    call: str  # the API call at ``where``, e.g. "acl.rt.memcpy"
    device: int
    stream: int
    task: int
    where: str  # "path/to/user_file.py:LINE"
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"[{self.kind}] {self.call} at {self.where} (device {self.device}, stream "
            f"{self.stream}, task {self.task}): {self.message}"
        )


class SanitizerError(NpuFarmError):
    """Raised in ``"raise"`` mode at the offending call; ``finding`` says what and where.

    The code is ``ACL_ERROR_INVALID_PARAM`` (100000): the caller misused the API.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(
            f"sanitizer: {finding}",
            errors.ACL_ERROR_INVALID_PARAM,
            card=finding.device,
            stream=finding.stream,
            task=finding.task,
        )
        self.finding = finding


@dataclass(slots=True)
class _Task:
    task_id: int
    device: int
    stream: int
    reads: tuple[tuple[int, int], ...]
    writes: tuple[tuple[int, int], ...]
    call: str


@dataclass(slots=True)
class _Failure:
    task_id: int
    device: int
    stream: int
    call: str
    code: int


def _ranges(pairs: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(ptr), int(ptr) + int(n)) for ptr, n in pairs or () if int(n) > 0)


def _overlaps(spans: tuple[tuple[int, int], ...], start: int, end: int) -> bool:
    return any(lo < end and start < hi for lo, hi in spans)


class Sanitizer:
    """Program-order sync checker for one acl session (see the module docstring)."""

    def __init__(self, mode: str = "off") -> None:
        if mode not in MODES:
            raise ConfigError(f"sanitizer mode must be one of {MODES!r}, not {mode!r}")
        self.mode = mode
        self.enabled = mode != "off"
        self._lock = threading.Lock()
        # device -> stream -> task id -> unsynced task (dicts keep submission order)
        self._pending: dict[int, dict[int, dict[int, _Task]]] = {}
        self._located: dict[int, tuple[int, int]] = {}  # unsynced task id -> (device, stream)
        self._failures: dict[int, _Failure] = {}  # unobserved task errors by task id
        self._early: dict[int, int] = {}  # failure codes that arrived before their submit
        self._findings: list[Finding] = []
        self._seen: dict[tuple[str, int, str], Finding] = {}

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
        task = _Task(task_id, device_id, stream_id, _ranges(reads), _ranges(writes), call)
        with self._lock:
            self._pending.setdefault(device_id, {}).setdefault(stream_id, {})[task_id] = task
            self._located[task_id] = (device_id, stream_id)
            code = self._early.pop(task_id, ACL_SUCCESS)
            if code != ACL_SUCCESS:
                self._failures[task_id] = _Failure(task_id, device_id, stream_id, call, code)

    def task_finished(self, task_id: int, code: int) -> None:
        """The card reported the task's end; timing alone never syncs it. Any thread."""
        if not self.enabled or code == ACL_SUCCESS or code in LOSS_CODES:
            return
        with self._lock:
            located = self._located.get(task_id)
            if located is not None:
                call = self._pending[located[0]][located[1]][task_id].call
                self._failures[task_id] = _Failure(task_id, *located, call, code)
            else:  # not submitted yet (a fast card): kept for task_submitted, bounded
                self._early[task_id] = code
                if len(self._early) > _EARLY_LIMIT:
                    dropped = next(iter(self._early))
                    del self._early[dropped]
                    logger.debug("failure of unknown task %d dropped", dropped)

    def stream_synced(self, device_id: int, stream_id: int, upto_task_id: int, code: int) -> None:
        """A sync covering the stream's tasks with ``id <= upto_task_id`` returned ``code``."""
        if not self.enabled or code in UNCOVERED_SYNC_CODES:
            return
        with self._lock:
            streams = self._pending.get(device_id)
            tasks = streams.get(stream_id) if streams else None
            if tasks:
                for task_id in [t for t in tasks if t <= upto_task_id]:
                    del tasks[task_id]
                    self._located.pop(task_id, None)
                if not tasks:
                    del streams[stream_id]
            if code != ACL_SUCCESS:
                self._observe(lambda f: f.device == device_id and f.stream == stream_id)

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

    def _drop_device_tasks(self, device_id: int) -> None:
        for tasks in self._pending.pop(device_id, {}).values():
            for task_id in tasks:
                self._located.pop(task_id, None)

    def _observe(self, match: Any) -> None:
        for task_id in [t for t, failure in self._failures.items() if match(failure)]:
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
            tasks = self._pending.get(device_id, {}).get(stream_id)
            if not tasks:
                return
            task = tasks[max(tasks)]
            message = (
                f"destroys stream {stream_id} with {len(tasks)} unsynchronized task(s) "
                f"(latest: task {task.task_id}, {task.call}); synchronize the stream first"
            )
            finding, new = self._record("destroy_stream_pending", call, task, message)
        self._emit(finding, new)

    def _conflict(
        self, device_id: int, start: int, end: int, *, reads: bool
    ) -> tuple[_Task | None, int]:
        """The latest unsynced task of the device whose writes (or reads, if ``reads``) overlap
        ``[start, end)``, and how many tasks overlap."""
        latest: _Task | None = None
        count = 0
        for tasks in self._pending.get(device_id, {}).values():
            for task in tasks.values():
                if _overlaps(task.writes, start, end) or (
                    reads and _overlaps(task.reads, start, end)
                ):
                    count += 1
                    if latest is None or task.task_id > latest.task_id:
                        latest = task
        return latest, count

    def _record(self, kind: str, call: str, task: _Task, message: str) -> tuple[Finding, bool]:
        where = _caller_where()
        key = (kind, task.task_id, where)
        known = self._seen.get(key)
        if known is not None:
            return known, False
        finding = Finding(kind, call, task.device, task.stream, task.task_id, where, message)
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
            for failure in sorted(self._failures.values(), key=lambda f: f.task_id):
                task = _Task(failure.task_id, failure.device, failure.stream, (), (), failure.call)
                message = (
                    f"task {failure.task_id} ({failure.call}) failed with {failure.code} "
                    f"({code_name(failure.code)}) and no synchronization reported it"
                )
                finding, fresh = self._record("unobserved_error", call, task, message)
                if fresh:
                    new.append(finding)
            self._failures.clear()
            self._pending.clear()
            self._located.clear()
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
        """Human text: counts by kind, then one line per finding; ``none`` when clean."""
        findings = self.findings
        if not findings:
            return f"npufarm sanitizer ({self.mode}): none"
        counts = Counter(f.kind for f in findings)
        lines = [f"npufarm sanitizer ({self.mode}): {len(findings)} finding(s)"]
        lines += [f"  {kind}: {counts[kind]}" for kind in FINDING_KINDS if counts[kind]]
        lines += [f"  {finding}" for finding in findings]
        return "\n".join(lines)

    def to_json(self) -> str:
        findings = self.findings
        counts = Counter(f.kind for f in findings)
        return json.dumps(
            {
                "mode": self.mode,
                "counts": {kind: counts[kind] for kind in FINDING_KINDS},
                "findings": [finding.to_dict() for finding in findings],
            },
            indent=2,
        )

    def export(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")
