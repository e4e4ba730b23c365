"""Building ONNX models off the card's loop, so a long model load never silences its heartbeats.

An onnxruntime session for a real model takes from milliseconds to seconds to build (0.15 s for
a 67 MB MatMul here), longer than a heartbeat expiry. The card hands such builds to one worker
thread (onnxruntime releases the GIL while it builds) and keeps polling, beating and running
tasks; each turn it collects the finished builds and answers their ``load`` requests::

    card loop: op_load(onnx) ──submit──▶ worker thread: build_kernel(spec)
               ◀──finished() each turn── (spec, kernel | exception)
               REPLY {"rid", "handle"} or {"rid", "code"}

Synthetic models build in microseconds and stay on the loop.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from device.kernels import build_kernel
from device.model_spec import ModelSpec

__all__ = ["PendingLoad", "ModelLoader"]

logger = logging.getLogger(__name__)


@dataclass
class PendingLoad:
    client: bytes
    rid: int
    spec: ModelSpec
    future: Future


class ModelLoader:
    """One worker thread building kernels; the card polls :meth:`finished` each turn."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self._pool: ThreadPoolExecutor | None = None
        self.pending: list[PendingLoad] = []

    def submit(self, client: bytes, rid: int, spec: ModelSpec) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"card{self.device_id}-load")
        self.pending.append(PendingLoad(client, rid, spec, self._pool.submit(build_kernel, spec)))

    def finished(self) -> list[tuple[PendingLoad, Any, BaseException | None]]:
        """The loads whose build ended since the last call: (load, kernel, exception)."""
        done = [p for p in self.pending if p.future.done()]
        if not done:
            return []
        self.pending = [p for p in self.pending if not p.future.done()]
        return [(p, *_outcome(p.future)) for p in done]

    def drop_client(self, client: bytes) -> None:
        """A client left: its builds finish unseen (their kernels are dropped)."""
        self.pending = [p for p in self.pending if p.client != client]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.pending.clear()


def _outcome(future: Future) -> tuple[Any, BaseException | None]:
    exc = future.exception()
    return (None, exc) if exc is not None else (future.result(), None)
