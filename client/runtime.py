"""The ACL runtime as one process sees it: init/finalize, devices, contexts, task bookkeeping.

Streams and events (:mod:`client.streams`), memory (:mod:`client.memops`) and models
(:mod:`client.models`) are mixins combined with :class:`Runtime` into ``client.AclRuntime``.

Every public method is wrapped by :func:`api`, which turns an :class:`AclError` raised anywhere
below into the return shape pyACL uses (a bare ``ret``, or out-values followed by ``ret``), so the
bodies read as plain Python and raise with the real CANN code on misuse. State changes happen under
one re-entrant lock; waits happen on the session's condition with that lock released.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from client.handles import HandleTables, sync_timeout_error
from client.memory import AllocationTable, HostPool, LocalShmMemory, poison_fill
from client.poison import PendingReads, overlaps, spans_of
from client.sanitizer import Sanitizer, SanitizerError
from client.session import Session, StreamTrack
from core.errors import (
    ACL_ERROR_INVALID_FILE,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_REPEAT_FINALIZE,
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_RT_CONTEXT_NULL,
    ACL_ERROR_RT_INVALID_DEVICEID,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_UNINITIALIZE,
    ACL_SUCCESS,
    AclError,
    NpuFarmError,
)
from core.protocol import BROKER_DEVICE
from device.memory import decode_ptr

__all__ = ["Runtime", "api", "Context", "Stream", "Event"]

logger = logging.getLogger(__name__)

_RUN_MODE_HOST = 1
_DEVICE_STATUS_NORMAL, _DEVICE_STATUS_ABNORMAL = 0, 1  # aclrtDeviceStatus


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
    opening: threading.Lock = field(default_factory=threading.Lock, repr=False)


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
        self._exception_state()  # process-wide: the exception callback outlives a session
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
        self.model_ids = itertools.count(1)  # never reused in a session (no retired-id set)
        self.sync_tracks: dict[int, StreamTrack] = {}
        self.record_times: dict[int, float | None] = {}  # record task id -> card end time
        self.refs_cache: dict[tuple, tuple] = {}
        self.task_plans: dict[tuple, tuple] = {}  # see _task_plan
        self._callback_state()
        self.poison_outputs = False  # skip_sync == "poison" (set at init)
        self.sanitizer = Sanitizer("off")
        self.pending_reads = PendingReads()  # byte ranges pending tasks read (poison)
        self.memory = LocalShmMemory()
        self.host: HostPool | None = None
        self.handles = HandleTables()
        self._tls = threading.local()

    # -- errors ----------------------------------------------------------------------------
    def note_error(self, call: str, exc: NpuFarmError) -> None:
        self._tls.recent_error = f"{call}: {exc}"
        logger.debug("%s failed: %s", call, exc)

    def get_recent_err_msg(self) -> str:
        """The text of this thread's last failed call, cleared by the read ("" if none)."""
        message = getattr(self._tls, "recent_error", "")
        self._tls.recent_error = ""
        return message

    # -- init ------------------------------------------------------------------------------
    @api()
    def init(self, config_path: str | None = None) -> None:
        """Connect to a farm (NPUFARM_ADDRESS, the state file, else an embedded one)."""
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
            self.host = HostPool(self.session.farm["farm_id"], on_free=self._host_freed)
            self.poison_outputs = self.session.farm.get("skip_sync", "poison") == "poison"
            mode = os.environ.get("NPUFARM_SANITIZER") or self.session.farm.get("sanitizer")
            self.sanitizer = Sanitizer(mode or "off")
            self.session.on_settle = self._settled
            self.session.on_lost = self._device_lost
            self.session.devices_in_use = self.memory.devices

    @api()
    def finalize(self) -> None:
        """Release everything of this session; 100037 after an earlier finalize."""
        with self.lock:
            if self.session is None:
                code = (
                    ACL_ERROR_REPEAT_FINALIZE if self.finalized_once else (ACL_ERROR_UNINITIALIZE)
                )
                raise AclError("acl.finalize without a live acl.init", code)
            self.finalized_once = True
            self._report_findings()
            if self.host is not None:
                self.host.close()  # the cards are told before the session ends
            session, self.session = self.session, None
            session.close()  # the broker tells each card to drop this client's memory
            self.last_ledger = session.ledger.as_dict()
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

    def _host_freed(self, name: str) -> None:
        """A pinned segment was unlinked and closed here: every card this process uses lets go
        of its mapping (``detach_host``; one-way, the card answers 0)."""
        session = self.session
        if session is None:
            return
        for device_id in self.memory.devices():
            session.notify_card(device_id, "detach_host", name=name)

    # -- task bookkeeping (poisoning, sanitizer) ---------------------------------------------
    def _task_plan(self, writes: list, reads: list, tensors: tuple = ()) -> tuple:
        """``(byte ranges the task reads, [(range, poison fill)] of its outputs)`` for these
        references; built once per distinct binding and kept until an allocation goes away
        (a pipeline resubmits the same buffers task after task). See :mod:`client.poison`."""
        key = (
            tuple(x for ref in writes for x in ref),
            tuple(x for ref in reads for x in ref),
            tensors,
            self.allocations.generation,
        )
        plan = self.task_plans.get(key)
        if plan is None:
            spans = spans_of(reads)
            fills = []
            if tensors:
                for (ptr, nbytes), tensor in zip(writes, tensors):
                    span = (ptr, ptr + nbytes)
                    if not overlaps(span, spans):  # a task that reads its outputs keeps them
                        fills.append(
                            (span, poison_fill(self.memory.address(ptr), nbytes, tensor.np_dtype))
                        )
            if len(self.task_plans) > 4096:
                self.task_plans.clear()
            plan = self.task_plans[key] = (spans, tuple(fills))
        return plan

    def submit_task(
        self,
        track: StreamTrack,
        task: dict,
        reads: list,
        writes: list,
        call: str,
        plan: tuple | None = None,
    ) -> int:
        """Submit ``task`` and remember which byte ranges it reads until it completes
        (``plan``: its :meth:`_task_plan`, if the caller has it)."""
        spans = (plan or self._task_plan(writes, reads))[0]

        def registered(task_id: int) -> None:  # under session.cond, before any completion
            self.pending_reads.add(task_id, spans)
            self.sanitizer.task_submitted(
                task_id, track.device_id, track.stream_id, reads, writes, call
            )

        return self.require().submit(track, task, registered)

    def _settled(self, task_id: int, code: int, track: StreamTrack, end_s: float | None) -> None:
        self.sanitizer.task_finished(task_id, code)
        if task_id in self.callback_tasks:
            self._callback_settled(task_id, code)
        if task_id in self.record_times:
            self.record_times[task_id] = end_s if code == ACL_SUCCESS else None
        if code != ACL_SUCCESS:
            self._task_failed(task_id, code, track)
        self.pending_reads.done(task_id)

    def poison_unread(self, plan: tuple) -> None:
        """skip_sync = "poison": fill a task's outputs with NaN / 0xA5 at enqueue (``plan``
        from :meth:`_task_plan` with the output tensors), so a read that skips the sync fails
        every run, unless a pending task (or this one) reads any of their bytes."""
        todo = [fill for span, fill in plan[1] if not self.pending_reads.busy(span)]
        for fill in todo:
            fill()

    def require(self) -> Session:
        session = self.session
        if session is None:
            raise AclError("acl.init has not been called", ACL_ERROR_UNINITIALIZE)
        return session

    # -- devices ---------------------------------------------------------------------------
    @api(1)
    def get_device_count(self) -> int:
        """Number of cards in the farm."""
        return len(self.require().farm["cards"])

    def _device_id(self, device_id: Any) -> int:
        device_id = _int(device_id, "device id", ACL_ERROR_RT_INVALID_DEVICEID)
        if device_id not in self.require().farm["cards"]:
            raise AclError(f"no device {device_id}", ACL_ERROR_RT_INVALID_DEVICEID)
        return device_id

    def _device_state(self, device_id: int) -> DeviceState:
        with self.lock:
            state = self.devices.get(device_id)
            if state is None:
                state = self.devices[device_id] = DeviceState(device_id)
            return state

    def _open_device(self, device_id: int) -> DeviceState:
        """The device's state, its HBM attached (the card restarted first after a loss + reset).

        Never called with the runtime lock held: a restart waits for a new card process (up to
        the request timeout), and other devices' calls go on meanwhile. One thread at a time
        opens a given device (``DeviceState.opening``)."""
        session = self.require()
        state = self._device_state(device_id)
        with state.opening:
            card = session.card(device_id)
            if state.needs_restart or (
                card.get("state") == "starting" and device_id not in session.lost
            ):  # a card another process is restarting: the broker answers once it is up
                reply = session.request(BROKER_DEVICE, "restart", device_id=device_id)
                session.attach_card(device_id, reply["card"])
                with self.lock:
                    state.needs_restart = False
            session.check_device(device_id)
            card = session.card(device_id)
            try:
                self.memory.attach(device_id, card["epoch"], card["shm_name"])
            except (OSError, ValueError, KeyError) as exc:  # the card's memory is gone: lost
                session.mark_lost(device_id, f"cannot attach its memory ({exc})")
                raise AclError(
                    f"device {device_id} is lost (its memory is gone)",
                    ACL_ERROR_RT_LOST_HEARTBEAT,
                    card=device_id,
                ) from None
        return state

    @api()
    def set_device(self, device_id: Any) -> None:
        """Bind this thread to a card (its default context); restarts a lost card after a reset."""
        device_id = self._device_id(device_id)
        state = self._open_device(device_id)
        with self.lock:
            if self.devices.get(device_id) is not state:  # finalized meanwhile
                raise AclError("acl.finalize ran during set_device", ACL_ERROR_UNINITIALIZE)
            if state.default_context is None:
                state.default_context = self._new_context(device_id)
            state.refs += 1
            self._tls.context = state.default_context

    @api()
    def reset_device(self, device_id: Any) -> None:
        """Drop one reference; at zero wait for the default stream, release the card."""
        # a lost device (whether this process opened it or not) restarts at the next set_device
        device_id = self._device_id(device_id)
        session = self.require()
        with self.lock:
            state = self.devices.get(device_id)
            if state is None or state.refs == 0:
                if device_id in session.lost:
                    self._device_state(device_id).needs_restart = True
                return
            state.refs -= 1
            if state.refs > 0:
                return
            tracks = [
                c.default_stream.track
                for c in self.contexts.values()
                if c.device_id == device_id and c.default_stream is not None
            ]
        if not (device_id in session.lost or session.broker_lost):
            for track in tracks:  # without the lock: other devices' calls go on
                session.wait(track, track.last_task, session.heartbeat_expiry_s * 4)
        with self.lock:
            if state.refs > 0 or self.devices.get(device_id) is not state:
                return  # set again (or finalized) while this thread waited
            offsets = self._release_device(device_id, state)
            lost = device_id in session.lost or session.broker_lost
        if lost:
            with state.opening:
                state.needs_restart = True
                self.memory.detach(device_id)
            return
        for offset in offsets:  # one-way, in order before any later request to the card
            session.notify_card(device_id, "free", offset=offset)

    def _release_device(self, device_id: int, state: DeviceState) -> list[int]:
        """Drop the device's contexts, allocations and models here (caller holds the lock);
        the card offsets to free."""
        for context in [c for c in self.contexts.values() if c.device_id == device_id]:
            self._drop_context(context)
        offsets = []
        for ptr in self.allocations.on_device(device_id):
            self.allocations.remove(ptr)
            offsets.append(decode_ptr(ptr)[2])
        for model_id in [m for m, model in self.models.items() if model.device_id == device_id]:
            del self.models[model_id]
        state.default_context = None
        state.streams = state.events = 0
        self.sanitizer.forget_device(device_id)
        return offsets

    @api(1)
    def get_device(self) -> int:
        """The current device of this thread."""
        return self.current_context().device_id

    @api(1)
    def query_device_status(self, device_id: Any) -> int:
        """0 normal, 1 abnormal (lost card or lost farm)."""
        device_id = self._device_id(device_id)
        session = self.require()
        abnormal = device_id in session.lost or session.broker_lost
        return _DEVICE_STATUS_ABNORMAL if abnormal else _DEVICE_STATUS_NORMAL

    @api(1)
    def get_run_mode(self) -> int:
        """1 (ACL_HOST): the emulator runs on the host."""
        return _RUN_MODE_HOST

    @api("direct", default="")
    def get_soc_name(self) -> str:
        """The SoC name of the current (else the first) card's profile, e.g. "Ascend910B"."""
        session = self.require()
        context = getattr(self._tls, "context", None)
        device_id = context.device_id if context is not None else min(session.farm["cards"])
        return session.card(device_id).get("soc_name", "")

    @api()
    def synchronize_device(self) -> int:
        """Wait for every stream of the current device; the first task error."""
        return self._sync_device(-1)

    @api()
    def synchronize_device_with_timeout(self, timeout_ms: Any) -> int:
        """As synchronize_device, 507046 after ``timeout_ms`` (-1 forever)."""
        if sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(f"timeout {timeout_ms} ms is invalid", ACL_ERROR_RT_PARAM_INVALID)
        return self._sync_device(int(timeout_ms))

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
        sync_track = self.sync_tracks.pop(context.handle, None)  # its synchronous executes
        tracks = [s.track for s in context.streams.values()]
        self._forget_card_streams(tracks + ([sync_track] if sync_track else []))
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
        """A new context on the device (with its own default stream), made current."""
        device_id = self._device_id(device_id)
        state = self._open_device(device_id)
        with self.lock:
            if self.devices.get(device_id) is not state:  # finalized meanwhile
                raise AclError("acl.finalize ran during create_context", ACL_ERROR_UNINITIALIZE)
            context = self._new_context(device_id)
            self._tls.context = context
            return context.handle

    @api()
    def destroy_context(self, context: Any) -> None:
        """Destroy a context and its streams; unknown handle → 100000."""
        with self.lock:
            found = self.contexts.get(_int(context, "context"))
            if found is None:
                raise AclError(f"unknown context {context}", ACL_ERROR_INVALID_PARAM)
            self._drop_context(found)

    @api()
    def set_context(self, context: Any) -> None:
        """Make a context current for this thread (switches its device)."""
        with self.lock:
            found = self.contexts.get(_int(context, "context"))
        if found is None:
            raise AclError(f"unknown context {context}", ACL_ERROR_INVALID_PARAM)
        self._open_device(found.device_id)
        self._tls.context = found

    @api(1)
    def get_context(self) -> int:
        """The current context; 107002 when there is none."""
        return self.current_context().handle
