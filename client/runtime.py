"""The process-wide ACL runtime: one :class:`RuntimeState` and the parts that implement the
calls on it, composed (each part is given the state by reference).

::

    AclRuntime
      state       RuntimeState      session, devices, contexts, streams, events, models,
                                    allocations, handle tables, memory, task bookkeeping
      devices     DeviceApi         init/finalize, devices, contexts
      callbacks   CallbackApi       host callbacks (hooks: task settled, device lost, reset)
      streams     StreamApi         streams, events, stream and device syncs (uses callbacks;
                                    hook: settled, for the text of a failed task's sync)
      memops      MemoryApi         malloc/free, host memory, memcpy/memset
      models      ModelApi          acl.mdl loading and execution (uses streams)
      dynamic     DynamicShapeApi   dynamic batch / hw / dims
      exceptions  ExceptionApi      the exception-info callback (hooks: settled, lost)
      saturation  SaturationApi     the devices' floating-point overflow mode (hook: reset)

The ``acl`` facade binds ``RUNTIME.<name>`` once, at import: each call name is forwarded to
the part that implements it by the explicit table :data:`FORWARDED`; a few state attributes
that tests and tools read (``session``, ``last_ledger``, ...) are read-only views.
"""

from __future__ import annotations

import logging
from typing import Any

from client.callbacks import CallbackApi
from client.devices import DeviceApi
from client.dynamic import DynamicShapeApi
from client.exceptions import ExceptionApi
from client.memops import MemoryApi
from client.models import ModelApi
from client.saturation import SaturationApi
from client.state import RuntimeState
from client.streams import StreamApi

__all__ = ["AclRuntime", "FORWARDED"]

logger = logging.getLogger(__name__)

FORWARDED: dict[str, tuple[str, ...]] = {
    "state": ("get_recent_err_msg",),
    "devices": (
        "init",
        "finalize",
        "get_device_count",
        "set_device",
        "reset_device",
        "get_device",
        "query_device_status",
        "get_run_mode",
        "get_version",
        "get_soc_name",
        "create_context",
        "destroy_context",
        "set_context",
        "get_context",
    ),
    "streams": (
        "synchronize_device",
        "synchronize_device_with_timeout",
        "create_stream",
        "destroy_stream",
        "destroy_stream_force",
        "synchronize_stream",
        "synchronize_stream_with_timeout",
        "stream_query",
        "create_event",
        "create_event_with_flag",
        "destroy_event",
        "record_event",
        "synchronize_event",
        "synchronize_event_with_timeout",
        "query_event_status",
        "stream_wait_event",
        "event_elapsed_time",
    ),
    "memops": (
        "malloc",
        "free",
        "malloc_host",
        "free_host",
        "memcpy",
        "memcpy_async",
        "memset",
        "memset_async",
        "get_mem_info",
    ),
    "callbacks": ("subscribe_report", "unsubscribe_report", "launch_callback", "process_report"),
    "exceptions": (
        "set_exception_info_callback",
        "get_task_id_from_exception_info",
        "get_stream_id_from_exception_info",
        "get_thread_id_from_exception_info",
        "get_device_id_from_exception_info",
        "get_error_code_from_exception_info",
    ),
    "saturation": ("set_device_sat_mode", "get_device_sat_mode"),
    "models": (
        "load_from_file",
        "load_from_mem",
        "unload",
        "get_desc",
        "get_aipp_type",
        "get_first_aipp_info",
        "get_aipp_data_size",
        "execute",
        "execute_async",
        "execute_v2",
        "execute_async_v2",
    ),
    "dynamic": (
        "get_dynamic_batch",
        "get_dynamic_hw",
        "get_input_dynamic_gear_count",
        "get_input_dynamic_dims",
        "set_dynamic_batch_size",
        "set_dynamic_hw_size",
        "set_input_dynamic_dims",
    ),
}
"""Part attribute -> the call names ``AclRuntime`` forwards to it."""


class _View:
    """A read-only view of a part's attribute, read at each access (the state's session,
    host pool and handle tables are replaced with each ``acl.init``)."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, runtime: Any, owner: type | None = None) -> Any:
        if runtime is None:
            return self
        return getattr(getattr(runtime, self.part), self.name)

    def __set__(self, runtime: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is read-only here: set {self.part}.{self.name}")


class AclRuntime:
    """Every ACL call of one process: the shared state and its parts, with each call name of
    :data:`FORWARDED` bound to the part that implements it."""

    session = _View("state")
    host = _View("state")
    handles = _View("state")
    last_ledger = _View("state")
    last_findings = _View("state")
    sync_tracks = _View("state")
    record_times = _View("state")
    exception_reporter = _View("exceptions")

    def __init__(self) -> None:
        self.state = state = RuntimeState()
        self.devices = DeviceApi(state)
        self.callbacks = CallbackApi(state)
        self.streams = StreamApi(state, self.callbacks)
        self.memops = MemoryApi(state)
        self.models = ModelApi(state, self.streams)
        self.dynamic = DynamicShapeApi(state)
        self.exceptions = ExceptionApi(state)
        self.saturation = SaturationApi(state)
        state.settle_hooks += [
            self.callbacks.task_settled,
            self.exceptions.task_settled,
            self.streams.task_errors.task_settled,
        ]
        # the callbacks stop holding syncs before the loss is reported
        state.lost_hooks += [self.callbacks.device_lost, self.exceptions.device_lost]
        state.reset_hooks += [self.callbacks.reset, self.saturation.reset]
        for part_name, names in FORWARDED.items():
            part = getattr(self, part_name)
            for name in names:
                if name in vars(self):
                    raise ValueError(f"{name} is forwarded twice")
                setattr(self, name, getattr(part, name))
