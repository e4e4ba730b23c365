"""The client's connection to a farm: a send socket any API thread uses under a lock, and a
receive socket read by whichever thread is waiting (or the I/O thread when nobody is).

::

    API threads ─append─▶ outbox ─holder of the send lock flushes─▶ DEALER "<id>/s" ─▶ broker
                                                                                       │
    waiting API thread (leader) or, when none waits, the I/O thread ◀── DEALER "<id>" ◀┘
        └─▶ stream tracks / request slots under one Condition ─▶ other waiters notified

The broker answers everything sent from ``<id>/s`` to ``<id>`` (``protocol.reply_identity``).
Sockets move between threads only under their locks (ZeroMQ allows a socket to migrate with a
full memory barrier). A thread that waits for a completion flushes the outbox itself and then
receives on the socket itself (leader/follower: a follower wakes only when its task is done or
the socket is free), so a synchronous round trip has no thread hand-off; the I/O thread steps
aside while anyone waits (and, when the wait left nothing in flight, for a lull after it, so a
submit/sync loop costs no wake-up), and otherwise drains completions, card events and pongs,
pings an idle broker and declares it lost after the heartbeat expiry (those rules:
:mod:`client.receiving`). Submits are one-way: a task submitted with nothing else in flight
leaves from the API thread at once; with tasks in flight, submits are batched
(:mod:`client.outbox`). A sync on a stream whose tasks are done is a local check, no round trip
(:mod:`client.tracks`). A lost card fails every pending task of that card with 507010;
a silent broker fails everything (:mod:`client.membership`).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from client.membership import Membership, hello_body
from client.outbox import Outbox, send_message
from client.receiving import Receiving, Turns
from client.tracks import HELD_FOR_RECORD, Ledger, StreamTrack
from core import protocol as proto
from core.errors import (
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_SOCKET_CLOSE,
    ACL_SUCCESS,
    AclError,
    FarmUnavailable,
    NpuFarmError,
)
from core.protocol import BROKER_DEVICE, RECONNECT_IVL_MAX_MS, RECONNECT_IVL_MS, Cmd

__all__ = ["Session"]

logger = logging.getLogger(__name__)

_BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)
_REQUEST_TIMEOUT_S = 30.0
_THREAD = threading.local()


def _native_thread_id() -> int:
    """The calling thread's native id, asked of the kernel once per thread (a C thread that
    calls in afresh gets a new thread state, hence a fresh look)."""
    try:
        return _THREAD.native_id
    except AttributeError:
        _THREAD.native_id = native_id = threading.get_native_id()
        return native_id


class Session(Receiving):
    """A connection to one farm. Thread-safe; create one per process."""

    def __init__(self, address: str, *, connect_timeout_s: float = 30.0) -> None:
        self.address = address
        self._lock = threading.Lock()  # the condition's lock: hot paths take it directly
        self.cond = Turns(self._lock, lambda: self._receiver is None)
        self.tracks: dict[int, StreamTrack] = {}  # pending task id -> its stream track
        self.lost: dict[int, int] = {}  # device id -> epoch declared lost (sticky)
        self.epochs: dict[int, int] = {}
        self._routes: dict[tuple[int, int], bytes] = {}  # (device id, epoch) -> route frame
        self.broker_lost = False
        self.ledger = Ledger()
        # (task id, code, track, end_s on the card's clock or None), called under cond
        self.on_settle: Callable[[int, int, StreamTrack, float | None], None] | None = None
        self.on_lost: Callable[[int], None] | None = None  # (device id) lost; outside cond
        # the devices this process holds memory or streams on (None: every device)
        self.devices_in_use: Callable[[], list[int]] | None = None
        self.sync_spans: deque[list] = deque()  # sync waits for the farm's trace (if tracing)
        self._task_ids = itertools.count(1)
        self._before_send: dict[int, Callable[[], None]] = {}  # held task id -> its on_send
        self._rids = itertools.count(1)
        self._replies: dict[int, dict | None] = {}
        self._receiver: int | str | None = None  # who may use the receive socket (cond)
        self._waiters = 0  # threads in _await (the I/O thread steps aside while > 0)
        self._waited_s = 0.0  # time.monotonic() when the latest wait ended (cond)
        self._aside_since_s = 0.0  # time.monotonic() when _waiters last went 0 -> 1 (cond)
        self._long_waited = False  # the latest wait lasted _LONG_WAIT_S or more (cond)
        self._io_dozing = False  # the I/O thread sleeps until woken: a leaver wakes it (cond)
        self._last_heard = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        self._running = True
        self._ctx = zmq.Context()
        identity = f"c{os.getpid()}-{os.urandom(6).hex()}".encode()
        self._socket = self._dealer(identity)  # receives (under the receive lock)
        self._outbox = Outbox(self._dealer(identity + proto.SENDER_SUFFIX), self._wake)  # sends
        self._hello: dict | None = None
        self.membership = Membership(self, self._send_hello)
        self.farm: dict = {}
        self._send_hello()
        self._thread = threading.Thread(target=self._io_loop, name="npufarm-io", daemon=True)
        self._thread.start()
        self.farm = self._handshake(connect_timeout_s)

    def _send_hello(self) -> None:
        """HELLO leaves on the receive socket (its holder calls this), so the broker knows that
        pipe before it answers."""
        send_message(self._socket, Cmd.HELLO, _BROKER_ROUTE, hello_body())

    def _dealer(self, identity: bytes) -> zmq.Socket:
        socket = self._ctx.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        socket.setsockopt(zmq.IDENTITY, identity)
        socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)  # reconnect with back-off
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        socket.connect(self.address)
        return socket

    # -- public ----------------------------------------------------------------------------
    @property
    def heartbeat_expiry_s(self) -> float:
        hello = self._hello or {"heartbeat_interval_s": 0.25, "heartbeat_liveness": 4}
        return hello["heartbeat_interval_s"] * hello["heartbeat_liveness"]

    def card(self, device_id: int) -> dict[str, Any]:
        return self.farm["cards"][device_id]

    def route(self, device_id: int) -> bytes:
        key = (device_id, self.epochs[device_id])
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = proto.pack_route(*key)
        return route

    def check_device(self, device_id: int) -> None:
        """Raise 507010 if the device (or the whole farm) has been lost."""
        if self.broker_lost or device_id in self.lost:
            raise AclError(
                f"device {device_id} is lost", ACL_ERROR_RT_LOST_HEARTBEAT, card=device_id
            )

    def request(
        self, device_id: int, op: str, /, timeout_s: float = _REQUEST_TIMEOUT_S, **args: Any
    ) -> dict:
        """A request/reply op on a card (or the broker with BROKER_DEVICE); raise on error."""
        if device_id != BROKER_DEVICE:
            self.check_device(device_id)
            route = self.route(device_id)
        else:
            route = _BROKER_ROUTE
        rid = next(self._rids)
        with self.cond:
            self._replies[rid] = None
            epoch = self.epochs.get(device_id)
        self._outbox.post(Cmd.REQUEST, route, {"rid": rid, "op": op, **args}, direct=True)
        answered = self._await(  # a lost card ends the wait at once, like a lost broker
            lambda: (
                self._replies[rid] is not None
                or self.broker_lost
                or (epoch is not None and self.lost.get(device_id) == epoch)
            ),
            time.monotonic() + timeout_s,
        )
        with self.cond:
            reply = self._replies.pop(rid)
        if reply is None:
            code = ACL_ERROR_RT_LOST_HEARTBEAT if answered else ACL_ERROR_RT_SOCKET_CLOSE
            raise AclError(f"no reply to {op} from device {device_id}", code, card=device_id)
        if reply.get("code", ACL_SUCCESS) != ACL_SUCCESS:
            raise AclError(reply.get("error", f"{op} failed"), reply["code"], card=device_id)
        return reply

    def notify_card(self, device_id: int, op: str, /, **args: Any) -> None:
        """A request to a card whose reply nobody waits for: marked so that the card sends
        none (a client that leaves right after a release would have the broker drop it and
        warn); nothing is sent to a lost card or through a lost broker."""
        with self.cond:
            if self.broker_lost or device_id in self.lost or device_id not in self.epochs:
                return
            route = self.route(device_id)
        body = {"rid": next(self._rids), "op": op, proto.NO_REPLY: True, **args}
        self._outbox.post(Cmd.REQUEST, route, body)

    def submit(
        self,
        track: StreamTrack,
        task: dict[str, Any],
        registered: Callable[[int], None] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> int:
        """Queue one task on ``track``'s stream; return its task id. One-way.
        ``registered(task_id)`` runs under the condition before the task can complete;
        ``on_send()`` right before the task leaves for the card, which for a task held behind a
        blocking callback is when the callback returns (the card cannot start it earlier)."""
        device_id = track.device_id
        if self.broker_lost or device_id in self.lost:
            self.check_device(device_id)
        thread_id = _native_thread_id()
        route = self.route(device_id)
        tracks = self.tracks
        with self._lock:
            alone = not tracks  # nothing of ours in flight: no batch to wait for
            task["t"] = task_id = next(self._task_ids)
            task["s"] = track.stream_id
            track.pending.append(task_id)
            track.last_task = task_id
            track.thread_id = thread_id
            tracks[task_id] = track
            self.ledger.submitted += 1
            if registered is not None:
                registered(task_id)
            gate, track.gate_next = track.gate_next, False
            if track.held is not None:  # behind a blocking callback: sent when it returns
                track.held.append((task, gate))
                if on_send is not None:
                    self._before_send[task_id] = on_send
                return task_id
            if gate:  # a blocking callback's marker: what follows waits for the callback
                track.held = []
        if on_send is not None:
            on_send()
        # alone, it leaves from this thread at once (a round trip: no wake-up, no hand-off);
        # with tasks in flight it may wait for the I/O thread and leave batched
        self._outbox.post(Cmd.SUBMIT, route, task, alone)
        return task_id

    def host_done(self, track: StreamTrack, task_id: int, release: bool) -> None:
        """A host callback of ``track`` returned: the stream may go on (``release`` sends the
        tasks held behind a blocking callback, in order)."""
        send = []
        with self.cond:
            track.host_pending.discard(task_id)
            if release and track.held is not None:
                held, track.held = track.held, None
                for index, (task, gate) in enumerate(held):
                    if gate == HELD_FOR_RECORD:  # a wait on a record still held: stop before
                        track.held = held[index:]
                        break
                    send.append(task)
                    if gate:  # the next blocking callback closes the gate again
                        track.held = held[index + 1 :]
                        break
            self.cond.notify_all()
        for task in send:
            before = self._before_send.pop(task["t"], None)
            if before is not None:
                before()
            task[proto.TASK_STAMP] = time.monotonic()  # submitted as the callback returned
            self._outbox.post(Cmd.SUBMIT, self.route(track.device_id), task)

    def wait(self, track: StreamTrack, task_id: int, timeout_s: float | None) -> bool:
        """Wait until no task <= ``task_id`` is pending on ``track``. False on timeout.
        A lost card ends the wait at once (its tasks were failed)."""
        with self._lock:
            if not track.blocks(task_id):
                return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return self._await(lambda: not track.blocks(task_id), deadline)

    def take_error(self, track: StreamTrack) -> int:
        """The first unreported task error of the stream, reported once."""
        with self.cond:
            code, track.error = track.error, ACL_SUCCESS
        return code

    def attach_card(self, device_id: int, card: dict[str, Any]) -> None:
        """A (re)started card: new epoch, the device is usable again."""
        with self.cond:
            self.farm["cards"][device_id] = card
            self.epochs[device_id] = card["epoch"]
            self.lost.pop(device_id, None)

    def close(self) -> None:
        if not self._running:
            return
        with self.cond:
            self.ledger.abandoned = len(self.tracks)
        self._outbox.flush_now()
        if self.sync_spans:
            self._send_spans()
        self._outbox.send(Cmd.DISCONNECT, _BROKER_ROUTE, proto.pack({}))
        self._running = False
        self._outbox.stop()
        self._wake()
        self._thread.join(timeout=5.0)
        self._outbox.close()
        with self.cond:
            while self._receiver is not None:
                self.cond.wait(0.1)
            self._receiver = "closed"
        self._socket.close(0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- I/O thread plumbing ---------------------------------------------------------------
    def _handshake(self, timeout_s: float) -> dict:
        self._await(lambda: self._hello is not None, time.monotonic() + timeout_s)
        if self._hello is None:
            self.close()
            raise FarmUnavailable(f"no farm answered at {self.address} within {timeout_s:g}s")
        farm = self._hello
        farm["cards"] = {c["device_id"]: c for c in farm["cards"]}
        self.epochs = {d: c["epoch"] for d, c in farm["cards"].items()}
        self.membership.adopt_card_states(farm["cards"])
        return farm

    def _ping_broker(self) -> None:
        """Paranoid Pirate: the I/O thread pings every interval; the broker answers, so a
        silent broker shows, and the broker knows this client lives (it releases dead ones)."""
        self._outbox.send(Cmd.HEARTBEAT, _BROKER_ROUTE, proto.pack({}))

    @property
    def tracing(self) -> bool:
        return bool(self._hello and self._hello.get("tracing"))

    def _send_spans(self) -> None:
        spans = [self.sync_spans.popleft() for _ in range(len(self.sync_spans))]
        self._outbox.send(Cmd.TRACE, _BROKER_ROUTE, proto.pack(spans))

    def _drain_socket(self) -> None:
        """Handle every queued message (caller holds the receive lock)."""
        while True:
            frames = proto.recv_ready(self._socket)
            if frames is None:
                return
            self._last_heard = time.monotonic()
            if self.broker_lost and not self.membership.rejoining:
                self.membership.rejoin("the broker answers again")
            try:
                self._on_message(proto.parse_client_message(frames, with_identity=False))
            except (NpuFarmError, KeyError, TypeError, ValueError) as exc:
                logger.warning("dropped malformed message from the broker: %s", exc)

    def _on_message(self, msg: proto.ClientFrame) -> None:
        if msg.cmd == Cmd.COMPLETE:
            self._on_complete(proto.unpack(msg.body))
        elif msg.cmd == Cmd.REPLY:
            body = proto.unpack(msg.body)
            if isinstance(body, dict) and isinstance(body.get("rid"), int):
                with self.cond:
                    if body["rid"] in self._replies:
                        self._replies[body["rid"]] = body
                        self.cond.notify_all()
        elif msg.cmd == Cmd.HELLO:
            body = proto.unpack(msg.body)
            if self._hello is None:
                with self.cond:
                    self._hello = body
                    self.cond.notify_all()
            else:
                self.membership.rejoined(body)
        elif msg.cmd == Cmd.CARD_EVENT:
            body = proto.unpack(msg.body)
            if isinstance(body, dict) and body.get("state") == "lost":
                self.card_lost(int(body["device_id"]), int(body["epoch"]))
        elif msg.cmd == Cmd.DISCONNECT:
            self.membership.expired(self._running)
        elif msg.cmd != Cmd.HEARTBEAT:
            logger.debug("ignored broker command %r", msg.cmd)

    def _on_complete(self, rows: Any) -> None:
        if not isinstance(rows, list):
            raise NpuFarmError("COMPLETE body is not a list")
        settle = self._settle
        with self._lock:
            for row in rows:
                if not (type(row) is list and len(row) >= 4 and type(row[0]) is int):
                    logger.warning("malformed completion row dropped: %r", row)
                    continue
                end_s = row[3] if type(row[3]) is float else None
                settle(row[0], row[1], end_s)
            self.cond.notify_all()

    def _settle(self, task_id: int, code: int, end_s: float | None = None) -> None:
        """Record one task's end (caller holds the condition). Duplicates are ignored.
        ``end_s`` is the card's completion time (``time.monotonic()`` of the card), if known."""
        track = self.tracks.pop(task_id, None)
        if track is None:
            return
        if self._before_send:
            self._before_send.pop(task_id, None)  # a held task failed before it was sent
        pending = track.pending
        if pending and pending[0] == task_id:
            pending.popleft()
        else:
            try:
                pending.remove(task_id)
            except ValueError:
                pass
        if code == ACL_SUCCESS:
            self.ledger.completed += 1
        else:
            self.ledger.failed[code] = self.ledger.failed.get(code, 0) + 1
            if track.error == ACL_SUCCESS:
                track.error = code
        if self.on_settle is not None:
            try:  # the task has ended whatever a hook does: a hook bug must not strand a sync
                self.on_settle(task_id, code, track, end_s)
            except Exception:
                logger.exception("settle hook failed for task %d", task_id)

    def card_lost(self, device_id: int, epoch: int) -> None:
        """The farm lost the device at ``epoch``: its pending tasks fail with 507010, sticky
        until reset + set_device (a stale epoch is ignored). Any thread."""
        with self.cond:
            if self.epochs.get(device_id) != epoch:
                return
            first = self.lost.get(device_id) != epoch
            self.lost[device_id] = epoch
            for task_id in [t for t, tr in self.tracks.items() if tr.device_id == device_id]:
                self._settle(task_id, ACL_ERROR_RT_LOST_HEARTBEAT)
            self.cond.notify_all()
        logger.warning("device %d (epoch %d) lost", device_id, epoch)
        if first and self.on_lost is not None:
            self.on_lost(device_id)

    def _broker_gone(self, silent_s: float) -> None:
        with self.cond:
            self.membership.rejoining = False  # the next word from the broker sends a new HELLO
            if self.broker_lost:
                return
            self.broker_lost = True
            for task_id in list(self.tracks):
                self._settle(task_id, ACL_ERROR_RT_LOST_HEARTBEAT)
            self.cond.notify_all()
        logger.error("broker at %s silent for %.2fs: farm lost", self.address, silent_s)
        if self.on_lost is not None:
            for device_id in list(self.epochs):
                self.on_lost(device_id)
