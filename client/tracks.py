"""Per-stream completion bookkeeping of the client (:class:`StreamTrack`) and the client's task
ledger (:class:`Ledger`), kept by :class:`client.session.Session` under its condition."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from core.errors import ACL_SUCCESS

__all__ = ["StreamTrack", "Ledger", "HELD_FOR_RECORD"]

HELD_FOR_RECORD = "record"
"""The gate of a held ``stream_wait_event`` whose event record is itself still held in the client
(behind a blocking callback): the stream's tasks stay held until the record is sent
(``client.callbacks`` releases them)."""


@dataclass(eq=False)
class StreamTrack:
    """Completion bookkeeping of one stream (or a device-internal queue) in this process."""

    device_id: int
    stream_id: int
    pending: deque[int] = field(default_factory=deque)
    error: int = ACL_SUCCESS  # first task error not yet returned by a sync
    last_task: int = 0
    host_pending: set[int] = field(default_factory=set)  # host callbacks not yet returned
    held: list | None = None  # (task, gate) held behind a blocking host callback, unsent
    gate_next: bool = False  # the next task submitted is a blocking callback's marker
    thread_id: int = 0  # native id of the thread that submitted the latest task (exception info)

    def blocks(self, task_id: int) -> bool:
        if self.pending and self.pending[0] <= task_id:
            return True
        return bool(self.host_pending) and min(self.host_pending) <= task_id


@dataclass
class Ledger:
    """Every task this client submitted ends in exactly one of these counters."""

    submitted: int = 0
    completed: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    abandoned: int = 0  # still pending when the session closed (never synced, or dropped)

    def as_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": {str(code): n for code, n in sorted(self.failed.items())},
            "abandoned": self.abandoned,
        }
