"""The broker's own request ops (``restart``, ``trace``, ``inject``, ``recover``), dispatched
by one table (:attr:`AdminRequests.ops`; an op not in it is answered 100000), plus the background
jobs that keep slow work off the broker's loop.

Why: one bad admin request must never end the farm nor go unanswered. Every body is validated;
any exception while handling one request answers that request with
``{"rid", "code", "error": <one line>}`` (100000 ACL_ERROR_INVALID_PARAM for bad input, 507000
for a farm bug, logged with its traceback) and the loop goes on. Work that can take long (writing
a trace of a million events) runs in a thread; its reply is sent from the loop when it is done,
so the broker keeps heartbeating its cards and clients meanwhile.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from core import protocol as proto
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_INTERNAL_ERROR,
    ACL_ERROR_RT_INVALID_DEVICEID,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ConfigError,
    NpuFarmError,
)
from core.protocol import BROKER_DEVICE, Cmd
from farm.broker_cards import CardControl
from farm.broker_clients import Reply
from farm.broker_faults import FaultControl
from farm.broker_io import Telemetry
from farm.client_table import ClientTable
from farm.registry import CardState, Registry
from farm.trace import TraceRecorder, write_trace_events

__all__ = ["AdminRequests", "Jobs", "error_reply"]

logger = logging.getLogger(__name__)

BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)
#: an op's handler: (client, rid, body) -> the answer, or None when it is answered later
Op = Callable[[bytes, int, dict], dict | None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


def error_reply(exc: BaseException, op: Any = None) -> dict[str, Any]:
    """The reply to a request that raised ``exc``: its ACL code and a one-line error."""
    if isinstance(exc, NpuFarmError):
        return {"code": exc.code, "error": _one_line(exc.args[0] if exc.args else exc)}
    if isinstance(exc, OSError):  # a path the user gave (trace): their input, not our bug
        return {
            "code": ACL_ERROR_INVALID_PARAM,
            "error": _one_line(f"{exc.strerror or exc}: {exc.filename}"),
        }
    if isinstance(exc, KeyError | TypeError | ValueError | OverflowError):
        return {"code": ACL_ERROR_INVALID_PARAM, "error": _one_line(f"bad arguments: {exc!r}")}
    logger.error("broker request %r failed", op, exc_info=exc)
    return {"code": ACL_ERROR_RT_INTERNAL_ERROR, "error": _one_line(repr(exc))}


class Jobs:
    """Work run in threads; ``then(result, exc)`` runs back on the broker loop (which polls
    :attr:`wake_fd` and calls :meth:`finish`)."""

    def __init__(self) -> None:
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()

    def run(self, work: Callable[[], Any], then: Callable[[Any, BaseException | None], None]):
        thread = threading.Thread(
            target=self._run, args=(work, then), name="npufarm-job", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _run(self, work, then) -> None:
        try:
            result, exc = work(), None
        except BaseException as error:  # reported to the requester by ``then``
            result, exc = None, error
        self._done.put((then, result, exc, threading.current_thread()))
        self.wake()

    def wake(self) -> None:
        """Make the loop look at :attr:`wake_fd` (any thread)."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def finish(self) -> None:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                then, result, exc, thread = self._done.get_nowait()
            except queue.Empty:
                return
            self._threads.discard(thread)
            try:
                then(result, exc)
            except Exception:
                logger.exception("job completion failed")

    def close(self, timeout_s: float = 30.0) -> None:
        for thread in list(self._threads):
            thread.join(timeout_s)
        self.finish()
        os.close(self.wake_fd)
        os.close(self._wake_w)


class AdminRequests:
    """The broker's request ops. Each is a method listed in :attr:`ops`; it reads the registry
    and client table, and acts through the cards, the faults and the jobs it is given."""

    def __init__(
        self,
        *,
        started_s: float,
        registry: Registry,
        table: ClientTable,
        cards: CardControl,
        faults: FaultControl,
        jobs: Jobs,
        telemetry: Telemetry,
        reply: Reply,
    ) -> None:
        self.started_s = started_s
        self.registry = registry
        self.table = table
        self.cards = cards
        self.faults = faults
        self.jobs = jobs
        self.telemetry = telemetry
        self.reply = reply
        self.ops: dict[str, Op] = {
            "restart": self.restart,
            "trace": self.trace,
            "inject": self.inject,
            "recover": self.recover,
        }

    def on_request(self, client: bytes, body: Any) -> None:
        if not isinstance(body, dict) or not _is_int(body.get("rid")):
            raise NpuFarmError("broker request without rid")
        rid, op = body["rid"], body.get("op")
        try:
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ConfigError(f"op: unknown broker op {op!r}; known: {', '.join(self.ops)}")
            answer = handler(client, rid, body)
        except Exception as exc:  # one request's failure is that request's answer
            answer = error_reply(exc, op)
        if answer is not None:
            self.reply(client, Cmd.REPLY, BROKER_ROUTE, {"rid": rid, **answer})

    def restart(self, client: bytes, rid: int, body: dict) -> dict | None:
        device_id = body.get("device_id")
        if not _is_int(device_id):
            raise ConfigError(f"device_id: expected an integer, got {device_id!r}")
        if device_id not in self.registry.cards:
            raise NpuFarmError(f"device_id: no card {device_id}", ACL_ERROR_RT_INVALID_DEVICEID)
        self.table.reset(client, device_id)  # a reclaimed client starts afresh there
        entry = self.registry.cards[device_id]
        if entry.state is CardState.READY:
            return {"code": 0, "card": self.cards.describe_card(device_id)}
        self.cards.pending_restart.setdefault(device_id, []).append((client, rid))
        if entry.state is CardState.LOST:
            self.cards.restart(device_id)
        elif entry.state is CardState.FAILED:
            self.cards.answer_restart(device_id, ACL_ERROR_RT_LOST_HEARTBEAT)
        return None  # answered when the card is READY (or lost again while starting)

    def trace(self, client: bytes, rid: int, body: dict) -> None:
        path = body.get("path")
        if not isinstance(path, str) or not path.strip() or "\0" in path:
            raise ConfigError(f"path: expected a file path, got {path!r}")
        if self.telemetry.trace is None:
            self.telemetry.trace = TraceRecorder(self.started_s)
        events = self.telemetry.trace.snapshot(list(self.registry.cards))

        def then(count: Any, exc: BaseException | None) -> None:
            answer = error_reply(exc, "trace") if exc is not None else {"code": 0, "events": count}
            self.reply(client, Cmd.REPLY, BROKER_ROUTE, {"rid": rid, **answer})

        self.jobs.run(lambda: write_trace_events(path, events), then)
        return None

    def inject(self, client: bytes, rid: int, body: dict) -> dict:
        return self.faults.inject(body)

    def recover(self, client: bytes, rid: int, body: dict) -> dict:
        removed = self.faults.recover(body)
        restarted = self.cards.restart_lost()
        logger.warning("recover: %d fault rules removed; cards restarted: %s", removed, restarted)
        return {"code": 0, "removed": removed, "restarted": restarted}
