"""Host callbacks on streams: ``subscribe_report``, ``launch_callback``, ``process_report``,
``unsubscribe_report`` — the pyACL pattern of a report thread that runs callbacks queued on
streams. A part of the process-wide runtime (see :mod:`client.runtime`).

::

    API thread: launch_callback(fn, data, block, s) ──▶ marker task on s (card) ──┐ completes when
                                                                                   │ s's earlier
    report thread: process_report(ms) ◀── ready queue of that thread ◀── settle ◀──┘ tasks are done
                   runs fn(data); then the stream goes on (block=1: the tasks submitted after the
                   callback are held in the client and sent only now)

A ``synchronize_stream`` covering a callback waits until the callback has returned, in both
modes; with ``block = 0`` later tasks may run on the card meanwhile. While ``fn`` runs, its
thread may read what the stream's earlier tasks wrote without a sync (the sanitizer is told).

A task held in the client behind a blocking callback has not reached the card: a
``stream_wait_event`` on an event whose record is held that way holds its own stream too (the
card would let a wait for a record it never saw pass at once), until the record is sent. A lost
card (or farm) ends every wait on its streams' callbacks: a ``-1`` sync returns 507010.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from client.conventions import api, int_arg
from client.state import RuntimeState
from client.tracks import HELD_FOR_RECORD, StreamTrack
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_REPEAT_SUBSCRIBE,
    ACL_ERROR_RT_REPORT_TIMEOUT,
    ACL_ERROR_RT_STREAM_NO_CB_REG,
    ACL_ERROR_RT_THREAD_SUBSCRIBE,
    ACL_SUCCESS,
    AclError,
)
from core.protocol import TaskKind

__all__ = ["CallbackApi"]

logger = logging.getLogger(__name__)


def _is_held(track: StreamTrack, task_id: int) -> bool:
    """Task ``task_id`` of ``track`` is still held in the client (caller holds the condition)."""
    return track.held is not None and any(task["t"] == task_id for task, _ in track.held)


class CallbackApi:
    """Callback calls on the shared :class:`RuntimeState`; owns the subscriptions, the ready
    queues of the report threads and the held waits (reset with each session)."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state
        self.reset()

    def reset(self) -> None:
        """Forget every subscription and callback (a session starts or ended)."""
        self.report_cond = threading.Condition()
        self.subscriptions: dict[int, int] = {}  # stream handle -> report thread id
        self.report_queues: dict[int, deque] = {}  # report thread id -> ready callbacks
        self.callback_tasks: dict[int, tuple] = {}  # marker task id -> callback entry
        self.blocking_markers: set[int] = set()  # markers of blocking callbacks not returned
        # (waiting track, wait task id, awaited track, record task id) of waits held in the client
        self.held_waits: list[tuple[StreamTrack, int, StreamTrack, int]] = []

    @api()
    def subscribe_report(self, thread_id: Any, stream: Any) -> None:
        """Let the thread ``thread_id`` run the stream's host callbacks; 100033 if taken."""
        thread_id = int_arg(thread_id, "thread id")
        found = self.state.stream(stream)
        with self.report_cond:
            if found.handle in self.subscriptions:
                raise AclError("stream already subscribed", ACL_ERROR_REPEAT_SUBSCRIBE)
            self.subscriptions[found.handle] = thread_id
            self.report_queues.setdefault(thread_id, deque())

    @api()
    def unsubscribe_report(self, thread_id: Any, stream: Any) -> None:
        """Undo subscribe_report; 100000 if the thread did not subscribe to the stream."""
        thread_id = int_arg(thread_id, "thread id")
        found = self.state.stream(stream)
        with self.report_cond:
            if self.subscriptions.get(found.handle) != thread_id:
                raise AclError("stream not subscribed by this thread", ACL_ERROR_INVALID_PARAM)
            del self.subscriptions[found.handle]
            if thread_id not in self.subscriptions.values() and not self.report_queues.get(
                thread_id
            ):
                self.report_queues.pop(thread_id, None)  # nothing left for that thread

    @api()
    def launch_callback(self, fn: Any, user_data: Any, block: Any, stream: Any) -> None:
        """Queue ``fn(user_data)`` on the stream (block 1 holds later tasks); 107015: no thread."""
        block = int_arg(block, "block")
        if not callable(fn) or block not in (0, 1):
            raise AclError(
                "launch_callback needs a callable and block 0 or 1", ACL_ERROR_INVALID_PARAM
            )
        found = self.state.stream(stream)
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
            if block:
                self.blocking_markers.add(task_id)
            self.callback_tasks[task_id] = (thread_id, fn, user_data, block, track)

        self.state.require().submit(track, {"k": TaskKind.RECORD}, registered)

    # -- hooks (registered with the state) ---------------------------------------------------
    def task_settled(self, task_id: int, code: int, track: StreamTrack) -> None:
        """A task ended (under session.cond): a marker's callback becomes ready to run."""
        entry = self.callback_tasks.pop(task_id, None)
        if entry is None:
            return
        with self.report_cond:
            self.report_queues.setdefault(entry[0], deque()).append((task_id, code, *entry[1:]))
            self.report_cond.notify_all()

    def device_lost(self, device_id: int) -> None:
        """The card (or the farm) is lost: no sync of its streams waits for a host callback any
        more (a ``-1`` sync ends with 507010, as every wait on a lost card does), and the tasks
        held behind a blocking callback, already failed with 507010, are never sent. A callback
        still queued for its report thread runs (or is dropped) as usual."""
        state = self.state
        session = state.session
        if session is None:
            return
        tracks = [s.track for s in list(state.streams.values()) if s.track.device_id == device_id]
        with session.cond:
            for track in tracks:
                self.blocking_markers.difference_update(track.host_pending)
                track.host_pending.clear()
                track.held = None
                track.gate_next = False
            self.held_waits = [w for w in self.held_waits if w[0].device_id != device_id]
            session.cond.notify_all()

    # -- a stream_wait_event on a record held behind a blocking callback ---------------------
    def hold_wait(self, track: StreamTrack, task_id: int, awaited: StreamTrack, record: int):
        """(under session.cond, as the wait task registers) A record still held in this client
        behind a blocking callback has not reached the card, which would let a wait for it
        pass at once: hold the waiting stream's tasks, from this wait on, until it is sent."""
        if not _is_held(awaited, record):
            return
        if track.held is None:
            track.held = []
        track.gate_next = HELD_FOR_RECORD
        self.held_waits.append((track, task_id, awaited, record))

    def _release_held_waits(self) -> None:
        """Let go of the held waits whose records have been sent; a wait at the head of its
        stream's held tasks, with no blocking callback of that stream running, sends them."""
        session = self.state.session
        while session is not None and self.held_waits:
            ready = []
            with session.cond:
                for entry in list(self.held_waits):
                    track, task_id, awaited, record = entry
                    if _is_held(awaited, record):
                        continue
                    self.held_waits.remove(entry)
                    for index, (task, _) in enumerate(track.held or ()):
                        if task["t"] == task_id:
                            track.held[index] = (task, False)
                            if index == 0 and not self._callback_holds(track):
                                ready.append(track)
                            break
            if not ready:
                return
            for track in ready:  # may send records other held waits wait for: look again
                session.host_done(track, 0, release=True)

    def _callback_holds(self, track: StreamTrack) -> bool:
        """A blocking callback of ``track`` whose marker was sent has not returned yet."""
        unsent = {task["t"] for task, _ in track.held or ()}
        return any(m in self.blocking_markers and m not in unsent for m in track.host_pending)

    @api()
    def process_report(self, timeout_ms: Any) -> None:
        """Run the ready callbacks of the streams this thread subscribed to; 507012 if none
        became ready within ``timeout_ms`` (-1: wait for one)."""
        timeout_ms = int_arg(timeout_ms, "timeout")
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
            if me not in self.subscriptions.values():
                self.report_queues.pop(me, None)  # its last callbacks: forget the queue
        for task_id, code, fn, user_data, block, track in callbacks:
            try:
                if code == ACL_SUCCESS:
                    # the callback runs after every earlier task of its stream: this thread
                    # may read their results (the vendor's async samples copy them out here)
                    sanitizer = self.state.sanitizer
                    sanitizer.stream_observed(track.device_id, track.stream_id, task_id)
                    if block:  # the stream's later tasks are held until it returns
                        with sanitizer.blocking_callback(track.device_id, track.stream_id, task_id):
                            fn(user_data)
                    else:
                        fn(user_data)
                else:
                    logger.warning("callback dropped: its stream failed with %d", code)
            except Exception:  # the user's callback must not kill the report thread
                logger.exception("host callback %r raised", fn)
            finally:
                self.blocking_markers.discard(task_id)
                self.state.require().host_done(track, task_id, release=bool(block))
                self._release_held_waits()
