"""Emulated HBM: the shared-memory segment, its allocator and the device-pointer encoding.

A card's device memory is one sparse POSIX shared-memory file in ``/dev/shm``; clients attach
the same file and copy tensor bytes directly, so no tensor data travels in messages.

Device pointers are plain ints that cannot be confused with host addresses::

    bits 60-63  tag 0xA
    bits 48-59  device id (0..4095)
    bits 40-47  card epoch & 0xFF (a pointer from before a card restart is recognisably stale)
    bits  0-39  byte offset into the card's segment (1 TiB)

Allocation follows ACL's size rules: the requested size is rounded up to 32 bytes plus 32 bytes
of padding, and every block starts 64-byte aligned. :class:`Allocator` is pure bookkeeping
(best fit over a coalescing free list, O(log n) searches with :mod:`bisect`); it prefers ranges
that were used before over fresh ones, because a fresh shm page costs a page fault on first touch.
"""

from __future__ import annotations

import bisect
import errno
import logging
import mmap
import os
import re
import sys

import numpy as np

from core.errors import ACL_ERROR_RT_MEMORY_ALLOCATION, NpuFarmError

__all__ = [
    "PTR_TAG",
    "MAX_DEVICE_ID",
    "MAX_OFFSET",
    "ALLOC_ALIGN",
    "SIZE_GRANULE",
    "SIZE_PADDING",
    "SHM_DIR",
    "encode_ptr",
    "decode_ptr",
    "is_device_ptr",
    "rounded_alloc_size",
    "Allocator",
    "HbmSegment",
    "segment_name",
    "shm_free_bytes",
    "check_shm_capacity",
    "prefault_preserves_contents",
]

logger = logging.getLogger(__name__)

PTR_TAG = 0xA
MAX_DEVICE_ID = (1 << 12) - 1
MAX_OFFSET = (1 << 40) - 1
_TAG_SHIFT = 60
_DEVICE_SHIFT = 48
_EPOCH_SHIFT = 40
_EPOCH_MASK = 0xFF
_U64_LIMIT = 1 << 64

ALLOC_ALIGN = 64
SIZE_GRANULE = 32
SIZE_PADDING = 32

SHM_DIR = "/dev/shm"
_GIB = float(1 << 30)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_FARM_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# Python 3.11's mmap module lacks the constant; Linux >= 5.14 understands the raw value 23.
_MADV_POPULATE_WRITE: int | None = getattr(
    mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None
)
_populate_supported = _MADV_POPULATE_WRITE is not None
_PREFAULT_CHUNK = 4 << 20  # bytes committed per call (a few ms): the GIL is held meanwhile


# --------------------------------------------------------------------------- pointers


def encode_ptr(device_id: int, epoch: int, offset: int) -> int:
    """The device pointer for ``offset`` in card ``device_id``'s memory at ``epoch``."""
    if not 0 <= device_id <= MAX_DEVICE_ID:
        raise ValueError(f"device id {device_id} outside 0..{MAX_DEVICE_ID}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset {offset} outside 0..{MAX_OFFSET}")
    return (
        (PTR_TAG << _TAG_SHIFT)
        | (device_id << _DEVICE_SHIFT)
        | ((epoch & _EPOCH_MASK) << _EPOCH_SHIFT)
        | offset
    )


def decode_ptr(ptr: int) -> tuple[int, int, int] | None:
    """``(device_id, epoch & 0xFF, offset)`` of a device pointer, or None for anything else."""
    if not isinstance(ptr, int) or ptr < 0 or ptr >= _U64_LIMIT:
        return None
    if ptr >> _TAG_SHIFT != PTR_TAG:
        return None
    device_id = (ptr >> _DEVICE_SHIFT) & MAX_DEVICE_ID
    epoch = (ptr >> _EPOCH_SHIFT) & _EPOCH_MASK
    return device_id, epoch, ptr & MAX_OFFSET


