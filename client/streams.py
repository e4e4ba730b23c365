"""``acl.rt`` streams and events: creation, synchronization (with the real timeout codes),
queries, and ``stream_wait_event``; the device-wide syncs. A part of the process-wide runtime
(see :mod:`client.runtime`).

A device sync has one deadline for all its streams and takes a task error only when it returns
it; an exec-config timeout (``execute_async_v2``) is set atomically with its submit and consumed
by the stream's next sync of any kind; a query that says "done" lets the querying thread read
without a sync (the sanitizer is told); a destroyed stream is forgotten by its card. A sync
that returns an error leaves its text for the thread's ``get_recent_err_msg`` (which task failed
with what, the timeout, or the lost device).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from client.callbacks import CallbackApi
from client.conventions import api, int_arg
from client.exceptions import TaskErrorNotes
from client.handles import sync_timeout_error
from client.records import Event, Stream
from client.session import Session
from client.state import RuntimeState
from client.tracks import StreamTrack
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_EVENT_SYNC_TIMEOUT,
    ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID,
    ACL_ERROR_RT_INTERNAL_ERROR,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_NO_EVENT_RESOURCE,
    ACL_ERROR_RT_NO_STREAM_RESOURCE,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_RT_STREAM_CONTEXT,
    ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
    ACL_SUCCESS,
    AclError,
)
from core.protocol import TaskKind

__all__ = ["StreamApi"]

logger = logging.getLogger(__name__)

_EXEC_TIMEOUTS = threading.Lock()  # a stream's exec-config timeouts and the submit they follow
_QUEUE_LOCKS: weakref.WeakKeyDictionary[StreamTrack, threading.Lock] = weakref.WeakKeyDictionary()


class StreamApi:
    """Stream, event and sync calls on the shared :class:`RuntimeState`; a
    ``stream_wait_event`` on a record held behind a blocking host callback is held through
    ``callbacks``."""

    def __init__(self, state: RuntimeState, callbacks: CallbackApi) -> None:
        self.state = state
        self.callbacks = callbacks
        self.task_errors = TaskErrorNotes()  # its settle hook is registered by the runtime

    # -- streams ---------------------------------------------------------------------------
    @api(1)
    def create_stream(self) -> int:
        """A new stream on the current context; 207008 past the card's stream limit."""
        state = self.state
        with state.lock:
            context = state.current_context()
            device = state.devices[context.device_id]
            card = state.require().card(context.device_id)
            if device.streams >= card.get("max_streams", 1984):
                raise AclError("stream limit reached", ACL_ERROR_RT_NO_STREAM_RESOURCE)
            device.streams += 1
            return state.new_stream(context).handle

    @api()
    def destroy_stream(self, stream: Any) -> None:
        """Wait for the stream's queued tasks, then destroy it."""
        self._destroy_stream(stream, wait=True)

    @api()
    def destroy_stream_force(self, stream: Any) -> None:
        """Destroy a stream without waiting for its queued tasks."""
        self._destroy_stream(stream, wait=False)

    def _destroy_stream(self, handle: Any, wait: bool) -> None:
        state = self.state
        stream = state.stream(handle)
        if stream is stream.context.default_stream:
            raise AclError("the default stream cannot be destroyed", ACL_ERROR_RT_PARAM_INVALID)
        state.sanitizer.check_destroy_stream(
            stream.track.device_id, stream.track.stream_id, "acl.rt.destroy_stream"
        )
        if wait:
            self.wait_track(stream.track, stream.track.last_task, -1, 0)
        with state.lock:
            stream.context.streams.pop(stream.handle, None)
            if state.streams.pop(stream.handle, None) is None:
                return
            state.devices[stream.context.device_id].streams -= 1
        state.forget_card_streams([stream.track])

    def wait_track(
        self,
        track: StreamTrack,
        task_id: int,
        timeout_ms: int,
        timeout_code: int,
        call: str | None = None,
    ) -> int:
        """Wait for ``task_id`` on ``track``; ``timeout_code`` on expiry, else the track's
        first unreported error (or 507010 if the card was lost). A failure is noted for
        ``get_recent_err_msg`` as ``call``'s (not when ``call`` is None)."""
        session = self.state.require()
        session.check_device(track.device_id)
        timeout_s = None if timeout_ms == -1 else timeout_ms / 1000.0
        started_s = time.monotonic()
        timed_out = not session.wait(track, task_id, timeout_s)
        if timed_out:
            code = timeout_code
        elif track.device_id in session.lost or session.broker_lost:
            code = ACL_ERROR_RT_LOST_HEARTBEAT
        else:
            code = session.take_error(track)
        self.state.sanitizer.stream_synced(track.device_id, track.stream_id, task_id, code)
        _trace_sync(session, track, started_s, code, "stream")
        if call is not None and code != ACL_SUCCESS:
            timed_out_ms = timeout_ms if timed_out else None
            self._note_sync_error(call, track.device_id, code, track, timed_out_ms)
        session.check_device(track.device_id)
        return code

    def _note_sync_error(
        self,
        call: str,
        card: int,
        code: int,
        track: StreamTrack | None,
        timed_out_ms: int | None,
    ) -> None:
        """Keep, for this thread's ``get_recent_err_msg``, what the sync returning ``code`` saw:
        the failed task of ``track``, the timeout (``timed_out_ms``) or the lost device."""
        device = self.state.view.device(card)
        device = card if device is None else device
        if track is None or code == ACL_ERROR_RT_LOST_HEARTBEAT:
            text = f"device {device} was lost: its tasks failed with {code}"
        elif timed_out_ms is not None:
            stream_id = track.stream_id & 0xFFFFFFFF
            text = f"device {device} stream {stream_id} not done within {timed_out_ms} ms"
        else:
            text = self.task_errors.text(track, code, device)
        self.state.note_error(call, AclError(text, code))

    # -- the exec-config timeouts of execute_async_v2 -----------------------------------------
    @staticmethod
    @contextlib.contextmanager
    def exec_config_applies(stream: Stream, config: Any) -> Iterator[None]:
        """Around an ``execute_async_v2`` submit: its exec-config sync timeouts apply to the
        stream's next sync, set atomically with the submit, so a sync on another thread sees
        the task and its timeout together or neither."""
        with _EXEC_TIMEOUTS:
            yield
            stream.sync_timeout_ms = config.stream_sync_timeout_ms
            stream.event_timeout_ms = config.event_sync_timeout_ms

    @staticmethod
    @contextlib.contextmanager
    def one_sync_execute(track: StreamTrack) -> Iterator[None]:
        """Around a synchronous execute (submit + wait) on a context's private queue: one at a
        time per queue (the card runs that FIFO in order anyway), so the error its wait takes
        is its own, not another thread's."""
        with _EXEC_TIMEOUTS:
            lock = _QUEUE_LOCKS.get(track)
            if lock is None:
                lock = _QUEUE_LOCKS[track] = threading.Lock()
        with lock:
            yield

    # -- stream and device syncs -----------------------------------------------------------
    @api()
    def synchronize_stream(self, stream: Any) -> int:
        """Wait for the stream's tasks; their first error, reported once."""
        found = self.state.stream(stream)
        timeout_ms, upto = _take_sync_timeout(found)
        if timeout_ms != -1 and sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(
                f"exec-config stream sync timeout {timeout_ms} ms is invalid",
                ACL_ERROR_RT_PARAM_INVALID,
            )
        return self.wait_track(
            found.track, upto, timeout_ms, ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, "synchronize_stream"
        )

    @api()
    def synchronize_stream_with_timeout(self, stream: Any, timeout_ms: Any) -> int:
        """As synchronize_stream, 507046 after ``timeout_ms`` (-1 forever; 0, < -1 → 107000)."""
        found = self.state.stream(stream)
        if sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(f"timeout {timeout_ms} ms is invalid", ACL_ERROR_RT_PARAM_INVALID)
        _, upto = _take_sync_timeout(found)  # the explicit timeout wins; consumed anyway
        return self.wait_track(
            found.track,
            upto,
            int(timeout_ms),
            ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
            "synchronize_stream_with_timeout",
        )

    @api()
    def synchronize_device(self) -> int:
        """Wait for every stream of the current device; the first task error."""
        return self._sync_device(-1, "synchronize_device")

    @api()
    def synchronize_device_with_timeout(self, timeout_ms: Any) -> int:
        """As synchronize_device, 507046 after ``timeout_ms`` (-1 forever)."""
        if sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(f"timeout {timeout_ms} ms is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._sync_device(int(timeout_ms), "synchronize_device_with_timeout")

    def _sync_device(self, timeout_ms: int, call: str) -> int:
        """Wait for every stream of the current device under **one** deadline: 507046 once it
        passes, taking no error (each stays in its stream for a later sync); else the first
        stream error found, taken once (other streams keep theirs for their next sync)."""
        state = self.state
        session = state.require()
        device_id = state.current_context().device_id
        session.check_device(device_id)
        with state.lock:
            streams = [s for s in state.streams.values() if s.track.device_id == device_id]
        waits = [(stream.track, _take_sync_timeout(stream)[1]) for stream in streams]
        deadline = None if timeout_ms == -1 else time.monotonic() + timeout_ms / 1000.0
        code, failed, timed_out_ms = ACL_SUCCESS, None, None
        for track, upto in waits:
            waited_from_s = time.monotonic()
            remaining = None if deadline is None else max(0.0, deadline - waited_from_s)
            if not session.wait(track, upto, remaining):
                code, failed, timed_out_ms = ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, track, timeout_ms
            _trace_sync(session, track, waited_from_s, code, "device")
            if code != ACL_SUCCESS:
                break
        if code == ACL_SUCCESS and (device_id in session.lost or session.broker_lost):
            code = ACL_ERROR_RT_LOST_HEARTBEAT
        elif code == ACL_SUCCESS:
            for track, _ in waits:
                code = session.take_error(track)
                if code != ACL_SUCCESS:
                    failed = track
                    break
        if code != ACL_SUCCESS:
            self._note_sync_error(call, device_id, code, failed, timed_out_ms)
        state.sanitizer.device_synced(device_id, code)
        session.check_device(device_id)
        return code

    @api(1)
    def stream_query(self, stream: Any) -> int:
        """0 if every task of the stream completed, else 1."""
        found = self.state.stream(stream)
        session = self.state.require()
        track = found.track
        session.check_device(track.device_id)
        with session.cond:  # a host callback not yet returned keeps the stream busy too
            last = track.last_task
            busy = track.blocks(last)
        if not busy:  # this thread saw the stream done: its reads need no further sync
            self.state.sanitizer.stream_observed(track.device_id, track.stream_id, last)
        return 1 if busy else 0

    # -- events ----------------------------------------------------------------------------
    @api(1)
    def create_event(self) -> int:
        """A new event on the current device; 207007 past the card's event limit."""
        state = self.state
        with state.lock:
            context = state.current_context()
            device = state.devices[context.device_id]
            if device.events >= state.require().card(context.device_id).get("max_events", 65535):
                raise AclError("event limit reached", ACL_ERROR_RT_NO_EVENT_RESOURCE)
            device.events += 1
            event = Event(next(state.ids), context.device_id)
            state.events[event.handle] = event
            return event.handle

    @api(1)
    def create_event_with_flag(self, flag: Any) -> int:
        """As create_event (the flag is accepted; every event keeps timestamps)."""
        int_arg(flag, "flag")
        return self.create_event.__wrapped__(self)

    @api()
    def destroy_event(self, event: Any) -> None:
        """Destroy an event (allowed before its record completed)."""
        state = self.state
        with state.lock:
            found = state.event(event)
            del state.events[found.handle]
            self._forget_record(found)
            device = state.devices.get(found.device_id)
            if device is not None and device.events > 0:
                device.events -= 1

    @api()
    def record_event(self, event: Any, stream: Any) -> None:
        """Queue a marker on the stream: the event completes after the stream's earlier tasks."""
        state = self.state
        found, target = state.event(event), state.stream(stream)
        self._forget_record(found)
        found.track = target.track
        found.timeout_ms = target.event_timeout_ms

        def registered(task_id: int) -> None:  # under session.cond, before it can complete
            state.record_times[task_id] = None

        found.task_id = state.require().submit(target.track, {"k": TaskKind.RECORD}, registered)

    def _forget_record(self, event: Event) -> None:
        """Drop the completion time kept for the event's previous record."""
        session = self.state.session
        if event.track is not None and session is not None:
            with session.cond:
                self.state.record_times.pop(event.task_id, None)

    @api(1, default=0.0)
    def event_elapsed_time(self, start: Any, end: Any) -> float:
        """Milliseconds between two completed records on the card's clock; 507000 if one was
        never recorded, 107006 if one has not completed yet.

        Each record's time is the card's completion time of its marker task (the completion
        row's ``end_s``), so the figure is what the card measured, including its modelled
        latency under the farm's ``time_scale``. The codes are CANN's: a never-recorded event
        is the runtime's RT_ERROR_EVENT_RECORDER_NULL (mapped to ACL_ERROR_RT_INTERNAL_ERROR),
        a record still pending has no timestamp (ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID); a NULL
        event is 100000, an unknown or destroyed one 107000 as for the other event calls, a
        lost card 507010. The value is rounded to a C float, as pyACL returns it; ``end``
        before ``start`` gives a negative value (CANN does not check the order)."""
        if int_arg(start, "start event") == 0 or int_arg(end, "end event") == 0:
            raise AclError("event_elapsed_time of a NULL event", ACL_ERROR_INVALID_PARAM)
        state = self.state
        first, last = state.event(start), state.event(end)
        session = state.require()
        if first.track is None or last.track is None:
            # CANN: RT_ERROR_EVENT_RECORDER_NULL, reported as ACL_ERROR_RT_INTERNAL_ERROR
            raise AclError(
                "event_elapsed_time of a never recorded event", ACL_ERROR_RT_INTERNAL_ERROR
            )
        session.check_device(first.track.device_id)
        session.check_device(last.track.device_id)
        with session.cond:
            started = state.record_times.get(first.task_id)
            ended = state.record_times.get(last.task_id)
        if started is None or ended is None:
            raise AclError(
                "event_elapsed_time before both records completed",
                ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID,
            )
        return float(np.float32((ended - started) * 1000.0))  # a C float, as pyACL returns

    @api()
    def synchronize_event(self, event: Any) -> int:
        """Wait until the event's record completed (a never-recorded event returns at once)."""
        found = self.state.event(event)
        if found.timeout_ms != -1 and sync_timeout_error(found.timeout_ms) != ACL_SUCCESS:
            raise AclError("exec-config event sync timeout is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._sync_event(found, found.timeout_ms)

    @api()
    def synchronize_event_with_timeout(self, event: Any, timeout_ms: Any) -> int:
        """As synchronize_event, 507047 after ``timeout_ms`` (-1 forever)."""
        found = self.state.event(event)
        if sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(f"timeout {timeout_ms} ms is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._sync_event(found, int(timeout_ms))

    def _sync_event(self, event: Event, timeout_ms: int) -> int:
        if event.track is None:
            return ACL_SUCCESS  # never recorded: nothing to wait for
        session = self.state.require()
        track = event.track
        session.check_device(track.device_id)
        timeout_s = None if timeout_ms == -1 else timeout_ms / 1000.0
        code = ACL_SUCCESS
        started_s = time.monotonic()
        if not session.wait(track, event.task_id, timeout_s):
            code = ACL_ERROR_RT_EVENT_SYNC_TIMEOUT
        elif track.device_id in session.lost or session.broker_lost:
            code = ACL_ERROR_RT_LOST_HEARTBEAT
        # an event sync reports no task error, so it observes none
        self.state.sanitizer.stream_synced(track.device_id, track.stream_id, event.task_id, code)
        _trace_sync(session, track, started_s, code, "event")
        session.check_device(track.device_id)
        return code

    @api(1)
    def query_event_status(self, event: Any) -> int:
        """1 if the event's record completed (or it was never recorded), else 0."""
        found = self.state.event(event)
        if found.track is None:
            return 1
        session = self.state.require()
        track = found.track
        session.check_device(track.device_id)
        with session.cond:
            busy = track.blocks(found.task_id)
        if not busy:  # covers the tasks before the record, for this thread
            self.state.sanitizer.stream_observed(track.device_id, track.stream_id, found.task_id)
        return 0 if busy else 1

    @api()
    def stream_wait_event(self, stream: Any, event: Any) -> None:
        """Later tasks of the stream wait for the event (107003 across devices)."""
        state = self.state
        target, found = state.stream(stream), state.event(event)
        if found.track is None:
            return  # waiting on a never-recorded event does not block
        if found.track.device_id != target.track.device_id:
            raise AclError(
                "stream_wait_event across devices is not emulated", ACL_ERROR_RT_STREAM_CONTEXT
            )
        track, awaited, record = target.track, found.track.stream_id, found.task_id

        def registered(task_id: int) -> None:  # under session.cond
            self.callbacks.hold_wait(track, task_id, found.track, record)  # a record not yet sent
            # covering the wait covers the awaited stream up to the record
            state.sanitizer.task_waits(task_id, track.device_id, track.stream_id, awaited, record)

        state.require().submit(track, {"k": TaskKind.WAIT, "ws": awaited, "wt": record}, registered)


def _take_sync_timeout(stream: Stream) -> tuple[int, int]:
    """``(exec-config timeout, last task)`` for a sync of the stream: every sync of the
    stream (timed or not, or of its device) consumes the timeout."""
    with _EXEC_TIMEOUTS:
        timeout_ms, stream.sync_timeout_ms = stream.sync_timeout_ms, -1
        return timeout_ms, stream.track.last_task


def _trace_sync(
    session: Session, track: StreamTrack, started_s: float, code: int, what: str
) -> None:
    """Record a sync that waited (more than 50 µs) for the farm's trace."""
    if session.tracing:
        ended_s = time.monotonic()
        if ended_s - started_s > 50e-6:
            span = [track.device_id, track.stream_id, started_s, ended_s, code, what]
            session.sync_spans.append(span)
