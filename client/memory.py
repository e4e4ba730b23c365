"""The client's memory layer: where device and pinned-host bytes are, and copies between them.

Synchronous memcpy never sends a message: the client has every card's HBM segment mapped and
copies directly (and, like hardware, does not wait for any stream). ``LocalShmMemory`` is the
only implementation today; a remote card (no shared memory) would get a data-frame
implementation of the same small interface (``address``, ``attach``, ``detach``, ``close``).

Pinned host memory (``malloc_host``) is a shm segment of its own, so that a card can run a
queued ``memcpy_async`` to or from it; pageable host memory is only ever touched by the client.
"""

from __future__ import annotations

import atexit
import bisect
import ctypes
import functools
import itertools
import logging
import mmap
import os
import threading
import weakref
from collections.abc import Callable

import numpy as np

from core.errors import ACL_ERROR_RT_MEMORY_ALLOCATION, AclError
from device.memory import HbmSegment, decode_ptr

__all__ = ["AllocationTable", "HostPool", "LocalShmMemory", "poison", "poison_fill", "host_view"]

logger = logging.getLogger(__name__)

_POISON_BYTE = 0xA5


def host_view(address: int, nbytes: int) -> np.ndarray:
    """A writable uint8 view of host memory at ``address`` (no copy)."""
    return np.frombuffer((ctypes.c_char * nbytes).from_address(address), dtype=np.uint8)


def poison(address: int, nbytes: int, dtype: np.dtype) -> None:
    """Fill a tensor with NaN (floating dtypes) or 0xA5 bytes: what an unsynced reader sees."""
    poison_fill(address, nbytes, dtype)()


def poison_fill(address: int, nbytes: int, dtype: np.dtype) -> Callable[[], None]:
    """:func:`poison` prepared once: a call that fills the tensor (the view is built now)."""
    if nbytes <= 0:
        return _nothing
    if np.issubdtype(dtype, np.floating) and nbytes % dtype.itemsize == 0:
        typed = host_view(address, nbytes).view(dtype)
        return functools.partial(typed.fill, np.nan)
    return functools.partial(ctypes.memset, address, _POISON_BYTE, nbytes)


def _nothing() -> None:
    return None


class AllocationTable:
    """Live device allocations of this process: pointer -> size, with range lookups."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._sizes: dict[int, int] = {}
        self._devices: dict[int, int] = {}
        self._generations = itertools.count(1)
        self.generation = 0  # changes whenever an allocation goes away (cache key)

    def add(self, ptr: int, size: int, device_id: int) -> None:
        bisect.insort(self._starts, ptr)
        self._sizes[ptr] = size
        self._devices[ptr] = device_id

    def remove(self, ptr: int) -> int | None:
        size = self._sizes.pop(ptr, None)
        if size is None:
            return None
        self._devices.pop(ptr)
        del self._starts[bisect.bisect_left(self._starts, ptr)]
        self.generation = next(self._generations)
        return size

    def size_of(self, ptr: int) -> int | None:
        return self._sizes.get(ptr)

    def find(self, ptr: int) -> tuple[int, int] | None:
        """(start, size) of the allocation containing ``ptr``."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i < 0:
            return None
        start = self._starts[i]
        size = self._sizes[start]
        return (start, size) if ptr < start + size else None

    def contains(self, ptr: int, nbytes: int) -> bool:
        found = self.find(ptr)
        return found is not None and ptr + nbytes <= found[0] + found[1]

    def on_device(self, device_id: int) -> list[int]:
        return [p for p, d in self._devices.items() if d == device_id]

    def __len__(self) -> int:
        return len(self._sizes)


# Pinned segment names are unique for the life of the process (not per acl.init): a card keeps
# the host segments it has mapped by name, so a name used twice would let it copy from the old,
# unlinked mapping. The token tells apart two processes that reuse a pid (a container restart).
_HOST_TOKEN = os.urandom(4).hex()
_HOST_IDS = itertools.count(1)
_HOST_IDS_LOCK = threading.Lock()


def _next_host_id() -> int:
    with _HOST_IDS_LOCK:
        return next(_HOST_IDS)


