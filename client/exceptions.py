"""``acl.rt.set_exception_info_callback`` and the five ``get_*_from_exception_info`` getters:
the pyACL way to hear about failed device tasks without waiting for a sync. A part of the
process-wide runtime (see :mod:`client.runtime`).

::

    card: task fails ──completion (code)──▶ client settles it (under the session condition)
                                              └─▶ ExceptionReporter.report(info) ──queue──┐
    card lost (CARD_EVENT / broker silent) ──▶ on_lost(device) ─▶ report(device info) ────┤
                                                                                          ▼
    "npufarm-exception" thread (started on demand, ends when idle) calls fn(info handle)

What the getters return (pyACL returns each as a plain int, no ``ret``):

- a failed task: its task id (the client's task number, low 32 bits), stream id (the low 32 bits
  of the stream handle), thread id (native id of the thread that last submitted to that stream),
  device id and the task's error code;
- a lost card (or a lost farm): task, stream and thread id and the error code are ``0xFFFFFFFF``
  ("the device is abnormal", as the CANN getters document); the device id names the lost card
  (npufarm's choice: the documentation shows 0xFFFFFFFF for every field, which would not say
  which card). Tasks that fail *because* the card was lost (507010) get no info of their own;
- an unknown, NULL or expired info handle: ``0xFFFFFFFF`` from every getter (CANN's
  ``ACL_ERROR_INVALID_EXCEPTION_INFO``).

The callback is process-wide and survives ``acl.finalize`` (pyACL keeps it in a global, CANN's
runtime in its callback registry); ``set_exception_info_callback(None)`` clears it, a new one
replaces it. ``fn`` runs on a thread of the client, never on the caller's thread and never while
any runtime lock is held, so it may call ``acl`` itself; an exception it raises is logged.
Info handles stay valid for the last ``INFO_HISTORY`` failures (the C struct is only valid inside
the callback on hardware; keeping them longer is harmless). At most ``INFO_HISTORY`` infos wait
for a slow callback (``backlog``); older ones are dropped, counted and logged (a stuck callback
must not grow the process without end).
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.conventions import api
from client.handle_table import as_int
from client.state import RuntimeState
from client.tracks import StreamTrack
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_SUCCESS,
    AclError,
)

__all__ = [
    "ExceptionApi",
    "ExceptionInfo",
    "ExceptionReporter",
    "INFO_INVALID",
    "INFO_HISTORY",
    "TaskErrorNotes",
]

logger = logging.getLogger(__name__)

INFO_INVALID = 0xFFFFFFFF
"""What every getter returns for an unknown info, and the fields of a device-abnormal info."""
INFO_HISTORY = 4096
"""How many exception infos stay readable by their handle."""
_INFO_BASE = 0x6E00_0000_1000
_INFO_STEP = 16
_U32 = 0xFFFFFFFF
_IDLE_S = 1.0  # the dispatcher thread ends after this long without infos


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """One aclrtExceptionInfo: every field a uint32."""

    task_id: int
    stream_id: int
    thread_id: int
    device_id: int
    error_code: int

    @classmethod
    def task_failed(
        cls, task_id: int, stream_id: int, thread_id: int, device_id: int, code: int
    ) -> ExceptionInfo:
        return cls(
            task_id & _U32, stream_id & _U32, thread_id & _U32, device_id & _U32, code & _U32
        )

    @classmethod
    def device_lost(cls, device_id: int) -> ExceptionInfo:
        return cls(INFO_INVALID, INFO_INVALID, INFO_INVALID, device_id & _U32, INFO_INVALID)


class ExceptionReporter:
    """The registered callback, the readable infos, and the thread that delivers them."""

    def __init__(
        self, history: int = INFO_HISTORY, idle_s: float = _IDLE_S, backlog: int = INFO_HISTORY
    ) -> None:
        self.cond = threading.Condition()
        self.fn: Callable[[int], Any] | None = None
        self._infos: OrderedDict[int, ExceptionInfo] = OrderedDict()
        self._history = history
        self._handles = itertools.count(_INFO_BASE, _INFO_STEP)
        self._pending: deque[tuple[Callable[[int], Any], int]] = deque()
        self._thread: threading.Thread | None = None
        self._busy = False  # the dispatcher is inside a callback
        self._backlog = backlog  # infos waiting for the callback, at most
        self.dropped = 0  # infos never delivered: more than ``backlog`` waited for the callback
        self._idle_s = idle_s

    def set_callback(self, fn: Callable[[int], Any] | None) -> None:
        with self.cond:
            self.fn = fn

    def report(self, info: ExceptionInfo) -> int:
        """Keep ``info`` and queue it for the callback; its handle (0 if no callback is set:
        nothing is kept then). Never blocks for long: callers may hold other locks."""
        with self.cond:
            fn = self.fn
            if fn is None:
                return 0
            handle = next(self._handles)
            self._infos[handle] = info
            while len(self._infos) > self._history:
                self._infos.popitem(last=False)
            if len(self._pending) >= self._backlog:  # the callback falls behind: oldest go
                self._pending.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning(
                        "exception-info callback falls behind: %d infos dropped", self.dropped
                    )
            self._pending.append((fn, handle))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="npufarm-exception", daemon=True
                )
                self._thread.start()
            self.cond.notify_all()
        return handle

    def info(self, handle: Any) -> ExceptionInfo | None:
        key = as_int(handle)
        if key is None:
            return None
        with self.cond:
            return self._infos.get(key)

    def field(self, handle: Any, name: str) -> int:
        """One field of the info ``handle``; ``INFO_INVALID`` for an unknown handle."""
        found = self.info(handle)
        return INFO_INVALID if found is None else getattr(found, name)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued info was delivered (tests); False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: not self._pending and not self._busy, timeout_s)

    def _run(self) -> None:
        while True:
            with self.cond:
                self._busy = False
                self.cond.notify_all()
                while not self._pending:
                    if not self.cond.wait(self._idle_s) and not self._pending:
                        self._thread = None
                        return
                fn, handle = self._pending.popleft()
                self._busy = True
            try:
                fn(handle)
            except Exception:  # the user's callback must not kill the dispatcher
                logger.exception("exception-info callback %r raised", fn)


class TaskErrorNotes:
    """The first unreported failed task of each stream (its task id and code), kept from the
    task's completion until a sync takes the stream's error, so that the thread which sees the
    code can read what failed with ``get_recent_err_msg`` (CANN keeps such a text too).

    :meth:`task_settled` is a settle hook (called under the session's condition); :meth:`text`
    is called by the sync that took ``code`` from the stream. Entries die with their stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: weakref.WeakKeyDictionary[StreamTrack, tuple[int, int]] = (
            weakref.WeakKeyDictionary()
        )

    def task_settled(self, task_id: int, code: int, track: StreamTrack) -> None:
        """A task ended: the first failure since the stream's last reported error is kept (a
        lost card's 507010 is not a task's own failure)."""
        if code in (ACL_SUCCESS, ACL_ERROR_RT_LOST_HEARTBEAT):
            return
        with self._lock:
            self._first.setdefault(track, (task_id, code))

    def text(self, track: StreamTrack, code: int, device_id: int) -> str:
        """What failed, for a sync that took ``code`` from ``track`` (``device_id`` as this
        process numbers the device); the task is named when its failure is the one taken."""
        with self._lock:
            first = self._first.pop(track, None)
        where = f"device {device_id} stream {track.stream_id & _U32}"
        if first is not None and first[1] == code:
            return f"task {first[0] & _U32} on {where} failed with {code}"
        return f"a task on {where} failed with {code}"


class ExceptionApi:
    """Exception-info calls on the shared :class:`RuntimeState`. The reporter is
    process-wide (not reset by init/finalize): the callback outlives a session."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state
        self.exception_reporter = ExceptionReporter()

    @api()
    def set_exception_info_callback(self, fn: Any = None) -> None:
        """Call ``fn(info)`` on a client thread whenever a device task fails or a card is lost;
        ``None`` clears it (100000 for a non-callable; pyACL raises TypeError there)."""
        if fn is not None and not callable(fn):
            raise AclError("the exception callback must be callable", ACL_ERROR_INVALID_PARAM)
        self.exception_reporter.set_callback(fn)

    def get_task_id_from_exception_info(self, info: Any) -> int:
        """Task id of an exception info; 0xFFFFFFFF if the device is abnormal or info unknown."""
        return self.exception_reporter.field(info, "task_id")

    def get_stream_id_from_exception_info(self, info: Any) -> int:
        """Stream id (low 32 bits of the stream handle); 0xFFFFFFFF if abnormal or unknown."""
        return self.exception_reporter.field(info, "stream_id")

    def get_thread_id_from_exception_info(self, info: Any) -> int:
        """Native id of the thread that submitted to the stream; 0xFFFFFFFF if abnormal."""
        return self.exception_reporter.field(info, "thread_id")

    def get_device_id_from_exception_info(self, info: Any) -> int:
        """Device id of an exception info (the lost card's id too); 0xFFFFFFFF if unknown."""
        return self.exception_reporter.field(info, "device_id")

    def get_error_code_from_exception_info(self, info: Any) -> int:
        """The failed task's ACL code; 0xFFFFFFFF if the device is abnormal or info unknown."""
        return self.exception_reporter.field(info, "error_code")

    # -- hooks (registered with the state) ---------------------------------------------------
    def task_settled(self, task_id: int, code: int, track: StreamTrack) -> None:
        """A task of this process ended (under the session condition): a failure is reported."""
        if code == ACL_SUCCESS or self.exception_reporter.fn is None:
            return
        if code == ACL_ERROR_RT_LOST_HEARTBEAT:
            return  # a loss is reported once per device, by device_lost
        info = ExceptionInfo.task_failed(
            task_id, track.stream_id, track.thread_id, self._device(track.device_id), code
        )
        self.exception_reporter.report(info)

    def device_lost(self, device_id: int) -> None:
        """A card (or the whole farm) was declared lost: reported for devices this process
        opened (after :meth:`client.callbacks.CallbackApi.device_lost` stopped its streams'
        host callbacks from holding syncs)."""
        if device_id in self.state.devices and self.exception_reporter.fn is not None:
            self.exception_reporter.report(ExceptionInfo.device_lost(self._device(device_id)))

    def _device(self, card: int) -> int:
        """The process's id of a farm card (ASCEND_RT_VISIBLE_DEVICES), as CANN reports it."""
        device = self.state.view.device(card)
        return card if device is None else device
