"""Who reads the client's receive socket: a waiting API thread (leader/follower) or, when
nobody waits, the session's I/O thread, which steps aside while threads wait.

::

    API thread waits (_await) ─flush outbox─▶ receiver free? ─yes─▶ poll + drain itself (leader)
                                                  │ no: the I/O thread has it ─▶ wake it, wait
                                                  ▼       for a turn (follower) or take over
    I/O thread (_io_loop): nobody waits ─▶ poll socket + wake pipe, drain, flush, ping broker
                           threads wait ─▶ step aside: look once, _LONG_WAIT_S into the wait
                                           (no look after a long wait), then sleep until
                                           the last waiter wakes it

The receive socket moves between threads only under the session's condition (``_receiver``
names its user); ZeroMQ allows a socket to migrate with a full memory barrier. A synchronous
round trip thus has no thread hand-off, and a submit/sync loop with nothing else in flight costs
no wake-up of the I/O thread: it takes the socket back only after a lull of ``_LULL_S`` (also
after a long wait that woke it). While a thread waits the leader drains everything, so the I/O
thread need not look; it looks once to see whether a short wait ended without waking it.

Followers wait for their turn (:class:`Turns`): a notify wakes only the waiters whose task is
done, and one more to take the socket over when it is free, so the leader's drain of another
thread's completion does not wake a follower whose task is still running (its wake-up would find
the socket still held and sleep again). A mixin of :class:`client.session.Session`, which owns the
sockets, the wake pipe, the outbox and the message handling (``_drain_socket``, ``_broker_gone``)
these methods use.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["Receiving", "Turns"]

logger = logging.getLogger(__name__)

_IO_THREAD = "io"  # the receiver marker of the I/O thread (waiting threads use their ident)
_LULL_S = 1e-3
"""After a wait that left no task in flight, the I/O thread takes the receive socket back once
no thread has waited for this long (it looks on its own; the end of a wait it sleeps through
wakes it to start that timer), so a thread alternating submit and sync keeps the socket with no
wake-up per round trip. After a wait that left tasks in flight it is woken at once to drain
their completions."""
_LONG_WAIT_S = 2e-3
"""The stepped-aside I/O thread looks once this long after threads started waiting (without a
break); if they still wait it sleeps until woken (``_io_dozing``, at most a heartbeat interval)
and the last waiter wakes it as it leaves. After a wait this long it sleeps so at once (the next
wait is likely long too; if not, its end wakes it once). A wait that ends while the thread has
a timer wakes nobody: the look finds it over, so a task submitted after it and waited for by
nobody (a host callback, a polled event) is drained at most ``_LONG_WAIT_S + _LULL_S`` late.
A closed loop of long syncs (a slow model) costs the I/O thread 2 wake-ups per sync (the
waiter's exit, the lull's end); a hang fault a few per heartbeat interval."""


class Turns(threading.Condition):
    """The session's condition, whose followers wait for a reason to wake
    (:meth:`wait_turn`): ``notify``/``notify_all`` wake a follower only if its ``done()`` holds
    (checked by the notifier, under the lock) or, for one of them, when ``vacant()`` (nobody
    holds the receive socket: it takes over). Plain :meth:`wait` waiters are always woken."""

    def __init__(self, lock: Any, vacant: Callable[[], bool]) -> None:
        super().__init__(lock)
        self._vacant = vacant
        self._reasons: dict[Any, Callable[[], bool]] = {}  # follower's waiter lock -> done

    def wait_turn(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """:meth:`threading.Condition.wait` for a follower (the caller holds the lock)."""
        waiter = threading.Lock()
        waiter.acquire()
        self._waiters.append(waiter)
        self._reasons[waiter] = done
        self._lock.release()
        woken = False
        try:
            woken = waiter.acquire(True, timeout_s) if timeout_s > 0 else False
            return woken
        finally:
            self._lock.acquire()
            if not woken:
                self._reasons.pop(waiter, None)
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters that have a reason to wake (see the class)."""
        waiters = self._waiters
        if not waiters:
            return
        reasons = self._reasons
        take_over = self._vacant()
        for waiter in list(waiters):
            if n <= 0:
                break
            done = reasons.get(waiter)
            if done is not None and not _holds(done):
                if not take_over:
                    continue
                take_over = False  # this follower takes the socket over
            reasons.pop(waiter, None)
            waiters.remove(waiter)
            waiter.release()
            n -= 1


