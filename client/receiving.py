"""Who reads the client's receive socket: a waiting API thread (leader/follower) or, when
nobody waits, the session's I/O thread, which steps aside while threads wait.

::

    API thread waits (_await) ─flush outbox─▶ receiver free? ─yes─▶ poll + drain itself
                                                  │ no: the I/O thread has it ─▶ wake it, wait
                                                  ▼       to be notified (or take over)
    I/O thread (_io_loop): nobody waits ─▶ poll socket + wake pipe, drain, flush, ping broker
                           threads wait ─▶ step aside: look every 1, 2, 2, ... ms; after a
                                           long wait (10 ms) sleep until the last waiter wakes it

The receive socket moves between threads only under the session's condition (``_receiver``
names its user); ZeroMQ allows a socket to migrate with a full memory barrier. A synchronous
round trip thus has no thread hand-off, and a submit/sync loop with nothing else in flight costs
no wake-up of the I/O thread: it takes the socket back only after a lull of ``_LULL_S``. A
mixin of :class:`client.session.Session`, which owns the sockets, the wake pipe, the outbox and
the message handling (``_drain_socket``, ``_broker_gone``) these methods use.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

import zmq

__all__ = ["Receiving"]

logger = logging.getLogger(__name__)

_IO_THREAD = "io"  # the receiver marker of the I/O thread (waiting threads use their ident)
_LULL_S = 1e-3
"""After a wait that left no task in flight, the I/O thread takes the receive socket back once
no thread has waited for this long (it looks on its own, nobody wakes it), so a thread
alternating submit and sync keeps the socket with no wake-up per round trip. After a wait
that left tasks in flight it is woken at once to drain their completions."""
_MAX_ASIDE_S = 2e-3
"""While threads keep waiting, the stepped-aside I/O thread looks every 1, 2, 2, ... ms: a task
submitted after a wait that left nothing in flight (no wake-up then) is drained at most this
late if nobody waits for it (a host callback, a polled event)."""
_LONG_WAIT_S = 10e-3
"""Once threads have waited this long without a break, the I/O thread stops looking (it sleeps
until woken, at most a heartbeat interval) and the last waiter wakes it as it leaves: a long
sync (a slow model, a hang fault) costs a few wake-ups, not 500 a second."""


class Receiving:
    """The receive-side half of a session: leader/follower waits and the I/O thread's loop.
    State (set by :class:`client.session.Session` and guarded by its ``cond``): ``_receiver``
    (who may use the receive socket), ``_waiters`` (threads in :meth:`_await`), ``_waited_s``
    (when the latest wait ended), ``_aside_since_s`` (when ``_waiters`` last went 0 -> 1)."""

    def _await(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``done()`` (checked under the condition) or the deadline; False on
        timeout. The waiting thread flushes the outbox and, when no other thread is receiving,
        becomes the receiver itself; otherwise it waits to be notified."""
        if self._outbox:
            self._outbox.flush_now()
        me = threading.get_ident()
        kicked = False
        with self.cond:
            if done():
                return True
            if self._waiters == 0:
                self._aside_since_s = time.monotonic()
            self._waiters += 1
        try:
            while True:
                with self.cond:
                    while True:
                        if done():
                            return True
                        if not self._running:
                            return False
                        slice_s = self._interval_s()
                        if deadline is not None:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                return False
                            slice_s = min(slice_s, remaining)
                        if self._receiver is None:
                            self._receiver = me
                            break
                        if self._receiver == _IO_THREAD and not kicked:
                            kicked = True  # the I/O thread is in poll: ask it to step aside
                            self._wake()
                        self.cond.wait(slice_s)
                self._receive(slice_s)
        finally:
            with self.cond:
                self._waiters -= 1
                now_s = time.monotonic()
                give_back = self._waiters == 0 and (
                    bool(self.tracks) or now_s - self._aside_since_s >= _LONG_WAIT_S
                )
                if self._waiters == 0:  # nothing in flight: it takes the socket after a lull
                    self._waited_s = 0.0 if give_back else now_s
            if give_back:  # tasks in flight, or a long wait: the I/O thread takes it back now
                self._wake()

    def _receive(self, timeout_s: float, poller: zmq.Poller | None = None) -> None:
        """Poll and drain the receive socket; the caller has just become the receiver."""
        try:
            if poller is None:
                if self._socket.poll(timeout_s * 1000.0):
                    self._drain_socket()
            else:
                for item, _ in poller.poll(timeout_s * 1000.0):
                    if item == self._wake_r:
                        os.read(self._wake_r, 4096)
                        self._outbox.woken()
                    else:
                        self._drain_socket()
        finally:
            with self.cond:
                self._receiver = None
                self.cond.notify_all()  # a waiter may take over the receive socket

    def _interval_s(self) -> float:
        return self._hello["heartbeat_interval_s"] if self._hello else 0.05

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _io_loop(self) -> None:
        """Receive while nobody waits; ping an idle broker; declare a silent one lost."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        wake_only = zmq.Poller()
        wake_only.register(self._wake_r, zmq.POLLIN)
        last_ping = time.monotonic()
        look_s = _LULL_S  # stepped aside: look again this soon (doubles while threads wait)
        while self._running:
            interval_s = self._interval_s()
            with self.cond:
                aside_s = look_s
                if self._waiters and time.monotonic() - self._aside_since_s >= _LONG_WAIT_S:
                    aside_s = interval_s  # a long wait: its last waiter wakes this thread
                elif self._waiters == 0 and self._receiver is None and self._running:
                    aside_s = min(aside_s, self._waited_s + _LULL_S - time.monotonic())
                    if aside_s <= 0:
                        self._receiver = _IO_THREAD
            if aside_s <= 0:
                look_s = _LULL_S
                self._receive(interval_s, poller)
            elif wake_only.poll(math.ceil(min(aside_s, interval_s) * 1000.0)):  # (int ms)
                os.read(self._wake_r, 4096)
                self._outbox.woken()
            else:
                look_s = min(2.0 * look_s, _MAX_ASIDE_S)
            if self._outbox:
                self._outbox.flush_now()
            now = time.monotonic()
            if self._hello is None or not self._running:
                continue
            silent_s = now - self._last_heard
            if self.sync_spans:
                self._send_spans()
            if now - last_ping >= interval_s:
                # Paranoid Pirate: ping every interval; the broker answers, so a silent broker
                # shows, and the broker knows this client lives (it releases dead clients)
                self._ping_broker()
                last_ping = now
            if silent_s > self.heartbeat_expiry_s:
                with self.cond:  # look once more: the answer may be queued behind a busy thread
                    mine = self._receiver is None
                    if mine:
                        self._receiver = _IO_THREAD
                if mine:
                    self._receive(0.0)
                if time.monotonic() - self._last_heard > self.heartbeat_expiry_s:
                    self._broker_gone(silent_s)
