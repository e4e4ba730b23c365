"""The ACL runtime as one process sees it: devices, contexts, streams, events, memory.

Every public method is wrapped by :func:`api`, which turns an :class:`AclError` raised anywhere
below into the return shape pyACL uses (a bare ``ret``, or out-values followed by ``ret``), so the
bodies read as plain Python and raise with the real CANN code on misuse. State changes happen under
one re-entrant lock; waits happen on the session's condition with that lock released.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from client.handles import HandleTables, sync_timeout_error
from client.memory import AllocationTable, HostPool, LocalShmMemory, poison
from client.sanitizer import Sanitizer, SanitizerError
from client.session import Session, StreamTrack
from device.memory import decode_ptr, encode_ptr, is_device_ptr
from farm.errors import (
    ACL_ERROR_INVALID_FILE,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_REPEAT_FINALIZE,
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_RT_CONTEXT_NULL,
    ACL_ERROR_RT_EVENT_SYNC_TIMEOUT,
    ACL_ERROR_RT_INVALID_DEVICEID,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_NO_EVENT_RESOURCE,
    ACL_ERROR_RT_NO_STREAM_RESOURCE,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_RT_STREAM_CONTEXT,
    ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
    ACL_ERROR_UNINITIALIZE,
    ACL_SUCCESS,
    AclError,
    NpuFarmError,
)
from farm.protocol import BROKER_DEVICE, TaskKind

__all__ = ["Runtime", "api", "Context", "Stream", "Event"]

logger = logging.getLogger(__name__)

_H2H, _H2D, _D2H, _D2D, _DEFAULT = range(5)
_RUN_MODE_HOST = 1


def api(out: int | str = 0, *, default: Any = 0) -> Callable:
    """Wrap a runtime method into pyACL's return shape.

    ``out=0``: returns ``ret``. ``out=n``: the method returns n values; the call returns them
    followed by ``ret`` (``default`` for each on failure). ``out="direct"``: the method's value is
    returned as is, ``default`` on failure (pyACL calls whose C form returns a pointer or size).
    """

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self: Runtime, *args: Any, **kwargs: Any) -> Any:
            try:
                result = method(self, *args, **kwargs)
            except SanitizerError:
                raise  # sanitizer = "raise": the offending call raises in the caller
            except NpuFarmError as exc:
                self.note_error(method.__name__, exc)
                if out == 0:
                    return exc.code
                if out == "direct":
                    return default
                return (*([default] * out), exc.code) if out > 1 else (default, exc.code)
            except (TypeError, ValueError, OverflowError) as exc:
                self.note_error(method.__name__, AclError(str(exc), ACL_ERROR_INVALID_PARAM))
                if out == 0:
                    return ACL_ERROR_INVALID_PARAM
                if out == "direct":
                    return default
                return (
                    (*([default] * out), ACL_ERROR_INVALID_PARAM)
                    if out > 1
                    else (default, ACL_ERROR_INVALID_PARAM)
                )
            if out == 0:
                return ACL_SUCCESS if result is None else result
            if out == "direct":
                return result
            return (*result, ACL_SUCCESS) if out > 1 else (result, ACL_SUCCESS)

        call.acl_api = True
        return call

    return wrap


def _int(value: Any, what: str, code: int = ACL_ERROR_INVALID_PARAM) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import operator

            return operator.index(value)
        except TypeError:
            raise AclError(f"{what} must be an int, got {type(value).__name__}", code) from None
    return value


@dataclass(eq=False)
class Stream:
    handle: int
    context: Context
    track: StreamTrack
    sync_timeout_ms: int = -1  # exec config of execute_async_v2 since the last sync
    event_timeout_ms: int = -1


@dataclass(eq=False)
class Context:
    handle: int
    device_id: int
    default_stream: Stream | None = None
    streams: dict[int, Stream] = field(default_factory=dict)


@dataclass(eq=False)
class Event:
    handle: int
    device_id: int
    track: StreamTrack | None = None
    task_id: int = 0
    timeout_ms: int = -1


@dataclass
class DeviceState:
    device_id: int
    refs: int = 0
    default_context: Context | None = None
    streams: int = 0
    events: int = 0
    needs_restart: bool = False


class Runtime:
    """All ACL state of this process. One instance per process (``client.RUNTIME``)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.session: Session | None = None
        self.embedded = None
        self.finalized_once = False
        self.last_ledger: dict | None = None  # the client ledger of the last finalized session
        self.last_findings: list = []  # the sanitizer findings of the last finalized session
        self._tls = threading.local()
        self._reset_state()

    def _reset_state(self) -> None:
        # handles restart with each acl.init, as in a new process (replays compare them)
        self._ids = itertools.count(0x5000_0000_0010, 16)
        self.devices: dict[int, DeviceState] = {}
        self.contexts: dict[int, Context] = {}
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.allocations = AllocationTable()
        self.models: dict[int, Any] = {}
        self.retired_model_ids: set[int] = set()
        self.sync_tracks: dict[int, StreamTrack] = {}
        self.refs_cache: dict[tuple, tuple] = {}
        self.poison_outputs = False  # skip_sync == "poison" (set at init)
        self.sanitizer = Sanitizer("off")
        self.task_lock = threading.Lock()  # pending_reads; taken inside session.cond only
        self.pending_reads: dict[int, int] = {}  # allocation start -> pending tasks reading it
        self.reads_of: dict[int, list[int]] = {}  # task id -> allocation starts it reads
        self.memory = LocalShmMemory()
        self.host: HostPool | None = None
        self.handles = HandleTables()
        self._tls = threading.local()

    # -- errors ----------------------------------------------------------------------------
    def note_error(self, call: str, exc: NpuFarmError) -> None:
        self._tls.recent_error = f"{call}: {exc}"
        logger.debug("%s failed: %s", call, exc)

    def get_recent_err_msg(self) -> str:
        message = getattr(self._tls, "recent_error", "")
        self._tls.recent_error = ""
        return message

    # -- init ------------------------------------------------------------------------------
    @api()
    def init(self, config_path: str | None = None) -> None:
        with self.lock:
            if self.session is not None:
                raise AclError("acl.init called twice", ACL_ERROR_REPEAT_INITIALIZE)
            if config_path and not os.path.isfile(config_path):
                raise AclError(f"acl.init config {config_path!r} not found", ACL_ERROR_INVALID_FILE)
            from client.embedded import connect  # local: the embedded farm is optional

            self._reset_state()
            self.session, self.embedded = connect()
            extensions: set[int] = set()
            for card in self.session.farm["cards"].values():
                extensions.update(card.get("exec_config_extensions", ()))
            self.handles = HandleTables(extensions)
            self.host = HostPool(self.session.farm["farm_id"])
            self.poison_outputs = self.session.farm.get("skip_sync", "poison") == "poison"
            mode = os.environ.get("NPUFARM_SANITIZER") or self.session.farm.get("sanitizer")
            self.sanitizer = Sanitizer(mode or "off")
            self.session.on_settle = self._settled

    @api()
    def finalize(self) -> None:
        with self.lock:
            if self.session is None:
                code = (
                    ACL_ERROR_REPEAT_FINALIZE if self.finalized_once else (ACL_ERROR_UNINITIALIZE)
                )
                raise AclError("acl.finalize without a live acl.init", code)
            session, self.session = self.session, None
            self.finalized_once = True
            self._report_findings()
            session.close()  # the broker tells each card to drop this client's memory
            self.last_ledger = session.ledger.as_dict()
            if self.host is not None:
                self.host.close()
            self.memory.close()
            self.handles.clear()
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None
            self._reset_state()

    def _report_findings(self) -> None:
        """Sanitizer summary at finalize: logged, and written as JSON where
        ``NPUFARM_SANITIZER_JSON`` says."""
        if not self.sanitizer.enabled:
            self.last_findings = []
            return
        self.last_findings = self.sanitizer.finalize()
        if self.last_findings:
            logger.warning("npufarm sync sanitizer:\n%s", self.sanitizer.summary())
        path = os.environ.get("NPUFARM_SANITIZER_JSON")
        if path:
            self.sanitizer.export(path)

    # -- task bookkeeping (poisoning, sanitizer) ---------------------------------------------
    def submit_task(self, track: StreamTrack, task: dict, reads: list, writes: list,
                    call: str) -> int:  # fmt: skip
        """Submit ``task`` and remember which allocations it reads until it completes."""
        starts = [self._allocation_start(ptr) for ptr, _ in reads]

        def registered(task_id: int) -> None:  # under session.cond, before any completion
            with self.task_lock:
                self.reads_of[task_id] = starts
                for start in starts:
                    self.pending_reads[start] = self.pending_reads.get(start, 0) + 1
            self.sanitizer.task_submitted(
                task_id, track.device_id, track.stream_id, reads, writes, call
            )

        return self.require().submit(track, task, registered)

    def _settled(self, task_id: int, code: int) -> None:
        self.sanitizer.task_finished(task_id, code)
        with self.task_lock:
            for start in self.reads_of.pop(task_id, ()):
                left = self.pending_reads.get(start, 1) - 1
                if left:
                    self.pending_reads[start] = left
                else:
                    self.pending_reads.pop(start, None)

    def _allocation_start(self, ptr: int) -> int:
        with self.lock:
            found = self.allocations.find(ptr)
        return found[0] if found is not None else ptr

    def poison_unread(self, writes: list, reads: list, tensors: tuple) -> None:
        """skip_sync = "poison": fill a task's outputs with NaN / 0xA5 at enqueue, so a read
        that skips the sync fails every run, unless a pending task (or this one) reads them."""
        own = {self._allocation_start(ptr) for ptr, _ in reads}
        with self.task_lock:
            busy = own | self.pending_reads.keys()
        for (ptr, nbytes), tensor in zip(writes, tensors):
            if self._allocation_start(ptr) not in busy:
                poison(self.memory.address(ptr), nbytes, tensor.np_dtype)

    def require(self) -> Session:
        session = self.session
        if session is None:
            raise AclError("acl.init has not been called", ACL_ERROR_UNINITIALIZE)
        return session

    # -- devices ---------------------------------------------------------------------------
    @api(1)
    def get_device_count(self) -> int:
        return len(self.require().farm["cards"])

    def _device_id(self, device_id: Any) -> int:
        device_id = _int(device_id, "device id", ACL_ERROR_RT_INVALID_DEVICEID)
        if device_id not in self.require().farm["cards"]:
            raise AclError(f"no device {device_id}", ACL_ERROR_RT_INVALID_DEVICEID)
        return device_id

    def _open_device(self, device_id: int) -> DeviceState:
        """The device's state, attaching its HBM (and restarting it after a loss + reset)."""
        session = self.require()
        state = self.devices.get(device_id)
        if state is None:
            state = self.devices[device_id] = DeviceState(device_id)
        if state.needs_restart or (state.refs == 0 and device_id in session.lost):
            reply = session.request(BROKER_DEVICE, "restart", device_id=device_id)
            session.attach_card(device_id, reply["card"])
            state.needs_restart = False
        session.check_device(device_id)
        card = session.card(device_id)
        self.memory.attach(device_id, card["epoch"], card["shm_name"])
        return state

    @api()
    def set_device(self, device_id: Any) -> None:
        with self.lock:
            device_id = self._device_id(device_id)
            state = self._open_device(device_id)
            if state.default_context is None:
                state.default_context = self._new_context(device_id)
            state.refs += 1
            self._tls.context = state.default_context

    @api()
    def reset_device(self, device_id: Any) -> None:
        with self.lock:
            device_id = self._device_id(device_id)
            state = self.devices.get(device_id)
            if state is None or state.refs == 0:
                return
            state.refs -= 1
            if state.refs > 0:
                return
            session = self.require()
            lost = device_id in session.lost or session.broker_lost
            for context in [c for c in self.contexts.values() if c.device_id == device_id]:
                if not lost and context.default_stream is not None:
                    track = context.default_stream.track
                    session.wait(track, track.last_task, session.heartbeat_expiry_s * 4)
                self._drop_context(context)
            for ptr in self.allocations.on_device(device_id):
                self.allocations.remove(ptr)
                if not lost:
                    try:
                        session.request(device_id, "free", offset=decode_ptr(ptr)[2])
                    except AclError as exc:
                        logger.debug("free at reset failed: %s", exc)
            for model_id in [m for m, model in self.models.items() if model.device_id == device_id]:
                del self.models[model_id]
            state.default_context = None
            state.streams = state.events = 0
            self.sanitizer.forget_device(device_id)
            if lost:
                state.needs_restart = True
                self.memory.detach(device_id)

    @api(1)
    def get_device(self) -> int:
        return self.current_context().device_id

    @api(1)
    def query_device_status(self, device_id: Any) -> int:
        device_id = self._device_id(device_id)
        session = self.require()
        return 1 if (device_id in session.lost or session.broker_lost) else 0

    @api(1)
    def get_run_mode(self) -> int:
        return _RUN_MODE_HOST

    @api("direct", default="")
    def get_soc_name(self) -> str:
        session = self.require()
        context = getattr(self._tls, "context", None)
        device_id = context.device_id if context is not None else min(session.farm["cards"])
        return session.card(device_id).get("soc_name", "")

    @api()
    def synchronize_device(self) -> int:
        return self._sync_device(-1)

    @api()
    def synchronize_device_with_timeout(self, timeout_ms: Any) -> int:
        if sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(f"timeout {timeout_ms} ms is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._sync_device(int(timeout_ms))

    def _sync_device(self, timeout_ms: int) -> int:
        session = self.require()
        device_id = self.current_context().device_id
        with self.lock:
            tracks = [s.track for s in self.streams.values() if s.track.device_id == device_id]
        first_error = ACL_SUCCESS
        for track in tracks:
            code = self._wait_track(
                track, track.last_task, timeout_ms, ACL_ERROR_RT_STREAM_SYNC_TIMEOUT
            )
            if code == ACL_ERROR_RT_STREAM_SYNC_TIMEOUT:
                return code
            first_error = first_error or code
        self.sanitizer.device_synced(device_id, first_error)
        session.check_device(device_id)
        return first_error

    # -- contexts --------------------------------------------------------------------------
    def _new_context(self, device_id: int) -> Context:
        context = Context(next(self._ids), device_id)
        context.default_stream = self._new_stream(context)
        self.contexts[context.handle] = context
        return context

    def _drop_context(self, context: Context) -> None:
        for stream in list(context.streams.values()):
            self.streams.pop(stream.handle, None)
        self.contexts.pop(context.handle, None)
        if getattr(self._tls, "context", None) is context:
            self._tls.context = None

    def current_context(self) -> Context:
        self.require()
        context = getattr(self._tls, "context", None)
        if context is None or context.handle not in self.contexts:
            raise AclError(
                "no current context (call set_device or set_context)", ACL_ERROR_RT_CONTEXT_NULL
            )
        return context

    @api(1)
    def create_context(self, device_id: Any) -> int:
        with self.lock:
            device_id = self._device_id(device_id)
            self._open_device(device_id)
            context = self._new_context(device_id)
            self._tls.context = context
            return context.handle

    @api()
    def destroy_context(self, context: Any) -> None:
        with self.lock:
            found = self.contexts.get(_int(context, "context"))
            if found is None:
                raise AclError(f"unknown context {context}", ACL_ERROR_INVALID_PARAM)
            self._drop_context(found)

    @api()
    def set_context(self, context: Any) -> None:
        with self.lock:
            found = self.contexts.get(_int(context, "context"))
            if found is None:
                raise AclError(f"unknown context {context}", ACL_ERROR_INVALID_PARAM)
            self._open_device(found.device_id)
            self._tls.context = found

    @api(1)
    def get_context(self) -> int:
        return self.current_context().handle

    # -- streams ---------------------------------------------------------------------------
    def _new_stream(self, context: Context) -> Stream:
        handle = next(self._ids)
        stream = Stream(handle, context, StreamTrack(context.device_id, handle))
        context.streams[handle] = stream
        self.streams[handle] = stream
        return stream

    def stream(self, handle: Any) -> Stream:
        """Resolve a stream handle (0 = the current context's default stream)."""
        handle = _int(handle, "stream")
        if handle == 0:
            return self.current_context().default_stream
        self.require()
        found = self.streams.get(handle)
        if found is None:
            raise AclError(f"unknown or destroyed stream {handle:#x}", ACL_ERROR_RT_PARAM_INVALID)
        return found

    @api(1)
    def create_stream(self) -> int:
        with self.lock:
            context = self.current_context()
            state = self.devices[context.device_id]
            card = self.require().card(context.device_id)
            if state.streams >= card.get("max_streams", 1984):
                raise AclError("stream limit reached", ACL_ERROR_RT_NO_STREAM_RESOURCE)
            state.streams += 1
            return self._new_stream(context).handle

    @api()
    def destroy_stream(self, stream: Any) -> None:
        self._destroy_stream(stream, wait=True)

    @api()
    def destroy_stream_force(self, stream: Any) -> None:
        self._destroy_stream(stream, wait=False)

    def _destroy_stream(self, handle: Any, wait: bool) -> None:
        stream = self.stream(handle)
        if stream is stream.context.default_stream:
            raise AclError("the default stream cannot be destroyed", ACL_ERROR_RT_PARAM_INVALID)
        self.sanitizer.check_destroy_stream(
            stream.track.device_id, stream.track.stream_id, "acl.rt.destroy_stream"
        )
        if wait:
            self._wait_track(stream.track, stream.track.last_task, -1, 0)
        with self.lock:
            stream.context.streams.pop(stream.handle, None)
            if self.streams.pop(stream.handle, None) is not None:
                self.devices[stream.context.device_id].streams -= 1

    def _wait_track(
        self, track: StreamTrack, task_id: int, timeout_ms: int, timeout_code: int
    ) -> int:
        """Wait for ``task_id`` on ``track``; ``timeout_code`` on expiry, else the track's
        first unreported error (or 507010 if the card was lost)."""
        session = self.require()
        session.check_device(track.device_id)
        timeout_s = None if timeout_ms == -1 else timeout_ms / 1000.0
        if not session.wait(track, task_id, timeout_s):
            code = timeout_code
        elif track.device_id in session.lost or session.broker_lost:
            code = ACL_ERROR_RT_LOST_HEARTBEAT
        else:
            code = session.take_error(track)
        self.sanitizer.stream_synced(track.device_id, track.stream_id, task_id, code)
        session.check_device(track.device_id)
        return code

    @api()
    def synchronize_stream(self, stream: Any) -> int:
        found = self.stream(stream)
        timeout_ms, found.sync_timeout_ms = found.sync_timeout_ms, -1  # consumed by this sync
        if timeout_ms != -1 and sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(
                f"exec-config stream sync timeout {timeout_ms} ms is invalid",
                ACL_ERROR_RT_PARAM_INVALID,
            )
        return self._wait_track(
            found.track, found.track.last_task, timeout_ms, ACL_ERROR_RT_STREAM_SYNC_TIMEOUT
        )

    @api()
    def synchronize_stream_with_timeout(self, stream: Any, timeout_ms: Any) -> int:
        found = self.stream(stream)
        if sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(f"timeout {timeout_ms} ms is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._wait_track(
            found.track, found.track.last_task, int(timeout_ms), ACL_ERROR_RT_STREAM_SYNC_TIMEOUT
        )

    @api(1)
    def stream_query(self, stream: Any) -> int:
        found = self.stream(stream)
        self.require().check_device(found.track.device_id)
        return 1 if found.track.pending else 0

    # -- events ----------------------------------------------------------------------------
    def event(self, handle: Any) -> Event:
        self.require()
        found = self.events.get(_int(handle, "event"))
        if found is None:
            raise AclError(f"unknown or destroyed event {handle}", ACL_ERROR_RT_PARAM_INVALID)
        return found

    @api(1)
    def create_event(self) -> int:
        with self.lock:
            context = self.current_context()
            state = self.devices[context.device_id]
            if state.events >= self.require().card(context.device_id).get("max_events", 65535):
                raise AclError("event limit reached", ACL_ERROR_RT_NO_EVENT_RESOURCE)
            state.events += 1
            event = Event(next(self._ids), context.device_id)
            self.events[event.handle] = event
            return event.handle

    @api(1)
    def create_event_with_flag(self, flag: Any) -> int:
        _int(flag, "flag")
        return self.create_event.__wrapped__(self)

    @api()
    def destroy_event(self, event: Any) -> None:
        with self.lock:
            found = self.event(event)
            del self.events[found.handle]
            state = self.devices.get(found.device_id)
            if state is not None and state.events > 0:
                state.events -= 1

    @api()
    def record_event(self, event: Any, stream: Any) -> None:
        found, target = self.event(event), self.stream(stream)
        found.track = target.track
        found.timeout_ms = target.event_timeout_ms
        found.task_id = self.require().submit(target.track, {"k": TaskKind.RECORD})

    @api()
    def synchronize_event(self, event: Any) -> int:
        found = self.event(event)
        if found.timeout_ms != -1 and sync_timeout_error(found.timeout_ms) != ACL_SUCCESS:
            raise AclError("exec-config event sync timeout is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._sync_event(found, found.timeout_ms)

    @api()
    def synchronize_event_with_timeout(self, event: Any, timeout_ms: Any) -> int:
        found = self.event(event)
        if sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(f"timeout {timeout_ms} ms is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._sync_event(found, int(timeout_ms))

    def _sync_event(self, event: Event, timeout_ms: int) -> int:
        if event.track is None:
            return ACL_SUCCESS  # never recorded: nothing to wait for
        session = self.require()
        track = event.track
        session.check_device(track.device_id)
        timeout_s = None if timeout_ms == -1 else timeout_ms / 1000.0
        code = ACL_SUCCESS
        if not session.wait(track, event.task_id, timeout_s):
            code = ACL_ERROR_RT_EVENT_SYNC_TIMEOUT
        elif track.device_id in session.lost or session.broker_lost:
            code = ACL_ERROR_RT_LOST_HEARTBEAT
        # an event sync reports no task error, so it observes none
        self.sanitizer.stream_synced(track.device_id, track.stream_id, event.task_id, code)
        session.check_device(track.device_id)
        return code

    @api(1)
    def query_event_status(self, event: Any) -> int:
        found = self.event(event)
        if found.track is None:
            return 1
        self.require().check_device(found.track.device_id)
        return 0 if found.track.blocks(found.task_id) else 1

    @api()
    def stream_wait_event(self, stream: Any, event: Any) -> None:
        target, found = self.stream(stream), self.event(event)
        if found.track is None:
            return  # waiting on a never-recorded event does not block
        if found.track.device_id != target.track.device_id:
            raise AclError(
                "stream_wait_event across devices is not emulated", ACL_ERROR_RT_STREAM_CONTEXT
            )
        self.require().submit(
            target.track, {"k": TaskKind.WAIT, "ws": found.track.stream_id, "wt": found.task_id}
        )

    # -- memory ----------------------------------------------------------------------------
    @api(1)
    def malloc(self, size: Any, policy: Any) -> int:
        size, policy = _int(size, "size"), _int(policy, "policy")
        if size <= 0 or policy < 0:
            raise AclError(f"malloc size {size} / policy {policy} invalid", ACL_ERROR_INVALID_PARAM)
        session = self.require()
        device_id = self.current_context().device_id
        reply = session.request(device_id, "malloc", size=size)
        ptr = encode_ptr(device_id, session.epochs[device_id], reply["offset"])
        with self.lock:
            self.allocations.add(ptr, size, device_id)
        return ptr

    @api()
    def free(self, ptr: Any) -> None:
        ptr = _int(ptr, "ptr")
        if ptr == 0:
            raise AclError("free of NULL", ACL_ERROR_INVALID_PARAM)
        session = self.require()
        with self.lock:
            size = self.allocations.remove(ptr)
        if size is None:
            raise AclError(f"{ptr:#x} is not a live allocation", ACL_ERROR_RT_PARAM_INVALID)
        device_id = decode_ptr(ptr)[0]
        self.sanitizer.check_free(device_id, ptr, size, "acl.rt.free")
        session.request(device_id, "free", offset=decode_ptr(ptr)[2])

    @api(1)
    def malloc_host(self, size: Any) -> int:
        size = _int(size, "size")
        if size <= 0:
            raise AclError(f"malloc_host size {size} invalid", ACL_ERROR_INVALID_PARAM)
        self.require()
        return self.host.malloc(size)

    @api()
    def free_host(self, ptr: Any) -> None:
        self.require()
        if not self.host.free(_int(ptr, "ptr")):
            raise AclError(f"{ptr} is not pinned host memory", ACL_ERROR_INVALID_PARAM)

    @api(2)
    def get_mem_info(self, attr: Any) -> tuple[int, int]:
        _int(attr, "attr")
        device_id = self.current_context().device_id
        reply = self.require().request(device_id, "mem_info")
        return reply["free"], reply["total"]

    def _device_address(self, ptr: int, nbytes: int) -> int:
        """Validate a device range of this process and return its local address."""
        self.check_device_range(ptr, nbytes)
        return self.memory.address(ptr)

    def check_device_range(self, ptr: int, nbytes: int) -> None:
        """Raise unless ``[ptr, ptr+nbytes)`` lies in one live allocation of this process on a
        device that is not lost, from the device's current epoch."""
        device_id, epoch, _ = decode_ptr(ptr)
        session = self.require()
        session.check_device(device_id)
        if epoch != session.epochs.get(device_id, -1) & 0xFF:
            raise AclError(
                f"{ptr:#x} belongs to an earlier epoch of device {device_id}",
                ACL_ERROR_RT_PARAM_INVALID,
                card=device_id,
            )
        with self.lock:
            if not self.allocations.contains(ptr, nbytes):
                raise AclError(
                    f"{ptr:#x}+{nbytes} is not inside a live allocation",
                    ACL_ERROR_RT_PARAM_INVALID,
                    card=device_id,
                )

    def _copy_plan(self, dst: int, src: int, count: int, kind: int) -> tuple[bool, bool]:
        """Check a copy's direction; return (dst is device, src is device)."""
        dst_dev, src_dev = is_device_ptr(dst), is_device_ptr(src)
        if kind == _DEFAULT:
            return dst_dev, src_dev
        expected = {
            _H2H: (False, False),
            _H2D: (True, False),
            _D2H: (False, True),
            _D2D: (True, True),
        }.get(kind)
        if expected is None:
            raise AclError(f"memcpy kind {kind} invalid", ACL_ERROR_INVALID_PARAM)
        if (dst_dev, src_dev) != expected:
            raise AclError(
                f"memcpy kind {kind} does not match the addresses", ACL_ERROR_RT_PARAM_INVALID
            )
        return expected

    def _copy_args(self, dst: Any, dst_max: Any, src: Any, count: Any, kind: Any):
        dst, dst_max, src = _int(dst, "dst"), _int(dst_max, "dst_max"), _int(src, "src")
        count, kind = _int(count, "count"), _int(kind, "kind")
        if count < 0 or dst_max < 0 or count > dst_max:
            raise AclError(f"count {count} > dst_max {dst_max}", ACL_ERROR_INVALID_PARAM)
        if count and (dst == 0 or src == 0):
            raise AclError("memcpy with a NULL address", ACL_ERROR_INVALID_PARAM)
        dst_dev, src_dev = self._copy_plan(dst, src, count, kind)
        return dst, src, count, dst_dev, src_dev

    @api()
    def memcpy(self, dst: Any, dst_max: Any, src: Any, count: Any, kind: Any) -> None:
        dst, src, count, dst_dev, src_dev = self._copy_args(dst, dst_max, src, count, kind)
        self.require()
        if count == 0:
            return
        dst_addr = self._device_address(dst, count) if dst_dev else dst
        src_addr = self._device_address(src, count) if src_dev else src
        if self.sanitizer.enabled:
            if src_dev:
                self.sanitizer.check_read(decode_ptr(src)[0], src, count, "acl.rt.memcpy")
            if dst_dev:
                self.sanitizer.check_write(decode_ptr(dst)[0], dst, count, "acl.rt.memcpy")
        ctypes.memmove(dst_addr, src_addr, count)  # no stream is waited for: hardware behaviour

    def _shm_ref(self, ptr: int, nbytes: int, is_device: bool) -> list | None:
        if is_device:
            self._device_address(ptr, nbytes)
            return [self.memory.segment_name(decode_ptr(ptr)[0]), decode_ptr(ptr)[2]]
        located = self.host.locate(ptr, nbytes)
        return list(located) if located is not None else None

    @api()
    def memcpy_async(
        self, dst: Any, dst_max: Any, src: Any, count: Any, kind: Any, stream: Any
    ) -> None:
        dst, src, count, dst_dev, src_dev = self._copy_args(dst, dst_max, src, count, kind)
        target = self.stream(stream)
        if count == 0:
            return
        dst_ref = self._shm_ref(dst, count, dst_dev)
        src_ref = self._shm_ref(src, count, src_dev)
        if dst_ref is None or src_ref is None:
            # pageable host memory: the copy completes before the call returns (after the
            # stream's earlier work, which it must follow)
            session = self.require()
            session.wait(target.track, target.track.last_task, None)
            self.memcpy.__wrapped__(self, dst, count, src, count, _DEFAULT)
            return
        task = {"k": TaskKind.COPY, "dst": dst_ref, "src": src_ref, "n": count}
        reads = [(src, count)] if src_dev else []
        self.submit_task(target.track, task, reads, [(dst, count)], "acl.rt.memcpy_async")

    def _memset_args(self, ptr: Any, max_count: Any, value: Any, count: Any):
        ptr, max_count = _int(ptr, "ptr"), _int(max_count, "max")
        value, count = _int(value, "value"), _int(count, "count")
        if ptr == 0 or count < 0 or count > max_count:
            raise AclError(f"memset count {count} > max {max_count}", ACL_ERROR_INVALID_PARAM)
        return ptr, value, count

    @api()
    def memset(self, ptr: Any, max_count: Any, value: Any, count: Any) -> None:
        ptr, value, count = self._memset_args(ptr, max_count, value, count)
        self.require()
        if count:
            address = self._device_address(ptr, count) if is_device_ptr(ptr) else ptr
            if is_device_ptr(ptr):
                self.sanitizer.check_write(decode_ptr(ptr)[0], ptr, count, "acl.rt.memset")
            ctypes.memset(address, value & 0xFF, count)

    @api()
    def memset_async(self, ptr: Any, max_count: Any, value: Any, count: Any, stream: Any) -> None:
        ptr, value, count = self._memset_args(ptr, max_count, value, count)
        target = self.stream(stream)
        ref = self._shm_ref(ptr, count, is_device_ptr(ptr))
        if ref is None:
            raise AclError(
                "memset_async needs device or pinned host memory", ACL_ERROR_RT_PARAM_INVALID
            )
        self.require().submit(
            target.track, {"k": TaskKind.MEMSET, "dst": ref, "n": count, "v": value}
        )
