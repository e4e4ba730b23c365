"""Host callbacks on streams: ``subscribe_report``, ``launch_callback``, ``process_report``,
``unsubscribe_report`` — the pyACL pattern of a report thread that runs callbacks queued on
streams. A mixin of the process-wide runtime (see ``client``).

::

    API thread: launch_callback(fn, data, block, s) ──▶ marker task on s (card) ──┐ completes when
                                                                                   │ s's earlier
    report thread: process_report(ms) ◀── ready queue of that thread ◀── settle ◀──┘ tasks are done
                   runs fn(data); then the stream goes on (block=1: the tasks submitted after the
                   callback are held in the client and sent only now)

A ``synchronize_stream`` covering a callback waits until the callback has returned, in both
modes; with ``block = 0`` later tasks may run on the card meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from client.runtime import _int, api
from farm.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_REPEAT_SUBSCRIBE,
    ACL_ERROR_RT_REPORT_TIMEOUT,
    ACL_ERROR_RT_STREAM_NO_CB_REG,
    ACL_ERROR_RT_THREAD_SUBSCRIBE,
    ACL_SUCCESS,
    AclError,
)
from farm.protocol import TaskKind

__all__ = ["CallbackApi"]

logger = logging.getLogger(__name__)


class CallbackApi:
    """Callback calls; mixed into the runtime with :class:`client.runtime.Runtime`."""

    def _callback_state(self) -> None:
        self.report_cond = threading.Condition()
        self.subscriptions: dict[int, int] = {}  # stream handle -> report thread id
        self.report_queues: dict[int, deque] = {}  # report thread id -> ready callbacks
        self.callback_tasks: dict[int, tuple] = {}  # marker task id -> callback entry

    @api()
    def subscribe_report(self, thread_id: Any, stream: Any) -> None:
        """Let the thread ``thread_id`` run the stream's host callbacks; 100033 if taken."""
        thread_id = _int(thread_id, "thread id")
        found = self.stream(stream)
        with self.report_cond:
            if found.handle in self.subscriptions:
                raise AclError("stream already subscribed", ACL_ERROR_REPEAT_SUBSCRIBE)
            self.subscriptions[found.handle] = thread_id
            self.report_queues.setdefault(thread_id, deque())

    @api()
    def unsubscribe_report(self, thread_id: Any, stream: Any) -> None:
        """Undo subscribe_report; 100000 if the thread did not subscribe to the stream."""
        thread_id = _int(thread_id, "thread id")
        found = self.stream(stream)
        with self.report_cond:
            if self.subscriptions.get(found.handle) != thread_id:
                raise AclError("stream not subscribed by this thread", ACL_ERROR_INVALID_PARAM)
            del self.subscriptions[found.handle]

    @api()
    def launch_callback(self, fn: Any, user_data: Any, block: Any, stream: Any) -> None:
        """Queue ``fn(user_data)`` on the stream (block 1 holds later tasks); 107015: no thread."""
        block = _int(block, "block")
        if not callable(fn) or block not in (0, 1):
            raise AclError(
                "launch_callback needs a callable and block 0 or 1", ACL_ERROR_INVALID_PARAM
            )
        found = self.stream(stream)
        with self.report_cond:
            thread_id = self.subscriptions.get(found.handle)
        if thread_id is None:
            raise AclError(
                "no report thread subscribed to the stream", ACL_ERROR_RT_STREAM_NO_CB_REG
            )
        track = found.track

        def registered(task_id: int) -> None:  # under session.cond, before the marker completes
            track.host_pending.add(task_id)
            track.gate_next = bool(block)
            self.callback_tasks[task_id] = (thread_id, fn, user_data, block, track)

        self.require().submit(track, {"k": TaskKind.RECORD}, registered)

    def _callback_settled(self, task_id: int, code: int) -> None:
        """A marker task ended (under session.cond): its callback becomes ready to run."""
        entry = self.callback_tasks.pop(task_id, None)
        if entry is None:
            return
        with self.report_cond:
            self.report_queues.setdefault(entry[0], deque()).append((task_id, code, *entry[1:]))
            self.report_cond.notify_all()

    @api()
    def process_report(self, timeout_ms: Any) -> None:
        """Run the ready callbacks of the streams this thread subscribed to; 507012 if none
        became ready within ``timeout_ms`` (-1: wait for one)."""
        timeout_ms = _int(timeout_ms, "timeout")
        me = threading.get_ident()
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000.0
        with self.report_cond:
            if me not in self.subscriptions.values() and not self.report_queues.get(me):
                raise AclError("this thread subscribed to no stream", ACL_ERROR_RT_THREAD_SUBSCRIBE)
            ready = self.report_queues.setdefault(me, deque())
            while not ready:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise AclError("no callback within the timeout", ACL_ERROR_RT_REPORT_TIMEOUT)
                self.report_cond.wait(remaining)
            callbacks = list(ready)
            ready.clear()
        for task_id, code, fn, user_data, block, track in callbacks:
            try:
                if code == ACL_SUCCESS:
                    fn(user_data)
                else:
                    logger.warning("callback dropped: its stream failed with %d", code)
            except Exception:  # the user's callback must not kill the report thread
                logger.exception("host callback %r raised", fn)
            finally:
                self.require().host_done(track, task_id, release=bool(block))
