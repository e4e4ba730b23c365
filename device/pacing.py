"""How a card waits for its next completion: sleep, then spin the last stretch (hybrid wait).

::

    card loop:  ── sleep in select (socket readable, or the timeout) ──▶ due − window
                ── spin: look at the socket (poll 0, messages still taken), at the clock ──▶ due
                ── the timer fires: COMPLETE sent

A timed sleep on a VM wakes late, ~0.1 ms at the median and 0.3–0.5 ms at the p99 (an idle vCPU
has to be woken by its host); a completion timer that fires that late ends up in the request's
p99. The median lateness is absorbed by the completion lead (device/timing.py), but not the
tail, so the card sleeps only until ``window`` before a completion is due and spins the rest.
:class:`SpinWindow` sets ``window`` from measurements: the recent p99 of how late the card's own
timed sleeps woke (:data:`SPIN_QUANTILE`; a sleep that ends ``window`` early wakes as late as
one that does not), at most the profile's ``timer_spin_s`` (0: the card never spins). A card
spins only while a completion is due within the window, so an idle card costs no CPU, and not
at all while the host's cores are contended: when some task waited for a CPU more than
:data:`MAX_CONTENDED_SHARE` of the last heartbeat interval (Linux PSI, ``/proc/pressure/cpu``
"some"), a spinning card would take a core from the processes it waits for (the broker, the
clients, the other cards). The same PSI figure is where the card's run-queue delay shows; no
PSI (an old kernel, another system): never contended.

The profile knob ``timer_spin_s`` (default 1 ms) is the cap; a card spins per completion about
the window less its sleep's lateness. Measured (``python -m benchmarks.tail``, 2 vCPUs, 5 ms
model): 1 card at 1 in flight, the timer's median lateness 0.13 → 0.015 ms, its p90 excess
halved, the cards' CPU +55 ms/s (200 completions/s: ~0.3 ms each); 8 cards at 70 % with the
rule off (every card spinning): p50 ×1.045 → ×1.18, p99 ×1.74 → ×2.17, cards' CPU 460 → 1030
ms/s, hence the contention rule (with it, 8 cards do not spin: as without).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

from device.timing import RunningQuantile

__all__ = [
    "SPIN_QUANTILE",
    "MAX_CONTENDED_SHARE",
    "PSI_CPU_PATH",
    "SpinWindow",
    "psi_some_us",
    "tighten_timer_slack",
]

logger = logging.getLogger(__name__)

SPIN_QUANTILE = 0.99
"""The quantile of recent sleep lateness a card spins for (capped by ``timer_spin_s``)."""
MAX_CONTENDED_SHARE = 0.25
"""The share of the last heartbeat interval some task waited for a CPU above which no card
spins (PSI "some"; on 2 cores, benchmarks.tail: 1 card at 1 in flight 0.05–0.17 with another
benchmark running beside it, 8 cards at 70 % 0.44–0.71)."""
PSI_CPU_PATH = "/proc/pressure/cpu"
_SAMPLES, _EVERY = 256, 32  # lateness samples kept; the quantile is recomputed every _EVERY
_PR_SET_TIMERSLACK = 29  # linux/prctl.h
_TIMER_SLACK_NS = 1000


def psi_some_us(path: str = PSI_CPU_PATH) -> int | None:
    """The host's cumulative CPU pressure, "some" line's ``total`` (µs some task waited for a
    CPU), or None where there is none."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline()
        return int(line.rsplit(b"total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


class SpinWindow:
    """How long before a due completion the card loop stops sleeping and spins
    (:attr:`value`, s; 0.0: it sleeps all the way).

    ``cap_s``: the profile's ``timer_spin_s`` (0 disables it all); ``pressure``: the PSI reader
    (:func:`psi_some_us`; a fake one in tests)."""

    __slots__ = ("cap_s", "lateness", "value", "contended", "spun_s", "_pressure", "_mark")

    def __init__(self, cap_s: float, pressure=psi_some_us) -> None:
        self.cap_s = max(0.0, cap_s)
        self.lateness = RunningQuantile(_SAMPLES, _EVERY, SPIN_QUANTILE)
        self.value = 0.0
        self.contended = False
        self.spun_s = 0.0  # total time spun (the card's stats: its CPU cost)
        self._pressure = pressure
        self._mark: tuple[float, int] | None = None  # (time, PSI total) of the last tick

    def woke(self, wake_s: float, slept: bool, clock=time.monotonic) -> bool:
        """The card loop's sleep until ``wake_s`` (``slept``: it did sleep, not just look)
        ended without a message: note how late it woke; False if it woke early (a spurious
        wake-up: the loop sleeps again)."""
        late_s = clock() - wake_s
        if late_s < 0.0:
            return False
        if slept and self.cap_s > 0.0 and self.lateness.add(late_s):
            self._update()
        return True

    def tick(self, now: float) -> None:
        """Once per heartbeat interval (the card loop): look at the host's CPU pressure."""
        if self.cap_s <= 0.0:
            return
        total = self._pressure()
        if total is None:
            self.contended, self._mark = False, None
            return
        if self._mark is not None and now > self._mark[0]:
            share = (total - self._mark[1]) / 1e6 / (now - self._mark[0])
            self.contended = share > MAX_CONTENDED_SHARE
            self._update()
        self._mark = (now, total)

    def stats(self) -> dict[str, float]:
        """For the card's heartbeat stats: the window (µs), whether the host is contended,
        the total time spun (ms: the CPU the hybrid wait cost)."""
        return {
            "spin_us": round(self.value * 1e6, 1),
            "spin_contended": self.contended,
            "spun_ms": round(self.spun_s * 1e3, 1),
        }

    def _update(self) -> None:
        self.value = 0.0 if self.contended else min(self.cap_s, self.lateness.value)

    def spin(
        self, due_s: float, look: Callable[[], tuple[bool, list]], clock=time.monotonic
    ) -> tuple[bool, list]:
        """Spin until ``due_s`` or until ``look`` (a non-blocking look at the socket: its
        (readable?, messages)) finds a message; what it found, (False, []) at ``due_s``."""
        start_s = now_s = clock()
        try:
            while now_s < due_s:
                readable, inbound = look()
                if readable:
                    return readable, inbound
                now_s = clock()
            return False, []
        finally:
            self.spun_s += now_s - start_s


def tighten_timer_slack() -> None:
    """Ask Linux to end this process's sleeps within 1 µs of their timeout instead of the
    default 50 µs: a card's completions are timers. Best effort (other systems: no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("timer slack unchanged")
