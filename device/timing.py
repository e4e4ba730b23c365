"""When a stream task starts and ends in the card's model: pure functions of times, no clock.

A task's modelled time is anchored at its **submit**, not at the card's receipt of it: the client
stamps each task with ``time.monotonic()`` as it sends it (``ts``, core/protocol.py), and the
card starts it, in the model, at ::

    start = max(submitted, end of the stream's previous task, when its execution slot freed)
    end   = max(start + max(modelled duration, min_completion_delay_s), compute done)
    sent  = max(end - lead, start + min_completion_delay_s, compute done)

all on the host's CLOCK_MONOTONIC, which every local process shares. So the transport from
client to card, when shorter than the model, is absorbed (a 5 ms kernel ends 5 ms after its
submit, not 5 ms after the card got it); a stream's next task starts where the previous one
ended in the model (the timer firing a little late does not add up task after task); and a task
whose end is already past when the card starts it (transport longer than the model) ends at
once, when its compute is done: its client sees the transport's latency, not the kernel's.

The way back is absorbed too: the card sends a completion ``lead`` before the modelled end
(:class:`CompletionLead`: the median of the last tasks' client-to-card transport, taken as the
card-to-client one, plus the median of how late the card's timers fire and of how long the card
takes from a timer firing to the completion sent; at most
:data:`MAX_LEAD_S`), so that it reaches the client near the modelled end. The completion row
still says the modelled start and end (event times, the trace); only the outputs land in memory
that much early, never before the compute is done or before ``min_completion_delay_s`` (the
race window of a missing sync is kept whole).

The stamp is trusted only within :data:`MAX_STAMP_AGE_S` of the card's receipt: a stamp in the
future (another host's clock, garbage) counts as the receipt, one older than that as the
receipt minus it, so no stamp can stall a card or move a task far into the past. A task
without a stamp (a test harness, an older client) is anchored at its receipt. A card on
another host (not emulated yet) shares no clock with its clients and would need another anchor
(its receipt, or a clock offset measured over the link).
"""

from __future__ import annotations

import logging
import math

__all__ = [
    "MAX_STAMP_AGE_S",
    "MAX_LEAD_S",
    "submitted_at",
    "modelled_start",
    "modelled_end",
    "send_at",
    "RunningQuantile",
    "RunningMedian",
    "CompletionLead",
]

logger = logging.getLogger(__name__)

MAX_STAMP_AGE_S = 1.0
"""How far before its receipt a task's submit stamp is believed (longer: clamped to this)."""
MAX_LEAD_S = 0.001
"""The most a completion is sent ahead of its modelled end (the way back of one local hop)."""


def submitted_at(stamp: object, received_s: float) -> float:
    """When a task counts as submitted: its client's ``stamp`` clamped to
    ``[received_s - MAX_STAMP_AGE_S, received_s]``; ``received_s`` for a missing or non-finite
    one (validate_task has refused a stamp that is not a number)."""
    if type(stamp) not in (float, int) or not math.isfinite(stamp):
        return received_s
    return min(received_s, max(received_s - MAX_STAMP_AGE_S, float(stamp)))


def modelled_start(submitted_s: float, stream_end_s: float, slot_free_s: float) -> float:
    """A task's start in the model: its submit, the end of the task before it on its stream
    (for a wait, also the awaited stream's), the time its execution slot freed (0 for a task
    that takes none), whichever is latest."""
    return max(submitted_s, stream_end_s, slot_free_s)


def modelled_end(start_s: float, duration_s: float, min_delay_s: float, computed_s: float) -> float:
    """A task's end: ``start + max(duration, min_delay)``, but never before its real compute is
    done (``computed_s``: a slow kernel sets its own pace; so does a transport longer than the
    model, since a task cannot end before the card computed it)."""
    return max(start_s + max(duration_s, min_delay_s), computed_s)


def send_at(
    start_s: float, end_s: float, min_delay_s: float, computed_s: float, lead_s: float
) -> float:
    """When the card sends a task's completion: ``lead_s`` before its modelled end, so that it
    arrives about then, but never before the compute is done nor within the minimum delay."""
    return max(end_s - lead_s, start_s + min_delay_s, computed_s)