def is_device_ptr(ptr: int) -> bool:
    """True when ``ptr`` carries the device tag (host addresses never do)."""
    return decode_ptr(ptr) is not None


# --------------------------------------------------------------------------- allocator


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def rounded_alloc_size(size: int) -> int:
    """ACL's accounted size of a ``size``-byte malloc: up to 32 B, plus 32 B of padding."""
    if size <= 0:
        raise ValueError(f"allocation size must be positive, got {size}")
    return _round_up(size, SIZE_GRANULE) + SIZE_PADDING


def _span(size: int) -> int:
    """Bytes a block reserves so the next block starts 64-byte aligned."""
    return _round_up(rounded_alloc_size(size), ALLOC_ALIGN)


class Allocator:
    """Pure best-fit allocator over ``[0, capacity)`` with a coalescing free list.

    Free ranges are kept twice: by start (to find neighbours when freeing) and by
    ``(length, start)`` (to find the best fit). The range touching the end of the capacity is the
    *tail*; it is used only when no earlier, already-touched range fits.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity_bytes}")
        self._capacity = int(capacity_bytes)
        self._limit = self._capacity - self._capacity % ALLOC_ALIGN
        self._free_starts: list[int] = []
        self._free_len: dict[int, int] = {}
        self._free_by_size: list[tuple[int, int]] = []
        self._live_starts: list[int] = []
        self._live: dict[int, tuple[int, int]] = {}  # start -> (user size, reserved span)
        self._used = 0
        self._high_water = 0
        if self._limit:
            self._add_free(0, self._limit)

    # -- properties

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes reserved by live blocks (rounded, padded and aligned)."""
        return self._used

    @property
    def free_bytes(self) -> int:
        return self._capacity - self._used

    @property
    def live_blocks(self) -> int:
        return len(self._live)

    @property
    def high_water(self) -> int:
        """End of the highest range ever handed out; memory above it was never touched."""
        return self._high_water

    # -- free-list bookkeeping

    def _add_free(self, start: int, length: int) -> None:
        bisect.insort(self._free_starts, start)
        self._free_len[start] = length
        bisect.insort(self._free_by_size, (length, start))

    def _remove_free(self, start: int) -> int:
        length = self._free_len.pop(start)
        del self._free_starts[bisect.bisect_left(self._free_starts, start)]
        del self._free_by_size[bisect.bisect_left(self._free_by_size, (length, start))]
        return length

    def _is_tail(self, start: int) -> bool:
        return start + self._free_len[start] == self._limit

    def _find_fit(self, span: int) -> int | None:
        """Start of the best-fitting free range, preferring ranges below the tail."""
        index = bisect.bisect_left(self._free_by_size, (span, -1))
        tail: int | None = None
        for _length, start in self._free_by_size[index : index + 2]:
            if not self._is_tail(start):
                return start
            tail = start
        return tail

    # -- public API

    def alloc(self, size: int) -> int | None:
        """Offset of a new 64-aligned block of ``size`` user bytes, or None when out of memory."""
        span = _span(size)
        start = self._find_fit(span)
        if start is None:
            return None
        length = self._remove_free(start)
        if length > span:
            self._add_free(start + span, length - span)
        bisect.insort(self._live_starts, start)
        self._live[start] = (int(size), span)
        self._used += span
        self._high_water = max(self._high_water, start + span)
        return start

    def free(self, offset: int) -> int | None:
        """Release the block starting at ``offset``; its reserved bytes, or None if not a block."""
        entry = self._live.pop(offset, None)
        if entry is None:
            return None
        _, span = entry
        del self._live_starts[bisect.bisect_left(self._live_starts, offset)]
        self._used -= span
        start, length = offset, span
        index = bisect.bisect_left(self._free_starts, offset)
        if index < len(self._free_starts) and self._free_starts[index] == offset + span:
            length += self._remove_free(offset + span)
        if index > 0:
            previous = self._free_starts[index - 1]
            if previous + self._free_len[previous] == offset:
                length += self._remove_free(previous)
                start = previous
        self._add_free(start, length)
        return span

    def block_at(self, offset: int) -> tuple[int, int] | None:
        """``(start, user size)`` of the live block whose user bytes contain ``offset``."""
        index = bisect.bisect_right(self._live_starts, offset) - 1
        if index < 0:
            return None
        start = self._live_starts[index]
        size = self._live[start][0]
        return (start, size) if offset < start + size else None

    def contains(self, offset: int, nbytes: int) -> bool:
        """True when ``[offset, offset + nbytes)`` lies inside one live block's user bytes."""
        if nbytes < 0:
            return False
        block = self.block_at(offset)
        if block is None:
            return False
        start, size = block
        return offset + nbytes <= start + size

    def blocks(self) -> list[tuple[int, int]]:
        """``(start, user size)`` of every live block, in address order."""
        return [(start, self._live[start][0]) for start in self._live_starts]


