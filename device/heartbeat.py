"""The card's heartbeat, kept up while its loop is busy in a long kernel or page commit.

The card loop beats at every heartbeat interval between turns. A turn can last longer than the
broker's expiry: an onnxruntime execution of seconds, a big numpy matmul, a copy of a large
tensor. A healthy card must not be declared lost for that, so a small *keeper* thread stands in
for a late loop::

    card loop (owns the socket)      ──tick every interval──▶ HEARTBEAT (fresh stats)
        │ holds io_lock around every socket use; computes with it released
    keeper thread (sleeps until the loop is a quarter interval late)
        └─ io_lock free? (the loop is computing) ──tick──▶ HEARTBEAT (the loop's last stats)

Why this shape: the hot path pays nothing per task (no thread hop, no extra socket; the loop
takes an uncontended lock around its socket calls), the keeper wakes about once per interval,
and both ticks run the same code — the ``card.heartbeat`` fault hook included — so an injected
``heartbeat_loss`` or ``disconnect`` silences the card whoever ticks. A card that is really
silent (SIGSTOP, a dead process) stops both threads and is lost as before. Kernels that hold the
GIL for seconds would still silence it; numpy's heavy loops and onnxruntime release it.

The keeper can only take ``io_lock`` while the loop is not using the socket, and the loop
re-takes it before its next socket call, so one socket is never used by two threads at once
(ZeroMQ allows a socket to move between threads behind a full memory barrier, which the lock
provides).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)

_LATE_FRACTION = 0.25  # the keeper ticks once the loop is this share of an interval late
_MIN_WAIT_S = 0.001
_BUSY_SOCKET_WAIT = 0.1  # share of an interval to wait when the loop holds the socket


class Heartbeat:
    """When the next tick is due, and the keeper thread that ticks for a busy loop.

    ``tick(now, from_loop)`` sends the heartbeat; it is always called with ``io_lock`` held.
    """

    def __init__(
        self,
        interval_s: float,
        tick: Callable[[float, bool], None],
        io_lock: threading.Lock,
        name: str,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.next_s = time.monotonic() + interval_s
        self.covered = 0  # ticks the keeper made for a busy loop
        self._tick = tick
        self._io_lock = io_lock
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self, now: float) -> bool:
        return now >= self.next_s

    def loop_tick(self, now: float) -> None:
        """The loop's own tick (call with ``io_lock`` held)."""
        self._tick(now, True)
        self.next_s = now + self.interval_s

    # -- keeper thread ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._keep, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._thread = None

    def _late_at(self) -> float:
        return self.next_s + self.interval_s * _LATE_FRACTION

    def _keep(self) -> None:
        wait_s = self.interval_s
        while not self._stop.wait(wait_s):
            wait_s = max(_MIN_WAIT_S, self._late_at() - time.monotonic())
            if wait_s > _MIN_WAIT_S:
                continue
            if not self._io_lock.acquire(blocking=False):
                # the loop is at its socket: alive, and about to tick itself
                wait_s = self.interval_s * _BUSY_SOCKET_WAIT
                continue
            try:
                now = time.monotonic()
                if now >= self._late_at() and not self._stop.is_set():
                    self._tick(now, False)
                    self.next_s = now + self.interval_s
                    self.covered += 1
                wait_s = max(_MIN_WAIT_S, self._late_at() - now)
            except Exception:  # a failed beat must not end the keeper; the loop reports
                logger.exception("%s: heartbeat tick failed", self._name)
            finally:
                self._io_lock.release()
