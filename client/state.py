"""The ACL state of one process, shared by reference by every part of the runtime.

:class:`RuntimeState` holds what the parts of ``client.AclRuntime`` share: the session, the
devices, contexts, streams, events, models and allocations, the handle tables, host and device
memory, the sanitizer, and the task bookkeeping every submit goes through (poisoning, pending
reads). Each part (:mod:`client.devices`, :mod:`client.streams`, :mod:`client.memops`,
:mod:`client.models`, :mod:`client.callbacks`, :mod:`client.exceptions`, :mod:`client.dynamic`)
is given this object by reference; a part that reacts to task completions, card losses or a new
session registers a hook here (``settle_hooks``, ``lost_hooks``, ``reset_hooks``).

State changes happen under one re-entrant lock (``lock``); waits happen on the session's
condition with that lock released: nothing holds ``lock`` across a request to the farm.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from client.conventions import int_arg
from client.embedded import EmbeddedFarm
from client.handles import HandleTables
from client.memory import AllocationTable, HostPool, LocalShmMemory, poison_fill
from client.poison import PendingReads, overlaps, spans_of
from client.records import Context, DeviceState, Event, LoadedModel, Stream
from client.sanitizer import Sanitizer
from client.session import Session
from client.tracks import StreamTrack
from client.visible import DeviceView, device_view
from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_ID_INVALID,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_CONTEXT_NULL,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_UNINITIALIZE,
    ACL_SUCCESS,
    AclError,
    NpuFarmError,
)
from device.memory import decode_ptr

__all__ = ["RuntimeState", "SettleHook"]

logger = logging.getLogger(__name__)

SettleHook = Callable[[int, int, StreamTrack], None]
"""``(task id, code, track)`` of a task that ended; called under the session's condition."""

_FIRST_HANDLE, _HANDLE_STEP = 0x5000_0000_0010, 16
_MAX_TASK_PLANS = 4096


