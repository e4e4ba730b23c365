"""skip_sync = "poison": which output bytes are poisoned at enqueue, decided per byte range.

Outputs of an enqueued execute are filled with NaN (floats) or a byte pattern at enqueue, so a
read that skips the sync sees garbage every run. A range must not be poisoned while this task
or a pending one (submitted, not completed) reads it: that would corrupt the input of a correct
pipeline. The decision is made on **byte ranges**, not allocations: arena-style programs split
one ``malloc`` into input and output regions, and an allocation-wide rule never poisoned an
output that shares its allocation with any input, so a skipped sync read stale bytes silently.

Pending reads are kept as a count per distinct range: a pipeline resubmits the same few buffers,
so the ranges to scan stay few however many tasks are in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

__all__ = ["PendingReads", "Span", "overlaps", "spans_of"]

logger = logging.getLogger(__name__)

Span = tuple[int, int]  # [start, end) in device pointer space


def spans_of(refs: Iterable) -> tuple[Span, ...]:
    """``[(ptr, nbytes), ...]`` as non-empty ``(start, end)`` ranges."""
    return tuple((int(ptr), int(ptr) + int(n)) for ptr, n in refs if int(n) > 0)


def overlaps(span: Span, spans: Iterable[Span]) -> bool:
    start, end = span
    return any(lo < end and start < hi for lo, hi in spans)


class PendingReads:
    """The byte ranges read by tasks submitted and not yet completed. Thread-safe; ``add`` and
    ``done`` run under the session's condition, ``busy`` on the submitting thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._of_task: dict[int, tuple[Span, ...]] = {}
        self._count: dict[Span, int] = {}

    def add(self, task_id: int, spans: tuple[Span, ...]) -> None:
        if not spans:
            return
        with self._lock:
            self._of_task[task_id] = spans
            for span in spans:
                self._count[span] = self._count.get(span, 0) + 1

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
            return overlaps(span, self._count)

    def __len__(self) -> int:
        with self._lock:
            return len(self._of_task)
