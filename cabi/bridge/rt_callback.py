"""Host callbacks and exception infos with C function pointers.

``aclrtLaunchCallback(fn, userData, blockType, stream)`` queues ``fn(userData)``; it runs on
the thread subscribed to the stream with ``aclrtSubscribeReport(threadId, stream)`` when that
thread calls ``aclrtProcessReport``. C programs subscribe with ``pthread_self()`` of their report
thread; the runtime knows a thread by ``threading.get_ident()``, which on Linux *is* that
``pthread_t`` (CPython takes it from ``pthread_self``), also for a C thread that enters the
library. The callback is a plain C call: it may call ACL itself (a D2H copy inside the callback,
as the vendor samples do).

``aclrtSetExceptionInfoCallback(fn)`` registers ``void fn(aclrtExceptionInfo *)``; it runs on
the runtime's exception thread, as for the Python facade, and receives the runtime's info
handle as the ``aclrtExceptionInfo *``, which the ``aclrtGet*FromExceptionInfo`` getters read
(0xFFFFFFFF for an unknown or NULL info). NULL clears the callback.
"""

from __future__ import annotations

import logging
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.registry import CallTable
from client import RUNTIME
from core.errors import ACL_ERROR_INVALID_PARAM, AclError

__all__ = ["CALLS", "HostCallback", "ExceptionCallback", "INFO_INVALID"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

INFO_INVALID = 0xFFFFFFFF
"""What every exception-info getter returns for an unknown info (and what it fails with)."""

CALLBACK_TYPE = "void (*)(void *)"
"""aclrtCallback, and aclrtExceptionInfoCallback (its ``aclrtExceptionInfo *`` is opaque)."""


class HostCallback:
    """A C ``aclrtCallback`` as the runtime calls host callbacks: ``callback(user_data)``."""

    def __init__(self, fn: Any) -> None:
        self.fn = cdata.function(fn, CALLBACK_TYPE)

    def __call__(self, user_data: Any) -> None:
        self.fn(cdata.pointer(cdata.address(user_data)))

    def __repr__(self) -> str:
        return f"HostCallback({self.fn!r})"


class ExceptionCallback:
    """A C ``aclrtExceptionInfoCallback`` as the runtime calls it: ``callback(info handle)``."""

    def __init__(self, fn: Any) -> None:
        self.fn = cdata.function(fn, CALLBACK_TYPE)

    def __call__(self, info: int) -> None:
        self.fn(cdata.pointer(info))

    def __repr__(self) -> str:
        return f"ExceptionCallback({self.fn!r})"


# -- host callbacks --------------------------------------------------------------------------
@CALLS.error
def aclrtSubscribeReport(thread_id: int, stream: Any) -> int:
    """Let the thread ``thread_id`` (a ``pthread_t``) run the stream's callbacks; 100033 if
    the stream is taken."""
    return RUNTIME.subscribe_report(thread_id, cdata.address(stream))


@CALLS.error
def aclrtUnSubscribeReport(thread_id: int, stream: Any) -> int:
    """Undo aclrtSubscribeReport; 100000 if that thread did not subscribe to the stream."""
    return RUNTIME.unsubscribe_report(thread_id, cdata.address(stream))


@CALLS.error
def aclrtLaunchCallback(fn: Any, user_data: Any, block_type: int, stream: Any) -> int:
    """Queue ``fn(userData)`` on the stream (block 1 holds later tasks until it returned);
    NULL fn → 100000, no subscribed thread → 107015."""
    if cdata.address(fn) == 0:
        raise AclError("aclrtLaunchCallback with a NULL fn", ACL_ERROR_INVALID_PARAM)
    return RUNTIME.launch_callback(
        HostCallback(fn), cdata.pointer(cdata.address(user_data)), block_type, cdata.address(stream)
    )


@CALLS.error
def aclrtProcessReport(timeout_ms: int) -> int:
    """Run the ready callbacks of the streams this thread subscribed to; 507012 if none came
    within ``timeout_ms`` (-1: wait for one), 107012 if it subscribed to none."""
    return RUNTIME.process_report(timeout_ms)


# -- exception infos -------------------------------------------------------------------------
@CALLS.error
def aclrtSetExceptionInfoCallback(fn: Any) -> int:
    """Call ``fn(info)`` on the runtime's exception thread when a device task fails or a card
    is lost; NULL clears it."""
    callback = ExceptionCallback(fn) if cdata.address(fn) else None
    return RUNTIME.set_exception_info_callback(callback)


@CALLS.value(INFO_INVALID)
def aclrtGetTaskIdFromExceptionInfo(info: Any) -> int:
    """The failed task's id; 0xFFFFFFFF if the device is abnormal or the info unknown."""
    return RUNTIME.get_task_id_from_exception_info(cdata.address(info))


@CALLS.value(INFO_INVALID)
def aclrtGetStreamIdFromExceptionInfo(info: Any) -> int:
    """The failed task's stream id (low 32 bits of the stream handle)."""
    return RUNTIME.get_stream_id_from_exception_info(cdata.address(info))


@CALLS.value(INFO_INVALID)
def aclrtGetThreadIdFromExceptionInfo(info: Any) -> int:
    """The native id of the thread that submitted to that stream."""
    return RUNTIME.get_thread_id_from_exception_info(cdata.address(info))


@CALLS.value(INFO_INVALID)
def aclrtGetDeviceIdFromExceptionInfo(info: Any) -> int:
    """The device of the failed task (or of the lost card)."""
    return RUNTIME.get_device_id_from_exception_info(cdata.address(info))


@CALLS.value(INFO_INVALID)
def aclrtGetErrorCodeFromExceptionInfo(info: Any) -> int:
    """The failed task's ACL code; 0xFFFFFFFF if the device is abnormal."""
    return RUNTIME.get_error_code_from_exception_info(cdata.address(info))