class RuntimeState:
    """All ACL state of this process. One instance per process (``client.RUNTIME.state``)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.session: Session | None = None
        self.embedded: EmbeddedFarm | None = None
        self.finalized_once = False
        self.last_ledger: dict | None = None  # the client ledger of the last finalized session
        self.last_findings: list = []  # the sanitizer findings of the last finalized session
        # the other parts' hooks, registered once by client.runtime.AclRuntime
        self.settle_hooks: list[SettleHook] = []
        self.lost_hooks: list[Callable[[int], None]] = []  # (device id) lost; outside cond
        self.reset_hooks: list[Callable[[], None]] = []  # a session starts or ended
        self.tls = threading.local()
        self.reset()

    def reset(self) -> None:
        """Forget every handle and table of the session (at init and finalize)."""
        # handles restart with each acl.init, as in a new process (replays compare them)
        self.ids = itertools.count(_FIRST_HANDLE, _HANDLE_STEP)
        self.devices: dict[int, DeviceState] = {}
        self.contexts: dict[int, Context] = {}
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.allocations = AllocationTable()
        self.models: dict[int, LoadedModel] = {}
        self.model_ids = itertools.count(1)  # never reused in a session (no retired-id set)
        self.sync_tracks: dict[int, StreamTrack] = {}
        self.record_times: dict[int, float | None] = {}  # record task id -> card end time
        self.refs_cache: dict[tuple, tuple] = {}
        self.task_plans: dict[tuple, tuple] = {}  # see task_plan
        self.poison_outputs = False  # skip_sync == "poison" (set at init)
        self.sanitizer = Sanitizer("off")
        self.pending_reads = PendingReads()  # byte ranges pending tasks read (poison)
        self.memory = LocalShmMemory()
        self.host: HostPool | None = None
        self.handles = HandleTables()
        self.tls = threading.local()
        self.view = DeviceView(())  # the devices this process sees (set at acl.init)
        for hook in self.reset_hooks:
            hook()

    # -- the session -----------------------------------------------------------------------
    def start_session(self, session: Session, embedded: EmbeddedFarm | None) -> None:
        """Adopt a new session (caller holds the lock, after :meth:`reset`): the handle
        tables, pinned host memory, poisoning and sanitizer it asks for, and the hooks it
        calls back."""
        self.session, self.embedded = session, embedded
        # CANN reads ASCEND_RT_VISIBLE_DEVICES when its runtime starts; we read it at each init
        self.view = device_view(session.farm["cards"])
        if self.view.restricted:
            logger.info("visible devices (%s): cards %s", self.view.setting, self.view.cards)
        extensions: set[int] = set()
        for card in session.farm["cards"].values():
            extensions.update(card.get("exec_config_extensions", ()))
        self.handles = HandleTables(extensions)
        self.host = HostPool(session.farm["farm_id"], on_free=self.host_freed)
        self.poison_outputs = session.farm.get("skip_sync", "poison") == "poison"
        mode = os.environ.get("NPUFARM_SANITIZER") or session.farm.get("sanitizer")
        self.sanitizer = Sanitizer(mode or "off")
        session.on_settle = self.task_settled
        session.on_lost = self.device_lost
        session.devices_in_use = self.memory.devices

    def end_session(self) -> None:
        """Release everything of the session (caller holds the lock); the ledger and the
        sanitizer findings stay readable (``last_ledger``, ``last_findings``)."""
        self.finalized_once = True
        self.report_findings()
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
        self.reset()

    def report_findings(self) -> None:
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

    def host_freed(self, name: str) -> None:
        """A pinned segment was unlinked and closed here: every card this process uses lets go
        of its mapping (``detach_host``; one-way, the card answers 0)."""
        session = self.session
        if session is None:
            return
        for device_id in self.memory.devices():
            session.notify_card(device_id, "detach_host", name=name)

    def require(self) -> Session:
        session = self.session
        if session is None:
            raise AclError("acl.init has not been called", ACL_ERROR_UNINITIALIZE)
        return session

    # -- errors ----------------------------------------------------------------------------
    def note_error(self, call: str, exc: NpuFarmError) -> None:
        """Keep the text of a failed call for ``get_recent_err_msg``; with visible devices
        chosen, a text that names a farm card (``card=N``) also says which device it is."""
        text = f"{call}: {exc}"
        if self.view.restricted and exc.card is not None:
            device = self.view.device(exc.card)
            seen = f"device {device} of this process" if device is not None else "not visible"
            text += f" [card {exc.card} is {seen}]"
        self.tls.recent_error = text
        logger.debug("%s failed: %s", call, text)

    def get_recent_err_msg(self) -> str:
        """The text of this thread's last failed call, cleared by the read ("" if none)."""
        message = getattr(self.tls, "recent_error", "")
        self.tls.recent_error = ""
        return message

    # -- contexts and streams --------------------------------------------------------------
    def current_context(self) -> Context:
        self.require()
        context = getattr(self.tls, "context", None)
        if context is None or context.handle not in self.contexts:
            raise AclError(
                "no current context (call set_device or set_context)", ACL_ERROR_RT_CONTEXT_NULL
            )
        return context

    def new_context(self, device_id: int) -> Context:
        """A context with its default stream (caller holds the lock)."""
        context = Context(next(self.ids), device_id)
        context.default_stream = self.new_stream(context)
        self.contexts[context.handle] = context
        return context

    def drop_context(self, context: Context) -> None:
        """Forget a context and its streams (caller holds the lock); the cards forget them."""
        for stream in list(context.streams.values()):
            self.streams.pop(stream.handle, None)
        self.contexts.pop(context.handle, None)
        sync_track = self.sync_tracks.pop(context.handle, None)  # its synchronous executes
        tracks = [s.track for s in context.streams.values()]
        self.forget_card_streams(tracks + ([sync_track] if sync_track else []))
        if getattr(self.tls, "context", None) is context:
            self.tls.context = None

    def new_stream(self, context: Context) -> Stream:
        """A stream of ``context`` (caller holds the lock)."""
        handle = next(self.ids)
        stream = Stream(handle, context, StreamTrack(context.device_id, handle))
        context.streams[handle] = stream
        self.streams[handle] = stream
        return stream

    def forget_card_streams(self, tracks: list[StreamTrack]) -> None:
        """The cards forget their entries for these streams once drained (one-way: nothing
        waits; nothing is sent to a lost card, which forgot them anyway)."""
        session = self.session
        for track in tracks if session is not None else ():
            session.notify_card(track.device_id, "destroy_stream", stream=track.stream_id)

    # -- handle lookups --------------------------------------------------------------------
    def stream(self, handle: Any) -> Stream:
        """Resolve a stream handle (0 = the current context's default stream)."""
        if type(handle) is int and handle and self.session is not None:  # the common case
            found = self.streams.get(handle)
            if found is not None:
                return found
        handle = int_arg(handle, "stream")
        if handle == 0:
            return self.current_context().default_stream
        self.require()
        found = self.streams.get(handle)
        if found is None:
            raise AclError(f"unknown or destroyed stream {handle:#x}", ACL_ERROR_RT_PARAM_INVALID)
        return found

    def event(self, handle: Any) -> Event:
        """Resolve an event handle: NULL → 100000 (ACL's not-null check), unknown → 107000."""
        self.require()
        if int_arg(handle, "event") == 0:
            raise AclError("event is NULL", ACL_ERROR_INVALID_PARAM)
        found = self.events.get(int_arg(handle, "event"))
        if found is None:
            raise AclError(f"unknown or destroyed event {handle}", ACL_ERROR_RT_PARAM_INVALID)
        return found

    def model(self, model_id: Any) -> LoadedModel:
        """Resolve a model id; unknown → 145003."""
        if type(model_id) is int and self.session is not None:  # the common case
            found = self.models.get(model_id)
            if found is not None:
                return found
        self.require()
        found = self.models.get(int_arg(model_id, "model id"))
        if found is None:
            raise AclError(f"unknown model id {model_id}", ACL_ERROR_GE_EXEC_MODEL_ID_INVALID)
        return found

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

    # -- task bookkeeping (poisoning, sanitizer) ---------------------------------------------
    def task_plan(self, writes: list, reads: list, tensors: tuple = ()) -> tuple:
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
            if len(self.task_plans) > _MAX_TASK_PLANS:
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
        on_send: Callable[[], None] | None = None,
    ) -> int:
        """Submit ``task`` and remember which byte ranges it reads until it completes
        (``plan``: its :meth:`task_plan`, if the caller has it; ``on_send``: see
        :meth:`Session.submit`)."""
        spans = (plan or self.task_plan(writes, reads))[0]
        pending_reads, sanitizer = self.pending_reads, self.sanitizer
        registered: Callable[[int], None] | None = None  # under session.cond, before any end
        if sanitizer.enabled:

            def registered(task_id: int) -> None:
                pending_reads.add(task_id, spans)
                sanitizer.task_submitted(
                    task_id, track.device_id, track.stream_id, reads, writes, call
                )

        elif spans:

            def registered(task_id: int) -> None:
                pending_reads.add(task_id, spans)

        return self.require().submit(track, task, registered, on_send)

    def task_settled(
        self, task_id: int, code: int, track: StreamTrack, end_s: float | None
    ) -> None:
        """A task of this process ended (the session's ``on_settle``, under its condition)."""
        if code != ACL_SUCCESS:  # (the sanitizer notes failures only)
            self.sanitizer.task_finished(task_id, code)
        for hook in self.settle_hooks:
            hook(task_id, code, track)
        if task_id in self.record_times:
            self.record_times[task_id] = end_s if code == ACL_SUCCESS else None
        self.pending_reads.done(task_id)

    def device_lost(self, device_id: int) -> None:
        """A card (or the whole farm) was declared lost (the session's ``on_lost``)."""
        for hook in self.lost_hooks:
            hook(device_id)

    def poison_unread(self, plan: tuple) -> None:
        """skip_sync = "poison": fill a task's outputs with NaN / 0xA5 at enqueue (``plan``
        from :meth:`task_plan` with the output tensors), so a read that skips the sync fails
        every run, unless a pending task (or this one) reads any of their bytes."""
        if plan[1]:
            for fill in self.pending_reads.unread(plan[1]):
                fill()
