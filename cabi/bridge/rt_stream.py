"""Streams and events: ``aclrtCreateStream`` ... ``aclrtEventElapsedTime``, forwarded to the
runtime ``acl.rt`` uses. A NULL stream is the current context's default stream, as in CANN.

The status out-parameters use the C enums: ``aclrtStreamStatus`` (0 complete, 1 not ready) is
what the runtime's ``stream_query`` returns; ``aclrtEventRecordedStatus`` (0 not ready,
1 complete) what its ``query_event_status`` returns; the deprecated ``aclrtQueryEvent`` writes
the older ``aclrtEventStatus``, whose values run the other way (0 complete, 1 not ready).
"""

from __future__ import annotations

import logging
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.registry import CallTable
from client import RUNTIME

__all__ = ["CALLS"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

_EVENT_STATUS_COMPLETE, _EVENT_STATUS_NOT_READY = 0, 1  # aclrtEventStatus (deprecated)
_RECORDED_COMPLETE = 1  # aclrtEventRecordedStatus


# -- streams ---------------------------------------------------------------------------------
@CALLS.error
def aclrtCreateStream(stream: Any) -> int:
    """Create a stream on the current context and write it; 207008 past the limit."""
    cdata.require(stream, "stream")
    handle, ret = RUNTIME.create_stream()
    if ret == 0:
        cdata.store("void *", stream, cdata.pointer(handle))
    return ret


@CALLS.error
def aclrtDestroyStream(stream: Any) -> int:
    """Wait for the stream's tasks, then destroy it."""
    return RUNTIME.destroy_stream(cdata.address(stream))


@CALLS.error
def aclrtDestroyStreamForce(stream: Any) -> int:
    """Destroy the stream without waiting for its tasks."""
    return RUNTIME.destroy_stream_force(cdata.address(stream))


@CALLS.error
def aclrtSynchronizeStream(stream: Any) -> int:
    """Wait for the stream's tasks; their first error, reported once."""
    return RUNTIME.synchronize_stream(cdata.address(stream))


@CALLS.error
def aclrtSynchronizeStreamWithTimeout(stream: Any, timeout_ms: int) -> int:
    """As aclrtSynchronizeStream, 507046 after ``timeout_ms`` (-1 forever; 0, < -1 → 107000)."""
    return RUNTIME.synchronize_stream_with_timeout(cdata.address(stream), timeout_ms)


@CALLS.error
def aclrtStreamQuery(stream: Any, status: Any) -> int:
    """Write 0 if every task of the stream completed, else 1."""
    cdata.require(status, "status")
    value, ret = RUNTIME.stream_query(cdata.address(stream))
    if ret == 0:
        cdata.store("int", status, value)
    return ret


@CALLS.error
def aclrtStreamWaitEvent(stream: Any, event: Any) -> int:
    """Later tasks of the stream wait for the event's record."""
    return RUNTIME.stream_wait_event(cdata.address(stream), cdata.address(event))


# -- events ----------------------------------------------------------------------------------
@CALLS.error
def aclrtCreateEvent(event: Any) -> int:
    """Create an event on the current device and write it; 207007 past the limit."""
    cdata.require(event, "event")
    handle, ret = RUNTIME.create_event()
    if ret == 0:
        cdata.store("void *", event, cdata.pointer(handle))
    return ret


@CALLS.error
def aclrtCreateEventWithFlag(event: Any, flag: int) -> int:
    """As aclrtCreateEvent (every event keeps timestamps, whatever the flag)."""
    cdata.require(event, "event")
    handle, ret = RUNTIME.create_event_with_flag(flag)
    if ret == 0:
        cdata.store("void *", event, cdata.pointer(handle))
    return ret


@CALLS.error
def aclrtDestroyEvent(event: Any) -> int:
    """Destroy an event (allowed before its record completed)."""
    return RUNTIME.destroy_event(cdata.address(event))


@CALLS.error
def aclrtRecordEvent(event: Any, stream: Any) -> int:
    """Queue the event's marker on the stream."""
    return RUNTIME.record_event(cdata.address(event), cdata.address(stream))


@CALLS.error
def aclrtSynchronizeEvent(event: Any) -> int:
    """Wait until the event's record completed."""
    return RUNTIME.synchronize_event(cdata.address(event))


@CALLS.error
def aclrtSynchronizeEventWithTimeout(event: Any, timeout_ms: int) -> int:
    """As aclrtSynchronizeEvent, 507047 after ``timeout_ms`` (-1 forever)."""
    return RUNTIME.synchronize_event_with_timeout(cdata.address(event), timeout_ms)


@CALLS.error
def aclrtQueryEventStatus(event: Any, status: Any) -> int:
    """Write 1 (ACL_EVENT_RECORDED_STATUS_COMPLETE) once the record completed, else 0."""
    cdata.require(status, "status")
    value, ret = RUNTIME.query_event_status(cdata.address(event))
    if ret == 0:
        cdata.store("int", status, value)
    return ret


@CALLS.error
def aclrtQueryEvent(event: Any, status: Any) -> int:
    """The deprecated form: write 0 (ACL_EVENT_STATUS_COMPLETE) or 1 (NOT_READY)."""
    cdata.require(status, "status")
    value, ret = RUNTIME.query_event_status(cdata.address(event))
    if ret == 0:
        done = value == _RECORDED_COMPLETE
        cdata.store("int", status, _EVENT_STATUS_COMPLETE if done else _EVENT_STATUS_NOT_READY)
    return ret


@CALLS.error
def aclrtEventElapsedTime(ms: Any, start: Any, end: Any) -> int:
    """Write the milliseconds between two completed records of the card's clock."""
    cdata.require(ms, "ms")
    value, ret = RUNTIME.event_elapsed_time(cdata.address(start), cdata.address(end))
    if ret == 0:
        cdata.store("float", ms, value)
    return ret