class RunningQuantile:
    """The ``quantile`` (0..1) of the last ``window`` samples, recomputed every ``every``
    samples (a few microseconds then, an append otherwise); 0.0 until the first recompute."""

    __slots__ = ("window", "every", "quantile", "samples", "value", "_next", "_count")

    def __init__(self, window: int = 64, every: int = 16, quantile: float = 0.5) -> None:
        self.window, self.every, self.quantile = window, every, quantile
        self.samples: list[float] = []
        self.value = 0.0
        self._next = self._count = 0

    def add(self, sample: float) -> bool:
        """Take a sample; True when :attr:`value` was recomputed."""
        if len(self.samples) < self.window:
            self.samples.append(sample)
        else:
            self.samples[self._next] = sample
        self._next = (self._next + 1) % self.window
        self._count += 1
        if self._count % self.every:
            return False
        self._recompute()
        return True

    def add_many(self, samples: list[float]) -> bool:
        """Take several samples at once (a message's worth: one call, not one per sample);
        the value is recomputed once, after them, if the count passed a multiple of
        ``every`` meanwhile. True when :attr:`value` was recomputed."""
        count = len(samples)
        if count >= self.window:  # the window is the last ``window`` of them
            self.samples = samples[count - self.window :]
            self._next = 0
        else:
            for sample in samples:
                if len(self.samples) < self.window:
                    self.samples.append(sample)
                else:
                    self.samples[self._next] = sample
                self._next = (self._next + 1) % self.window
        before = self._count
        self._count += count
        if self._count // self.every == before // self.every:
            return False
        self._recompute()
        return True

    def _recompute(self) -> None:
        ordered = sorted(self.samples)
        self.value = ordered[min(len(ordered) - 1, int(len(ordered) * self.quantile))]


class RunningMedian(RunningQuantile):
    """The median of the last ``window`` samples (:class:`RunningQuantile` at 0.5)."""

    __slots__ = ()

    def __init__(self, window: int = 64, every: int = 16) -> None:
        super().__init__(window, every, 0.5)


class CompletionLead:
    """How long before its modelled end a card sends a completion (:attr:`value`, seconds):
    the median transport of the tasks' way in (receipt − submit stamp), taken for the way back,
    plus the median lateness of the card's timers, plus the median time from a timer firing to
    its completion sent (the card loop's own turn: publish, free, pack, send), within
    ``[0, MAX_LEAD_S]``."""

    __slots__ = ("transport", "lateness", "flush", "value")

    def __init__(self, window: int = 64, every: int = 16) -> None:
        self.transport = RunningMedian(window, every)
        self.lateness = RunningMedian(window, every)
        self.flush = RunningMedian(window, every)
        self.value = 0.0

    def arrived(self, submitted_s: float, received_s: float) -> None:
        """A stamped task (its clamped stamp) reached the card at ``received_s``."""
        if self.transport.add(received_s - submitted_s):
            self._update()

    def arrived_many(self, submitted: list[float], received_s: float) -> None:
        """The stamped tasks of one message (their clamped stamps) reached the card at
        ``received_s``: one sample each, taken in one call."""
        if len(submitted) == 1:  # (one task per message: the routing path)
            recomputed = self.transport.add(received_s - submitted[0])
        else:
            recomputed = self.transport.add_many([received_s - stamp for stamp in submitted])
        if recomputed:
            self._update()

    def fired(self, late_s: float) -> None:
        """A completion timer fired ``late_s`` after its time."""
        if self.lateness.add(late_s):
            self._update()

    def flushed(self, after_s: float) -> None:
        """The completions of timers that fired were sent ``after_s`` after they fired."""
        if self.flush.add(after_s):
            self._update()

    def _update(self) -> None:
        total = self.transport.value + self.lateness.value + self.flush.value
        self.value = min(MAX_LEAD_S, max(0.0, total))
