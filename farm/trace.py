"""A Chrome/Perfetto trace of the farm: every card's streams, faults, card losses and restarts.

The broker already decodes each COMPLETE (for the ledger); with tracing on it also keeps one
complete-event per task: the card is the process, the (client, stream) pair the thread, the span
the task's run on the card, with its queueing time and code as arguments. Faults and card state
changes are instant events. Open the file in ui.perfetto.dev or chrome://tracing.

Writing a trace can take seconds (a million events); the broker takes a :meth:`snapshot` on its
loop (a list of references, milliseconds) and :func:`write_trace_events` it in a thread. Events
are encoded one by one, so the writing thread gives the loop the GIL between events.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["TraceRecorder", "write_trace_events"]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_EVENTS = 1_000_000  # oldest task events are dropped beyond this (a ring buffer)


def _times(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


class TraceRecorder:
    """Collects trace events; times are ``time.monotonic()`` seconds, shown from farm start."""

    def __init__(self, farm_start_s: float, max_events: int = _DEFAULT_MAX_EVENTS) -> None:
        self.farm_start_s = farm_start_s
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._threads: dict[tuple[int, bytes, int], int] = {}  # (card, client, stream) -> tid
        self._names: list[dict[str, Any]] = []

    def _us(self, t_s: float) -> float:
        return round((t_s - self.farm_start_s) * 1e6, 1)

    def _tid(self, card: int, client: bytes, stream: int) -> int:
        key = (card, client, stream)
        tid = self._threads.get(key)
        if tid is None:
            tid = self._threads[key] = len(self._threads) + 1
            name = f"{client.decode(errors='replace')} stream {stream & 0xFFFFFFFF:#x}"
            self._names.append(
                {"ph": "M", "name": "thread_name", "pid": card, "tid": tid, "args": {"name": name}}
            )
        return tid

    def tasks(self, card: int, epoch: int, client: bytes, rows: list) -> None:
        """Completion rows ``[task, code, start_s, end_s, stream, queued_s]`` of one card."""
        for row in rows:
            if not isinstance(row, list) or len(row) < 6:
                continue
            task_id, code, start_s, end_s, stream, queued_s = row[:6]
            if not (isinstance(stream, int) and _times(start_s, end_s, queued_s)):
                continue
            event = {
                "ph": "X",
                "name": "task" if code == 0 else f"task failed {code}",
                "cat": "task",
                "pid": card,
                "tid": self._tid(card, client, stream),
                "ts": self._us(start_s),
                "dur": max(0.0, round((end_s - start_s) * 1e6, 1)),
                "args": {
                    "task": task_id,
                    "code": code,
                    "epoch": epoch,
                    "queued_us": round((start_s - queued_s) * 1e6, 1),
                },
            }
            self.events.append(event)

    def syncs(self, client: bytes, rows: list) -> None:
        """A client's sync waits: ``[device, stream, start_s, end_s, code, what]`` rows."""
        for row in rows:
            if not isinstance(row, list) or len(row) != 6:
                continue
            device, stream, start_s, end_s, code, what = row
            if not (isinstance(device, int) and isinstance(stream, int) and _times(start_s, end_s)):
                continue
            self.events.append(
                {
                    "ph": "X",
                    "name": f"sync {what}" + (f" -> {code}" if code else ""),
                    "cat": "client",
                    "pid": device,
                    "tid": self._tid(device, client, stream),
                    "ts": self._us(start_s),
                    "dur": max(0.0, round((end_s - start_s) * 1e6, 1)),
                    "args": {"code": code},
                }
            )

    def instant(
        self,
        name: str,
        card: int,
        t_s: float,
        args: dict[str, Any] | None = None,
        since_start: bool = False,
    ) -> None:
        """A marker on a card's timeline (``t_s`` monotonic, or since farm start)."""
        ts = round(t_s * 1e6, 1) if since_start else self._us(t_s)
        self.events.append(
            {
                "ph": "i",
                "s": "p",
                "name": name,
                "cat": "farm",
                "pid": card,
                "tid": 0,
                "ts": ts,
                "args": args or {},
            }
        )

    def snapshot(self, cards: list[int]) -> list[dict[str, Any]]:
        """Every event now (metadata first); recorded events are never changed afterwards, so
        the list can be written by another thread while recording goes on."""
        processes = [
            {"ph": "M", "name": "process_name", "pid": card, "args": {"name": f"card {card}"}}
            for card in cards
        ]
        return [*processes, *self._names, *self.events]

    def to_json(self, cards: list[int]) -> dict[str, Any]:
        return {"traceEvents": self.snapshot(cards), "displayTimeUnit": "ms"}

    def write(self, path: str | Path, cards: list[int]) -> int:
        """Write the trace; return the number of events."""
        return write_trace_events(path, self.snapshot(cards))


def write_trace_events(path: str | Path, events: list[dict[str, Any]]) -> int:
    """Write ``events`` as a Chrome trace file; return how many. Raises ``OSError`` (a path
    that cannot be written) before writing anything elsewhere."""
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"traceEvents": [')
        for index, event in enumerate(events):
            if index:
                f.write(",\n")
            f.write(json.dumps(event))
        f.write('], "displayTimeUnit": "ms"}\n')
    logger.info("trace with %d events written to %s", len(events), path)
    return len(events)
