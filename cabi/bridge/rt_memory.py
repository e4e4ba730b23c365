"""Memory: ``aclrtMalloc`` ... ``aclrtGetMemInfo``, and ``acldvppMalloc`` / ``acldvppFree``.

Device pointers are the runtime's encoded ints, passed to C as opaque ``void *``; host pointers
are the program's own addresses, which the runtime copies from and to directly (a synchronous
``aclrtMemcpy`` between a host buffer and device memory is one ``memmove`` in the card's shared
memory, no socket). ``aclrtMallocHost`` memory is pinned: an ``aclrtMemcpyAsync`` from it is a
queued task, from pageable memory it completes before returning, as CANN documents.

``acldvppMalloc`` / ``acldvppFree`` belong to libacl_dvpp.so; they are here so that library can
forward to them (or the build may forward them to ``aclrtMalloc`` / ``aclrtFree`` in C): DVPP
memory is device memory of the current device (the HUGE_FIRST policy).
"""

from __future__ import annotations

import logging
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.registry import CallTable
from client import RUNTIME

__all__ = ["CALLS"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

_HUGE_FIRST = 0  # ACL_MEM_MALLOC_HUGE_FIRST


def _malloc_into(out: Any, size: int, policy: int) -> int:
    cdata.require(out, "devPtr")
    ptr, ret = RUNTIME.malloc(size, policy)
    if ret == 0:
        cdata.store("void *", out, cdata.pointer(ptr))
    return ret


@CALLS.error
def aclrtMalloc(dev_ptr: Any, size: int, policy: int) -> int:
    """Allocate device memory on the current device and write its pointer; size 0 → 100000,
    207001 when the card is full."""
    return _malloc_into(dev_ptr, size, policy)


@CALLS.error
def aclrtFree(dev_ptr: Any) -> int:
    """Free device memory at once (no wait for tasks using it); unknown → 107000."""
    return RUNTIME.free(cdata.address(dev_ptr))


@CALLS.error
def aclrtMallocHost(host_ptr: Any, size: int) -> int:
    """Allocate pinned host memory and write its address."""
    cdata.require(host_ptr, "hostPtr")
    ptr, ret = RUNTIME.malloc_host(size)
    if ret == 0:
        cdata.store("void *", host_ptr, cdata.pointer(ptr))
    return ret


@CALLS.error
def aclrtFreeHost(host_ptr: Any) -> int:
    """Free aclrtMallocHost memory; anything else → 100000."""
    return RUNTIME.free_host(cdata.address(host_ptr))


@CALLS.error
def aclrtMemcpy(dst: Any, dest_max: int, src: Any, count: int, kind: int) -> int:
    """Copy now (kinds 0-4), waiting for no stream; count > destMax → 100000."""
    return RUNTIME.memcpy(cdata.address(dst), dest_max, cdata.address(src), count, kind)


@CALLS.error
def aclrtMemcpyAsync(dst: Any, dest_max: int, src: Any, count: int, kind: int, stream: Any) -> int:
    """Queue a copy on the stream (done on return when the host side is pageable)."""
    return RUNTIME.memcpy_async(
        cdata.address(dst), dest_max, cdata.address(src), count, kind, cdata.address(stream)
    )


@CALLS.error
def aclrtMemset(dev_ptr: Any, max_count: int, value: int, count: int) -> int:
    """Fill ``count`` bytes with the low byte of ``value`` now."""
    return RUNTIME.memset(cdata.address(dev_ptr), max_count, value, count)


@CALLS.error
def aclrtMemsetAsync(dev_ptr: Any, max_count: int, value: int, count: int, stream: Any) -> int:
    """Queue a fill of ``count`` bytes on the stream."""
    return RUNTIME.memset_async(
        cdata.address(dev_ptr), max_count, value, count, cdata.address(stream)
    )


@CALLS.error
def aclrtGetMemInfo(attr: int, free_out: Any, total_out: Any) -> int:
    """Write the free and total bytes of the current device's memory."""
    cdata.require(free_out, "free")
    cdata.require(total_out, "total")
    free_bytes, total_bytes, ret = RUNTIME.get_mem_info(attr)
    if ret == 0:
        cdata.store("size_t", free_out, free_bytes)
        cdata.store("size_t", total_out, total_bytes)
    return ret


# -- libacl_dvpp.so ----------------------------------------------------------------------------
@CALLS.error
def acldvppMalloc(dev_ptr: Any, size: int) -> int:
    """DVPP memory: device memory of the current device, as aclrtMalloc (HUGE_FIRST)."""
    return _malloc_into(dev_ptr, size, _HUGE_FIRST)


@CALLS.error
def acldvppFree(dev_ptr: Any) -> int:
    """Free acldvppMalloc memory, as aclrtFree."""
    return RUNTIME.free(cdata.address(dev_ptr))
