"""The handle primitive behind :mod:`client.handles`: one process-wide counter, one table per kind.

Handles are nonzero ints drawn from one process-wide counter, so they are unique across all kinds
and all sessions and are never reused after a destroy. A :class:`HandleTable` holds the live
entries of one kind plus a bounded history of destroyed handles (to tell a double destroy from
junk). Pure and thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS

__all__ = [
    "HANDLE_BASE",
    "HANDLE_STEP",
    "UINT64_MAX",
    "HandleTable",
    "as_int",
]

logger = logging.getLogger(__name__)

HANDLE_BASE = 0x7F00_0000_1000
"""First handle value handed out in a process."""
HANDLE_STEP = 16
"""Distance between two consecutive handles."""

UINT64_MAX = 2**64 - 1
"""Largest value a pointer- or size-valued argument may take."""

_handle_lock = threading.Lock()
_handle_counter = itertools.count(HANDLE_BASE, HANDLE_STEP)


def _new_handle() -> int:
    """The next process-wide handle (never 0, never reused)."""
    with _handle_lock:
        return next(_handle_counter)


def as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integer (``bool`` excluded), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


_T = TypeVar("_T")


class HandleTable(Generic[_T]):
    """One kind of handle: live entries plus a bounded history of destroyed handles."""

    def __init__(self, kind: str, history: int) -> None:
        self.kind = kind
        self.lock = threading.Lock()
        self.live: dict[int, _T] = {}
        self._destroyed: OrderedDict[int, None] = OrderedDict()
        self._history = history

    def add(self, value: _T) -> int:
        handle = _new_handle()
        with self.lock:
            self.live[handle] = value
        return handle

    def get(self, handle: Any) -> _T | None:
        key = as_int(handle)
        if key is None:
            return None
        with self.lock:
            return self.live.get(key)

    def remove(self, handle: Any) -> int:
        """Destroy ``handle``; 0 or 100000 (unknown or already destroyed)."""
        key = as_int(handle)
        with self.lock:
            if key is not None and key in self.live:
                del self.live[key]
                self._destroyed[key] = None
                while len(self._destroyed) > self._history:
                    self._destroyed.popitem(last=False)
                return ACL_SUCCESS
            double = key is not None and key in self._destroyed
        if double:
            logger.debug("destroy of already destroyed %s handle %#x", self.kind, key)
        else:
            logger.debug("destroy of unknown %s handle %r", self.kind, handle)
        return ACL_ERROR_INVALID_PARAM

    def was_destroyed(self, handle: Any) -> bool:
        key = as_int(handle)
        with self.lock:
            return key is not None and key in self._destroyed

    def clear(self) -> None:
        with self.lock:
            self.live.clear()
            self._destroyed.clear()

    def __len__(self) -> int:
        with self.lock:
            return len(self.live)
