"""skip_sync = "poison": which output bytes are poisoned at enqueue, decided per byte range.

Outputs of an enqueued execute are filled with NaN (floats) or a byte pattern at enqueue, so a
read that skips the sync sees garbage every run. A range must not be poisoned while this task
or a pending one (submitted, not completed) reads it: that would corrupt the input of a correct
pipeline. The decision is made on **byte ranges**, not allocations: arena-style programs split
one ``malloc`` into input and output regions, and an allocation-wide rule never poisoned an
output that shares its allocation with any input, so a skipped sync read stale bytes silently.

Pending reads are kept as a count per distinct range: a pipeline resubmits the same few buffers,
so the ranges stay few however many tasks are in flight, and which of them overlap a queried
output range is worked out once, not at every enqueue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["PendingReads", "Span", "overlaps", "spans_of"]

logger = logging.getLogger(__name__)

Span = tuple[int, int]  # [start, end) in device pointer space
_T = TypeVar("_T")
_MAX_KNOWN = 4096  # distinct read ranges (and queried ranges) kept before starting again


def spans_of(refs: Iterable) -> tuple[Span, ...]:
    """``[(ptr, nbytes), ...]`` as non-empty ``(start, end)`` ranges."""
    return tuple((int(ptr), int(ptr) + int(n)) for ptr, n in refs if int(n) > 0)


def overlaps(span: Span, spans: Iterable[Span]) -> bool:
    start, end = span
    return any(lo < end and start < hi for lo, hi in spans)


class PendingReads:
    """The byte ranges read by tasks submitted and not yet completed. Thread-safe; ``add`` and
    ``done`` run under the session's condition, ``busy`` and ``unread`` on the submitting
    thread.

    A query does not scan the pending ranges: which known read ranges overlap a queried range
    is worked out once (``_overlapping``) and kept until a read range never seen before is
    added; a pipeline reads the same few ranges task after task, so a query is then a look-up
    of counts (at the enqueue of every execute, skip_sync poison)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._of_task: dict[int, tuple[Span, ...]] = {}
        self._count: dict[Span, int] = {}
        self._known: set[Span] = set()  # every read range added since the cache was emptied
        self._overlapping: dict[Span, tuple[Span, ...]] = {}  # query -> known ranges it meets

    def add(self, task_id: int, spans: tuple[Span, ...]) -> None:
        if not spans:
            return
        with self._lock:
            self._of_task[task_id] = spans
            count = self._count
            for span in spans:
                count[span] = count.get(span, 0) + 1
                if span not in self._known:
                    self._learn(span)

    def _learn(self, span: Span) -> None:
        """A read range not seen before (caller holds the lock): the cached overlaps are stale."""
        if len(self._known) >= _MAX_KNOWN:  # bounded: start again from the pending ranges
            self._known = set(self._count)
        self._known.add(span)
        self._overlapping.clear()

    def done(self, task_id: int) -> None:
        with self._lock:
            for span in self._of_task.pop(task_id, ()):
                left = self._count.get(span, 1) - 1
                if left:
                    self._count[span] = left
                else:
                    self._count.pop(span, None)

    def busy(self, span: Span) -> bool:
        """A pending task reads some byte of ``span``."""
        with self._lock:
            return self._busy(span)

    def unread(self, fills: Iterable[tuple[Span, _T]]) -> list[_T]:
        """The second items of the ``(span, item)`` pairs whose span no pending task reads."""
        with self._lock:
            return [item for span, item in fills if not self._busy(span)]

    def _busy(self, span: Span) -> bool:
        """(caller holds the lock)"""
        known = self._overlapping.get(span)
        if known is None:
            if len(self._overlapping) >= _MAX_KNOWN:
                self._overlapping.clear()
            start, end = span
            known = tuple(s for s in self._known if s[0] < end and start < s[1])
            self._overlapping[span] = known
        return bool(known) and not self._count.keys().isdisjoint(known)

    def __len__(self) -> int:
        with self._lock:
            return len(self._of_task)
