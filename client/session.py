"""The client's connection to a farm: a send socket for API threads, a receive socket for the
I/O thread.

::

    API threads ─append─▶ outbox ─holder of the send lock flushes─▶ DEALER "<id>/s" ─▶ broker
        ▲                                                                              │
        └── Condition: stream tracks, request slots ◀── I/O thread ◀── DEALER "<id>" ◀─┘
                                                    COMPLETE / REPLY / CARD_EVENT / HEARTBEAT

The broker answers work sent from ``<id>/s`` to ``<id>`` (``protocol.reply_identity``), so an API
thread sends its own task with no hand-off to another thread, and a sync waits only for the I/O
thread's notify. The send socket moves between threads under a mutex (ZeroMQ allows a socket to
migrate with a full memory barrier); the receive socket never leaves the I/O thread. Submits are
one-way and batched: everything queued while another thread held the send lock leaves in one
SUBMIT per card.
Completions update per-stream tracks under one condition variable, so a sync on a stream whose
tasks are already done is a local check, no round trip. A lost card fails every pending task of
that card with 507010; a silent broker (heartbeat expiry) fails everything.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from farm import protocol as proto
from farm.errors import (
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_SOCKET_CLOSE,
    ACL_SUCCESS,
    AclError,
    FarmUnavailable,
    NpuFarmError,
)
from farm.protocol import BROKER_DEVICE, Cmd

__all__ = ["Session", "StreamTrack", "Ledger"]

logger = logging.getLogger(__name__)

_BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)
_REQUEST_TIMEOUT_S = 30.0
_MAX_BATCH = 64


@dataclass(eq=False)
class StreamTrack:
    """Completion bookkeeping of one stream (or a device-internal queue) in this process."""

    device_id: int
    stream_id: int
    pending: deque[int] = field(default_factory=deque)
    error: int = ACL_SUCCESS  # first task error not yet returned by a sync
    last_task: int = 0

    def blocks(self, task_id: int) -> bool:
        return bool(self.pending) and self.pending[0] <= task_id


@dataclass
class Ledger:
    """Every task this client submitted ends in exactly one of these counters."""

    submitted: int = 0
    completed: int = 0
    failed: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": dict(self.failed),
        }


class Session:
    """A connection to one farm. Thread-safe; create one per process."""

    def __init__(self, address: str, *, connect_timeout_s: float = 30.0) -> None:
        self.address = address
        self.cond = threading.Condition(threading.Lock())
        self.tracks: dict[int, StreamTrack] = {}  # pending task id -> its stream track
        self.lost: dict[int, int] = {}  # device id -> epoch declared lost (sticky)
        self.epochs: dict[int, int] = {}
        self.broker_lost = False
        self.ledger = Ledger()
        self._task_ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._replies: dict[int, dict | None] = {}
        self._outbox: deque[tuple[bytes, bytes, Any]] = deque()  # work: SUBMIT / REQUEST
        self._control: deque[tuple[bytes, bytes, Any]] = deque()  # HELLO / HEARTBEAT / BYE
        self._send_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_pending = False
        self._running = True
        self._ctx = zmq.Context()
        identity = f"c{os.getpid()}-{os.urandom(6).hex()}".encode()
        self._socket = self._dealer(identity)  # receives; owned by the I/O thread
        self._sender = self._dealer(identity + proto.SENDER_SUFFIX)  # sends work; send lock
        self._hello: dict | None = None
        self._thread = threading.Thread(target=self._io_loop, name="npufarm-io", daemon=True)
        self._thread.start()
        self.farm = self._handshake(connect_timeout_s)

    def _dealer(self, identity: bytes) -> zmq.Socket:
        socket = self._ctx.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        socket.setsockopt(zmq.IDENTITY, identity)
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
        return proto.pack_route(device_id, self.epochs[device_id])

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
        self._post(Cmd.REQUEST, route, {"rid": rid, "op": op, **args})
        self._flush_now()
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self._replies[rid] is None:
                remaining = deadline - time.monotonic()
                if self.broker_lost or remaining <= 0:
                    del self._replies[rid]
                    code = (
                        ACL_ERROR_RT_LOST_HEARTBEAT
                        if self.broker_lost
                        else (ACL_ERROR_RT_SOCKET_CLOSE)
                    )
                    raise AclError(
                        f"no reply to {op} from device {device_id}", code, card=device_id
                    )
                self.cond.wait(remaining)
            reply = self._replies.pop(rid)
        if reply.get("code", ACL_SUCCESS) != ACL_SUCCESS:
            raise AclError(reply.get("error", f"{op} failed"), reply["code"], card=device_id)
        return reply

    def submit(self, track: StreamTrack, task: dict[str, Any]) -> int:
        """Queue one task on ``track``'s stream; return its task id. One-way."""
        self.check_device(track.device_id)
        with self.cond:
            task_id = next(self._task_ids)
            task["t"] = task_id
            task["s"] = track.stream_id
            track.pending.append(task_id)
            track.last_task = task_id
            self.tracks[task_id] = track
            self.ledger.submitted += 1
        self._post(Cmd.SUBMIT, self.route(track.device_id), task)
        return task_id

    def wait(self, track: StreamTrack, task_id: int, timeout_s: float | None) -> bool:
        """Wait until no task <= ``task_id`` is pending on ``track``. False on timeout.
        A lost card ends the wait at once (its tasks were failed)."""
        if self._outbox:
            self._flush_now()
        with self.cond:
            if not track.blocks(task_id):
                return True
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while track.blocks(task_id):
                if deadline is None:
                    self.cond.wait(self.heartbeat_expiry_s)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self.cond.wait(remaining)
            return True

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
        self._post_control(Cmd.DISCONNECT, _BROKER_ROUTE, {})
        self._running = False
        self._wake()
        self._thread.join(timeout=5.0)
        with self._send_lock:
            self._sender.close(0)
        self._socket.close(0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- I/O thread plumbing ---------------------------------------------------------------
    def _handshake(self, timeout_s: float) -> dict:
        self._post_control(Cmd.HELLO, _BROKER_ROUTE, {"pid": os.getpid()})
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self._hello is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
        if self._hello is None:
            self.close()
            raise FarmUnavailable(f"no farm answered at {self.address} within {timeout_s:g}s")
        farm = self._hello
        farm["cards"] = {c["device_id"]: c for c in farm["cards"]}
        self.epochs = {d: c["epoch"] for d, c in farm["cards"].items()}
        return farm

    def _post(self, cmd: bytes, route: bytes, body: Any) -> None:
        """Queue work for the I/O thread, which sends what accumulated as one batch per card.
        A thread about to wait sends the queue itself first (:meth:`_flush_now`)."""
        self._outbox.append((cmd, route, body))
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def _flush_now(self) -> None:
        """Send the queued work from this thread unless another thread is sending already; that
        thread then takes it along (its recheck after unlocking sees it)."""
        while self._outbox and self._running:
            if not self._send_lock.acquire(blocking=False):
                return
            try:
                self._flush_outbox(self._sender)
            finally:
                self._send_lock.release()

    def _post_control(self, cmd: bytes, route: bytes, body: Any) -> None:
        self._control.append((cmd, route, body))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        last_heard = last_ping = time.monotonic()
        while self._running:
            interval_s = self._hello["heartbeat_interval_s"] if self._hello else 0.25
            for item, _ in poller.poll(interval_s * 1000.0):
                if item == self._wake_r:
                    os.read(self._wake_r, 4096)
                    self._wake_pending = False
                    self._flush_now()
                else:
                    last_heard = time.monotonic()
                    self._drain_socket()
            while self._control:
                cmd, route, body = self._control.popleft()
                self._send(self._socket, cmd, route, proto.pack(body))
            now = time.monotonic()
            if (
                self._hello is not None
                and now - last_ping >= interval_s
                and now - last_heard >= interval_s
            ):
                # nothing heard for an interval (idle, or a long task): ping; the broker answers
                self._send(self._socket, Cmd.HEARTBEAT, _BROKER_ROUTE, proto.pack({}))
                last_ping = now
            if (
                self._hello is not None
                and now - last_heard > self.heartbeat_expiry_s
                and not self._socket.poll(0)
            ):
                self._broker_gone(now - last_heard)
        while self._control:  # the DISCONNECT posted by close()
            cmd, route, body = self._control.popleft()
            self._send(self._socket, cmd, route, proto.pack(body))

    @staticmethod
    def _send(socket: zmq.Socket, cmd: bytes, route: bytes, body: bytes) -> None:
        try:
            proto.send_frames(socket, proto.client_message(cmd, route, body))
        except zmq.ZMQError as exc:
            logger.warning("send failed: %s", exc)

    def _flush_outbox(self, socket: zmq.Socket) -> None:
        """Send everything queued (caller holds the send lock), one SUBMIT per card per run of
        consecutive submits, so order with requests is kept."""
        send = self._send
        batches: dict[bytes, list] = {}
        outbox = self._outbox
        while outbox:
            cmd, route, body = outbox.popleft()
            if cmd == Cmd.SUBMIT:
                batch = batches.setdefault(route, [])
                batch.append(body)
                if len(batch) >= _MAX_BATCH:
                    send(socket, Cmd.SUBMIT, route, proto.pack(batch))
                    del batches[route]
                continue
            for batch_route, batch in batches.items():  # keep order with this message
                send(socket, Cmd.SUBMIT, batch_route, proto.pack(batch))
            batches.clear()
            send(socket, cmd, route, proto.pack(body))
        for batch_route, batch in batches.items():
            send(socket, Cmd.SUBMIT, batch_route, proto.pack(batch))

    def _drain_socket(self) -> None:
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
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
            with self.cond:
                self._hello = proto.unpack(msg.body)
                self.cond.notify_all()
        elif msg.cmd == Cmd.CARD_EVENT:
            body = proto.unpack(msg.body)
            if isinstance(body, dict) and body.get("state") == "lost":
                self._card_lost(int(body["device_id"]), int(body["epoch"]))
        elif msg.cmd != Cmd.HEARTBEAT:
            logger.debug("ignored broker command %r", msg.cmd)

    def _on_complete(self, rows: Any) -> None:
        if not isinstance(rows, list):
            raise NpuFarmError("COMPLETE body is not a list")
        with self.cond:
            for row in rows:
                if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], int)):
                    logger.warning("malformed completion row dropped: %r", row)
                    continue
                self._settle(row[0], row[1])
            self.cond.notify_all()

    def _settle(self, task_id: int, code: int) -> None:
        """Record one task's end (caller holds the condition). Duplicates are ignored."""
        track = self.tracks.pop(task_id, None)
        if track is None:
            return
        if track.pending and track.pending[0] == task_id:
            track.pending.popleft()
        else:
            try:
                track.pending.remove(task_id)
            except ValueError:
                pass
        if code == ACL_SUCCESS:
            self.ledger.completed += 1
        else:
            self.ledger.failed[code] = self.ledger.failed.get(code, 0) + 1
            if track.error == ACL_SUCCESS:
                track.error = code

    def _card_lost(self, device_id: int, epoch: int) -> None:
        with self.cond:
            if self.epochs.get(device_id) != epoch:
                return
            self.lost[device_id] = epoch
            for task_id in [t for t, tr in self.tracks.items() if tr.device_id == device_id]:
                self._settle(task_id, ACL_ERROR_RT_LOST_HEARTBEAT)
            self.cond.notify_all()
        logger.warning("device %d (epoch %d) lost", device_id, epoch)

    def _broker_gone(self, silent_s: float) -> None:
        with self.cond:
            if self.broker_lost:
                return
            self.broker_lost = True
            for task_id in list(self.tracks):
                self._settle(task_id, ACL_ERROR_RT_LOST_HEARTBEAT)
            self.cond.notify_all()
        logger.error("broker at %s silent for %.2fs: farm lost", self.address, silent_s)