# --------------------------------------------------------------------------- shm segment


def segment_name(farm_id: str, device_id: int, epoch: int) -> str:
    """The shm file name (no slash) of card ``device_id`` at ``epoch`` in farm ``farm_id``."""
    if not _FARM_ID_RE.match(farm_id):
        raise ValueError(f"farm id {farm_id!r} must be 1-64 characters of [A-Za-z0-9_.-]")
    if not 0 <= device_id <= MAX_DEVICE_ID or epoch < 0:
        raise ValueError(f"bad device id {device_id} or epoch {epoch}")
    return f"npufarm-{farm_id}-card{device_id}-e{epoch}"


def _segment_path(name: str, directory: str) -> str:
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"shm segment name {name!r} must be 1-200 characters of [A-Za-z0-9_.-]")
    return os.path.join(directory, name)


def _page_span(offset: int, nbytes: int) -> tuple[int, int]:
    """The page-aligned ``(start, length)`` covering ``[offset, offset + nbytes)``."""
    start = offset - offset % mmap.PAGESIZE
    end = _round_up(offset + nbytes, mmap.PAGESIZE)
    return start, end - start


class HbmSegment:
    """One card's HBM: a sparse shared-memory file mapped into this process."""

    def __init__(self, name: str, path: str, mapping: mmap.mmap, size_bytes: int) -> None:
        self._name = name
        self._path = path
        self._mmap: mmap.mmap | None = mapping
        self._size = size_bytes
        self._array: np.ndarray | None = np.frombuffer(mapping, dtype=np.uint8)
        self._base = int(self._array.ctypes.data)

    @classmethod
    def create(cls, name: str, size_bytes: int, *, directory: str = SHM_DIR) -> HbmSegment:
        """Create ``directory/name`` (must not exist) as a sparse file of ``size_bytes``."""
        if size_bytes <= 0:
            raise ValueError(f"segment size must be positive, got {size_bytes}")
        path = _segment_path(name, directory)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size_bytes)
            mapping = mmap.mmap(fd, size_bytes)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)
            raise
        os.close(fd)
        logger.debug("created shm segment %s (%d bytes)", path, size_bytes)
        return cls(name, path, mapping, size_bytes)

    @classmethod
    def attach(cls, name: str, *, directory: str = SHM_DIR) -> HbmSegment:
        """Map an existing segment; its size comes from the file."""
        path = _segment_path(name, directory)
        fd = os.open(path, os.O_RDWR)
        try:
            size_bytes = os.fstat(fd).st_size
            if size_bytes <= 0:
                raise ValueError(f"shm segment {path} is empty")
            mapping = mmap.mmap(fd, size_bytes)
        finally:
            os.close(fd)
        logger.debug("attached shm segment %s (%d bytes)", path, size_bytes)
        return cls(name, path, mapping, size_bytes)

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        return self._path

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._mmap is None

    @property
    def base_address(self) -> int:
        """Address of byte 0 of the segment in this process."""
        return self._base

    def _checked_array(self, offset: int, nbytes: int) -> np.ndarray:
        if self._array is None:
            raise ValueError(f"shm segment {self._name} is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self._size:
            raise ValueError(
                f"range [{offset}, {offset + nbytes}) outside segment {self._name} "
                f"of {self._size} bytes"
            )
        return self._array

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        """A writable uint8 view of ``[offset, offset + nbytes)`` (no copy)."""
        return self._checked_array(offset, nbytes)[offset : offset + nbytes]

    def prefault(self, offset: int, nbytes: int) -> None:
        """Commit the pages of a range so the first memcpy into it does not page-fault.

        Uses ``MADV_POPULATE_WRITE`` where the kernel has it (a full /dev/shm then raises
        OSError instead of SIGBUS); otherwise writes a zero into each page of the range, so call
        it only on memory whose contents are undefined (fresh allocations).
        """
        self._checked_array(offset, nbytes)
        # in chunks: neither call releases the GIL, and a card's heartbeat thread must get it
        # every few milliseconds (device/heartbeat.py)
        end = offset + nbytes
        for start in range(offset, end, _PREFAULT_CHUNK):
            self._prefault_chunk(start, min(_PREFAULT_CHUNK, end - start))

    def _prefault_chunk(self, offset: int, nbytes: int) -> None:
        global _populate_supported
        array = self._checked_array(offset, nbytes)
        if _populate_supported and self._mmap is not None:
            start, length = _page_span(offset, nbytes)
            try:
                self._mmap.madvise(_MADV_POPULATE_WRITE, start, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                logger.debug("MADV_POPULATE_WRITE unsupported (%s); touching pages", exc)
                _populate_supported = False
        _touch_pages(array[offset : offset + nbytes], offset)

    def close(self) -> None:
        """Unmap the segment; if views are still exported, leave the mapping to the GC."""
        mapping, self._mmap, self._array = self._mmap, None, None
        if mapping is None:
            return
        try:
            mapping.close()
        except BufferError:
            logger.debug("shm segment %s still has views; unmapped when they die", self._name)

    def unlink(self) -> None:
        """Remove the file from /dev/shm (mappings stay valid until closed)."""
        _unlink_quietly(self._path)

    def __enter__(self) -> HbmSegment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"HbmSegment({self._name!r}, {self._size} bytes, {state})"


def prefault_preserves_contents() -> bool:
    """True while prefaulting uses MADV_POPULATE_WRITE, which leaves the bytes as they are (so
    it may run after the memory was handed out); the fallback writes zeros."""
    return _populate_supported


def _touch_pages(view: np.ndarray, offset: int) -> None:
    """Write one zero byte into every page that ``view`` (starting at ``offset``) overlaps."""
    view[0] = 0
    first_boundary = (-offset) % mmap.PAGESIZE
    view[first_boundary :: mmap.PAGESIZE] = 0


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
        logger.debug("unlinked shm segment %s", path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- capacity


def shm_free_bytes(path: str = SHM_DIR) -> int:
    """Bytes available to unprivileged writers in the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def check_shm_capacity(
    required_bytes: int,
    path: str = SHM_DIR,
    *,
    cards: int | None = None,
    hbm_bytes: int | None = None,
) -> int:
    """Raise NpuFarmError when ``required_bytes`` do not fit in ``path``; return free bytes.

    ``cards`` and ``hbm_bytes`` only make the message more specific.
    """
    free = shm_free_bytes(path)
    if required_bytes <= free:
        return free
    if cards is not None and hbm_bytes is not None:
        what = f"{cards} cards × {hbm_bytes / _GIB:.2f} GiB HBM need"
    else:
        what = "the configured cards need"
    raise NpuFarmError(
        f"{what} {required_bytes / _GIB:.2f} GiB but {path} has {free / _GIB:.2f} GiB free; "
        "lower hbm_bytes or the card count",
        ACL_ERROR_RT_MEMORY_ALLOCATION,
    )
