"""The broker's sends that never wait (:class:`Outbox`), its counters of dropped inputs
(:class:`Counted`), and the observers every part of it reports to (:class:`Telemetry`).

Why: a ROUTER with ``ROUTER_MANDATORY`` blocks (or, non-blocking, raises ``zmq.Again``) when a
peer's pipe is full. The broker loop must never block, and a live card whose pipe is full is not
a lost card: its work waits in a per-peer backlog, sent in order on later turns, and reaches the
card (never failed with 507010). A client that does not read gets its replies queued too, up to
a bound; past it, and for a client that is gone, replies are dropped and counted (logged once a
second), never silently.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

import zmq

from core import protocol as proto
from farm.metrics import FarmMetrics
from farm.trace import TraceRecorder

__all__ = ["Outbox", "Counted", "Telemetry", "send_now", "PIPE_HWM", "BACKLOG_POLL_MS"]

logger = logging.getLogger(__name__)

PIPE_HWM = 100_000  # messages queued in zmq per peer; beyond, the broker's own backlog
BACKLOG_POLL_MS = 1  # poll timeout while a backlog waits for a peer's pipe to drain
_CLIENT_BACKLOG_MAX = 100_000  # messages queued for one client before they are dropped (counted)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_LOG_EVERY_S = 1.0


@dataclass
class Telemetry:
    """Where the broker's parts report what happens: the trace (``None`` until a farm started
    without ``--trace`` is asked for one, so it is shared, not copied) and the metrics."""

    trace: TraceRecorder | None = None
    metrics: FarmMetrics | None = None


class Counted:
    """A count of dropped inputs, logged at most once a second (20,000 bad frames are one line
    a second, with the count, not 20,000 lines)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self._unlogged = 0
        self._last_log_s = -math.inf
        self._example = ""

    def add(self, example: str, now: float, exc: BaseException | None = None) -> None:
        self.count += 1
        self._unlogged += 1
        self._example = example
        self.flush(now, exc)

    def flush(self, now: float, exc: BaseException | None = None) -> None:
        if self._unlogged and now - self._last_log_s >= _LOG_EVERY_S:
            logger.warning(
                "%s: %d (total %d); last: %s",
                self.what,
                self._unlogged,
                self.count,
                self._example,
                exc_info=exc,
            )
            self._unlogged = 0
            self._last_log_s = now


def send_now(socket: zmq.Socket, frames: list) -> None:
    """Send a routed multipart message without ever waiting: ``zmq.Again`` if the peer's pipe
    is full, ``zmq.ZMQError`` (EHOSTUNREACH) if the peer is unknown; nothing is sent then."""
    socket.send(frames[0], _SNDMORE_NOBLOCK)
    last = len(frames) - 1
    for index in range(1, last):
        socket.send(frames[index], _SNDMORE)
    socket.send(frames[last])


class Outbox:
    """Backlogged sends to cards (``backend``) and clients (``frontend``)."""

    def __init__(self, frontend: zmq.Socket, backend: zmq.Socket, dropped: Counted) -> None:
        self.frontend = frontend
        self.backend = backend
        self.replies_dropped = dropped
        self.card_backlog: dict[int, deque[list]] = {}  # device -> frames its pipe refused
        self.client_backlog: dict[bytes, deque[list]] = {}

    def waiting(self) -> bool:
        """Whether some message waits for a peer's pipe to drain."""
        return bool(self.card_backlog or self.client_backlog)

    def send_card(self, identity: bytes, cmd: bytes, client: bytes, body: bytes) -> None:
        """A control message to a card, now or never (a card not reading is judged by its
        heartbeats, not queued for)."""
        try:
            send_now(self.backend, proto.worker_message(cmd, client, body, identity))
        except zmq.ZMQError:
            logger.debug("card %r unreachable or not reading; %r not sent", identity, cmd)

    def to_card(self, device_id: int, frames: list) -> bool:
        """Send to a live card; a full pipe queues the message (sent in order later). False if
        the card is unreachable (its process is gone)."""
        backlog = self.card_backlog.get(device_id)
        if backlog is not None:
            backlog.append(frames)
            return True
        try:
            send_now(self.backend, frames)
        except zmq.Again:
            self.card_backlog[device_id] = deque([frames])
        except zmq.ZMQError:
            return False
        return True

    def to_client(self, client: bytes, frames: list) -> None:
        """Send to a client; a full pipe queues the message, a gone client's is dropped (and
        counted)."""
        backlog = self.client_backlog.get(client)
        if backlog is not None:
            if len(backlog) < _CLIENT_BACKLOG_MAX:
                backlog.append(frames)
            else:
                self.replies_dropped.add(f"client {client!r} not reading", time.monotonic())
            return
        try:
            send_now(self.frontend, frames)
        except zmq.Again:
            self.client_backlog[client] = deque([frames])
        except zmq.ZMQError:
            self.replies_dropped.add(f"client {client!r} gone", time.monotonic())

    def flush_backlogs(self) -> None:
        for device_id, backlog in list(self.card_backlog.items()):
            if not self._flush(self.backend, backlog):
                del self.card_backlog[device_id]
        for client, backlog in list(self.client_backlog.items()):
            if not self._flush(self.frontend, backlog):
                del self.client_backlog[client]

    def _flush(self, socket: zmq.Socket, backlog: deque) -> bool:
        """Send what the peer's pipe takes now; True while some is left."""
        while backlog:
            try:
                send_now(socket, backlog[0])
            except zmq.Again:
                return True
            except zmq.ZMQError:  # the peer is gone
                self.replies_dropped.add(
                    f"{len(backlog)} messages to a gone peer", time.monotonic()
                )
                return False
            backlog.popleft()
        return False

    def take_card_backlog(self, device_id: int) -> deque[list]:
        """A lost card's queued messages, no longer to be sent (its requests are answered
        507010 by the caller; its tasks are failed by the loss itself)."""
        return self.card_backlog.pop(device_id, deque())
