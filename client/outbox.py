"""What a client sends to its farm: work queued by any thread and flushed in batches, and the
send socket it leaves on (owned by whoever holds :attr:`Outbox.lock`).

Submits are one-way and batched: what queued up while the sending thread was busy leaves as one
SUBMIT per card per run of consecutive submits, so order with requests is kept. The queue is
flushed by the I/O thread (woken through ``wake``) or by a thread about to wait, which sends it
itself first (:meth:`Outbox.flush_now`). Each task leaves with its submit stamp
(``protocol.TASK_STAMP``, ``time.monotonic()``): an execute's taken as its call starts
(client/models.py), a task held behind a blocking callback's as the callback returns
(client/session.py), any other's at :meth:`Outbox.post`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from core import protocol as proto
from core.protocol import TASK_STAMP, Cmd

__all__ = ["Outbox", "send_message", "MAX_BATCH"]

logger = logging.getLogger(__name__)

MAX_BATCH = 64
"""Tasks per SUBMIT message, at most."""


def send_message(socket: zmq.Socket, cmd: bytes, route: bytes, body: bytes) -> None:
    """Send one client message now (the caller owns ``socket``); a failure is logged."""
    try:
        proto.send_frames(socket, proto.client_message(cmd, route, body))
    except zmq.ZMQError as exc:
        logger.warning("send failed: %s", exc)


class Outbox:
    """The queue of work (SUBMIT / REQUEST) for the farm and the socket it is sent on."""

    def __init__(self, socket: zmq.Socket, wake: Callable[[], None]) -> None:
        self.lock = threading.Lock()  # owns the send socket
        self._socket = socket
        self._queue: deque[tuple[bytes, bytes, Any]] = deque()
        self._wake = wake
        self._wake_pending = False
        self._open = True

    def __bool__(self) -> bool:
        """Work is queued."""
        return bool(self._queue)

    def post(self, cmd: bytes, route: bytes, body: Any) -> None:
        """Queue work; the I/O thread is woken (once until :meth:`woken`) to send it. A task
        not stamped yet (an execute is, as its call starts: client/models.py) is stamped with
        its submit time here: the card's latency model starts it there."""
        if cmd is Cmd.SUBMIT and TASK_STAMP not in body:
            body[TASK_STAMP] = time.monotonic()
        self._queue.append((cmd, route, body))
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def woken(self) -> None:
        """The I/O thread read its wake-up: the next post wakes it again."""
        self._wake_pending = False

    def flush_now(self) -> None:
        """Send the queued work from this thread unless another thread is sending already; that
        thread then takes it along (its recheck after unlocking sees it)."""
        while self._queue and self._open:
            if not self.lock.acquire(blocking=False):
                return
            try:
                self._flush()
            finally:
                self.lock.release()

    def send(self, cmd: bytes, route: bytes, body: bytes) -> None:
        """Send one message now, ahead of the queue (heartbeats, trace spans, DISCONNECT)."""
        with self.lock:
            send_message(self._socket, cmd, route, body)

    def stop(self) -> None:
        """No flush from now on (the session is closing)."""
        self._open = False

    def close(self) -> None:
        """Close the send socket (after :meth:`stop`)."""
        with self.lock:
            self._socket.close(0)

    def _flush(self) -> None:
        """Send everything queued (caller holds the lock), one SUBMIT per card per run of
        consecutive submits, so order with requests is kept."""
        socket = self._socket
        batches: dict[bytes, list] = {}
        queue = self._queue
        while queue:
            cmd, route, body = queue.popleft()
            if cmd == Cmd.SUBMIT:
                batch = batches.setdefault(route, [])
                batch.append(body)
                if len(batch) >= MAX_BATCH:
                    send_message(socket, Cmd.SUBMIT, route, proto.pack(batch))
                    del batches[route]
                continue
            for batch_route, batch in batches.items():  # keep order with this message
                send_message(socket, Cmd.SUBMIT, batch_route, proto.pack(batch))
            batches.clear()
            send_message(socket, cmd, route, proto.pack(body))
        for batch_route, batch in batches.items():
            send_message(socket, Cmd.SUBMIT, batch_route, proto.pack(batch))
