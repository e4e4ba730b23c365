"""What a client sends to its farm: work queued by any thread and flushed in batches, and the
send socket it leaves on (owned by whoever holds :attr:`Outbox.lock`).

Submits are one-way and batched: what queued up while the sending thread was busy leaves as one
SUBMIT per card per run of consecutive submits, so order with requests is kept.

Who sends (:meth:`Outbox.post`)::

    post ─▶ queue ─┬─ ``direct`` (a request, whose caller waits next; a submit with nothing
                   │  else of the session in flight) or the first post after a pause
                   │  (>= DIRECT_GAP_S), and the send lock is free: the posting thread sends
                   │  the queue itself (no wake-up, no thread hand-off)
                   └─ otherwise (tasks in flight, or another thread is sending): the I/O thread
                        is woken (once until it reads the wake-up) and sends what queued up,
                        unless a thread about to wait or the lock holder takes it first

A round trip (submit then sync) thus leaves from the API thread without waking the I/O thread,
while submits made with tasks in flight (a window of streams, bursts) leave batched: the card is
busy anyway, and a batch saves the broker and the card a message per task. Whoever holds the
lock looks at the queue again after releasing it (:meth:`Outbox.flush_now`), so nothing queued
meanwhile waits for the next wake-up. Each task leaves with its submit stamp
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

__all__ = ["Outbox", "send_message", "MAX_BATCH", "DIRECT_GAP_S"]

logger = logging.getLogger(__name__)

MAX_BATCH = 64
"""Tasks per SUBMIT message, at most."""

DIRECT_GAP_S = 1e-3
"""A post this long after the previous one is sent by the posting thread itself (if the send
lock is free): it starts no burst worth batching. Posts closer together are batched (a Python
submit takes ~10 µs, but a thread may stall for a GIL switch interval, 5 ms, inside a burst)."""


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
        self._last_post_s = 0.0  # time.monotonic() of the latest post

    def __bool__(self) -> bool:
        """Work is queued."""
        return bool(self._queue)

    def post(self, cmd: bytes, route: bytes, body: Any, direct: bool = False) -> None:
        """Queue work and see it sent: by this thread at once if ``direct`` or after a pause,
        when the send lock is free; otherwise by the I/O thread (woken once until
        :meth:`woken`) or whoever flushes first. A task not stamped yet (an execute is, as its
        call starts: client/models.py) is stamped with its submit time here: the card's latency
        model starts it there."""
        now = time.monotonic()
        if cmd is Cmd.SUBMIT and TASK_STAMP not in body:
            body[TASK_STAMP] = now
        self._queue.append((cmd, route, body))
        last, self._last_post_s = self._last_post_s, now
        if (direct or now - last >= DIRECT_GAP_S) and self.lock.acquire(blocking=False):
            try:
                if self._open:
                    self._flush()
            finally:
                self.lock.release()
            if self._queue:  # another thread posted while this one sent
                self.flush_now()
            if not self._queue:
                return
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
        if self._queue:  # posted while this thread held the lock: not left for a wake-up
            self.flush_now()

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