_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _unlink_at_exit() -> None:
    """A program that exits without acl.finalize leaves no pinned segment in /dev/shm."""
    for pool in list(_LIVE_POOLS):
        pool.unlink_all()


class HostPool:
    """Pinned host memory: one shm segment per ``malloc_host`` call, named for the farm.

    ``on_free(name)`` runs after a segment is unlinked and closed here (the runtime tells the
    cards that may have it mapped to let go of it)."""

    def __init__(self, farm_id: str, on_free: Callable[[str], None] | None = None) -> None:
        self._prefix = f"npufarm-{farm_id}-h{os.getpid()}-{_HOST_TOKEN}-"
        self._segments: dict[int, HbmSegment] = {}
        self._starts: list[int] = []
        self._lock = threading.Lock()
        self._on_free = on_free
        _LIVE_POOLS.add(self)

    def malloc(self, size: int) -> int:
        length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            segment = HbmSegment.create(f"{self._prefix}{_next_host_id()}", length)
        except OSError as exc:  # /dev/shm full, too many open files: an allocation failure
            raise AclError(f"pinned host memory: {exc}", ACL_ERROR_RT_MEMORY_ALLOCATION) from None
        try:
            segment.prefault(0, length)
        except BaseException:
            segment.unlink()
            segment.close()
            raise
        with self._lock:
            self._segments[segment.base_address] = segment
            bisect.insort(self._starts, segment.base_address)
        return segment.base_address

    def free(self, ptr: int) -> bool:
        with self._lock:
            segment = self._segments.pop(ptr, None)
            if segment is None:
                return False
            del self._starts[bisect.bisect_left(self._starts, ptr)]
        segment.unlink()
        segment.close()
        if self._on_free is not None:
            try:
                self._on_free(segment.name)
            except Exception:  # the segment is gone here whatever a card is told
                logger.exception("telling the cards about freed host segment %s", segment.name)
        return True

    def locate(self, ptr: int, nbytes: int) -> tuple[str, int] | None:
        """``(segment name, offset)`` if ``[ptr, ptr+nbytes)`` lies in pinned memory."""
        with self._lock:
            i = bisect.bisect_right(self._starts, ptr) - 1
            if i < 0:
                return None
            segment = self._segments[self._starts[i]]
        offset = ptr - segment.base_address
        return (segment.name, offset) if offset + nbytes <= segment.size_bytes else None

    def names(self) -> list[str]:
        with self._lock:
            return [segment.name for segment in self._segments.values()]

    def __len__(self) -> int:
        return len(self._segments)

    def unlink_all(self) -> None:
        """Remove every live segment's file (the mappings stay valid until closed)."""
        with self._lock:
            segments = list(self._segments.values())
        for segment in segments:
            segment.unlink()

    def close(self) -> None:
        with self._lock:
            ptrs = list(self._segments)
        for ptr in ptrs:
            self.free(ptr)


class LocalShmMemory:
    """Device memory reached through the cards' shm segments mapped into this process."""

    def __init__(self) -> None:
        self._segments: dict[int, tuple[int, HbmSegment]] = {}  # device -> (epoch, segment)
        self._lock = threading.Lock()

    def attach(self, device_id: int, epoch: int, shm_name: str) -> None:
        with self._lock:
            current = self._segments.get(device_id)
            if current is not None and current[0] == epoch:
                return
            segment = HbmSegment.attach(shm_name)
            self._segments[device_id] = (epoch, segment)
        if current is not None:
            current[1].close()

    def detach(self, device_id: int) -> None:
        with self._lock:
            current = self._segments.pop(device_id, None)
        if current is not None:
            current[1].close()

    def devices(self) -> list[int]:
        """The devices whose HBM is attached now."""
        with self._lock:
            return list(self._segments)

    def segment_name(self, device_id: int) -> str:
        return self._segments[device_id][1].name

    def address(self, ptr: int) -> int:
        """The address in this process of device pointer ``ptr`` (caller validated it)."""
        device_id, _, offset = decode_ptr(ptr)
        return self._segments[device_id][1].base_address + offset

    def close(self) -> None:
        for device_id in list(self._segments):
            self.detach(device_id)