def _holds(done: Callable[[], bool]) -> bool:
    try:
        return bool(done())
    except Exception:  # the waiter finds out itself
        return True


class Receiving:
    """The receive-side half of a session: leader/follower waits and the I/O thread's loop.
    State (set by :class:`client.session.Session` and guarded by its ``cond``): ``_receiver``
    (who may use the receive socket), ``_waiters`` (threads in :meth:`_await`), ``_waited_s``
    (when the latest wait ended), ``_aside_since_s`` (when ``_waiters`` last went 0 -> 1),
    ``_long_waited`` (the latest wait lasted ``_LONG_WAIT_S``), ``_io_dozing`` (the I/O thread
    sleeps with no timer: the last waiter to leave wakes it)."""

    def _await(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``done()`` (checked under the condition) or the deadline; False on
        timeout. The waiting thread flushes the outbox and, when no other thread is receiving,
        becomes the receiver itself (and stays it until it leaves: no release between polls);
        otherwise it waits for its turn (:meth:`Turns.wait_turn`)."""
        if self._outbox:
            self._outbox.flush_now()
        me = threading.get_ident()
        give_back = False
        try:
            with self.cond:
                if done():
                    return True
                if self._waiters == 0:
                    self._aside_since_s = time.monotonic()
                self._waiters += 1
                try:
                    return self._take_turns(done, deadline, me)
                finally:
                    give_back = self._leave(me)
        finally:
            if give_back:  # tasks in flight: it takes the socket now; a long wait: it sleeps
                self._wake()

    def _take_turns(self, done: Callable[[], bool], deadline: float | None, me: int) -> bool:
        """The waiting loop of :meth:`_await` (under the condition): lead or follow."""
        kicked = False
        lock = self._lock
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
            if self._receiver is None or self._receiver == me:
                self._receiver = me
                lock.release()
                try:
                    self._poll_drain(slice_s)
                finally:
                    lock.acquire()
                continue
            if self._receiver == _IO_THREAD and not kicked:
                kicked = True  # the I/O thread is in poll: ask it to step aside
                self._wake()
            self.cond.wait_turn(done, slice_s)

    def _leave(self, me: int) -> bool:
        """A waiter leaves (under the condition): the receive socket goes to a follower (or,
        with nobody waiting, to the I/O thread after a lull, at once with tasks in flight).
        True if the I/O thread must be woken (tasks in flight, or it sleeps with no timer)."""
        released = self._receiver == me
        if released:
            self._receiver = None
        self._waiters -= 1
        if released or (self._waiters and self._receiver is None):
            # a follower takes the socket over (also if one woken to do so left instead)
            self.cond.notify_all()
        if self._waiters:
            return False
        now_s = time.monotonic()
        in_flight = bool(self.tracks)
        self._waited_s = 0.0 if in_flight else now_s
        self._long_waited = now_s - self._aside_since_s >= _LONG_WAIT_S
        return in_flight or self._io_dozing

    def _poll_drain(self, timeout_s: float) -> None:
        """Poll and drain the receive socket (the caller is the receiver, without the lock)."""
        if self._socket.poll(math.ceil(timeout_s * 1000.0)):  # (int ms: 0.4 must not be 0)
            self._drain_socket()

    def _receive(self, timeout_s: float, poller: zmq.Poller | None = None) -> None:
        """Poll and drain the receive socket, then release it; the caller (the I/O thread) has
        just become the receiver."""
        try:
            if poller is None:
                self._poll_drain(timeout_s)
            else:
                for item, _ in poller.poll(math.ceil(timeout_s * 1000.0)):
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
        while self._running:
            interval_s = self._interval_s()
            with self.cond:
                self._io_dozing = False
                if self._waiters:  # the leader drains: look once, _LONG_WAIT_S into the wait
                    aside_s = self._aside_since_s + _LONG_WAIT_S - time.monotonic()
                    if aside_s <= 0 or self._long_waited:  # (a long one is likely again)
                        aside_s = interval_s  # a long wait: its last waiter wakes this thread
                        self._io_dozing = True
                elif self._receiver is None and self._running:
                    aside_s = self._waited_s + _LULL_S - time.monotonic()
                    if aside_s <= 0:
                        self._receiver = _IO_THREAD
                else:
                    aside_s = _LULL_S
            if aside_s <= 0:
                self._receive(interval_s, poller)
            elif wake_only.poll(max(1, math.ceil(min(aside_s, interval_s) * 1000.0))):  # (ms)
                os.read(self._wake_r, 4096)
                self._outbox.woken()
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
