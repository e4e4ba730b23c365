"""``acl.rt`` memory calls: malloc/free, host memory, memcpy/memset (sync: a direct copy in
the card's shared memory, no stream waited for; async: a queued task), memory info. A part of
the process-wide runtime (see :mod:`client.runtime`)."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from client.conventions import api, int_arg
from client.state import RuntimeState
from client.tracks import StreamTrack
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
    AclError,
)
from core.protocol import TaskKind
from device.memory import decode_ptr, encode_ptr, is_device_ptr

__all__ = ["MemoryApi"]

logger = logging.getLogger(__name__)

_H2H, _H2D, _D2H, _D2D, _DEFAULT = range(5)


class MemoryApi:
    """Memory calls on the shared :class:`RuntimeState`."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    # -- memory ----------------------------------------------------------------------------
    @api(1)
    def malloc(self, size: Any, policy: Any) -> int:
        """Device memory on the current card (64-byte aligned); 207001 when the card is full."""
        size, policy = int_arg(size, "size"), int_arg(policy, "policy")
        if size <= 0 or policy < 0:
            raise AclError(f"malloc size {size} / policy {policy} invalid", ACL_ERROR_INVALID_PARAM)
        session = self.state.require()
        device_id = self.state.current_context().device_id
        reply = session.request(device_id, "malloc", size=size)
        ptr = encode_ptr(device_id, session.epochs[device_id], reply["offset"])
        with self.state.lock:
            self.state.allocations.add(ptr, size, device_id)
        return ptr

    @api()
    def free(self, ptr: Any) -> None:
        """Free device memory at once (does not wait for tasks using it); unknown → 107000."""
        ptr = int_arg(ptr, "ptr")
        if ptr == 0:
            raise AclError("free of NULL", ACL_ERROR_INVALID_PARAM)
        session = self.state.require()
        with self.state.lock:
            size = self.state.allocations.remove(ptr)
        if size is None:
            raise AclError(f"{ptr:#x} is not a live allocation", ACL_ERROR_RT_PARAM_INVALID)
        device_id = decode_ptr(ptr)[0]
        self.state.sanitizer.check_free(device_id, ptr, size, "acl.rt.free")
        session.request(device_id, "free", offset=decode_ptr(ptr)[2])

    @api(1)
    def malloc_host(self, size: Any) -> int:
        """Page-locked host memory (async copies with it are real queued tasks)."""
        size = int_arg(size, "size")
        if size <= 0:
            raise AclError(f"malloc_host size {size} invalid", ACL_ERROR_INVALID_PARAM)
        self.state.require()
        return self.state.host.malloc(size)

    @api()
    def free_host(self, ptr: Any) -> None:
        """Free malloc_host memory; anything else → 100000."""
        self.state.require()
        if not self.state.host.free(int_arg(ptr, "ptr")):
            raise AclError(f"{ptr} is not pinned host memory", ACL_ERROR_INVALID_PARAM)

    @api(2)
    def get_mem_info(self, attr: Any) -> tuple[int, int]:
        """``(free, total, ret)``: bytes of the current card's HBM."""
        int_arg(attr, "attr")
        device_id = self.state.current_context().device_id
        reply = self.state.require().request(device_id, "mem_info")
        return reply["free"], reply["total"]

    def _device_address(self, ptr: int, nbytes: int) -> int:
        """Validate a device range of this process and return its local address."""
        self.state.check_device_range(ptr, nbytes)
        return self.state.memory.address(ptr)

    def _copy_plan(self, dst: int, src: int, count: int, kind: int) -> tuple[bool, bool]:
        """Check a copy's direction; return (dst is device, src is device)."""
        dst_dev, src_dev = is_device_ptr(dst), is_device_ptr(src)
        if kind == _DEFAULT:
            return dst_dev, src_dev
        expected = {
            _H2H: (False, False),
            _H2D: (True, False),
            _D2H: (False, True),
            _D2D: (True, True),
        }.get(kind)
        if expected is None:
            raise AclError(f"memcpy kind {kind} invalid", ACL_ERROR_INVALID_PARAM)
        if (dst_dev, src_dev) != expected:
            raise AclError(
                f"memcpy kind {kind} does not match the addresses", ACL_ERROR_RT_PARAM_INVALID
            )
        return expected

    def _copy_args(self, dst: Any, dst_max: Any, src: Any, count: Any, kind: Any):
        dst, dst_max, src = int_arg(dst, "dst"), int_arg(dst_max, "dst_max"), int_arg(src, "src")
        count, kind = int_arg(count, "count"), int_arg(kind, "kind")
        if count < 0 or dst_max < 0 or count > dst_max:
            raise AclError(f"count {count} > dst_max {dst_max}", ACL_ERROR_INVALID_PARAM)
        if count and (dst == 0 or src == 0):
            raise AclError("memcpy with a NULL address", ACL_ERROR_INVALID_PARAM)
        dst_dev, src_dev = self._copy_plan(dst, src, count, kind)
        return dst, src, count, dst_dev, src_dev

    @api()
    def memcpy(self, dst: Any, dst_max: Any, src: Any, count: Any, kind: Any) -> None:
        """Synchronous copy (kinds 0-4); waits for no stream, as on hardware."""
        dst, src, count, dst_dev, src_dev = self._copy_args(dst, dst_max, src, count, kind)
        self.state.require()
        if count:
            self._copy_now(dst, src, count, dst_dev, src_dev, "acl.rt.memcpy")

    def _copy_now(
        self, dst: int, src: int, count: int, dst_dev: bool, src_dev: bool, call: str
    ) -> None:
        """Copy at once in the shared memory; no stream is waited for (hardware behaviour)."""
        dst_addr = self._device_address(dst, count) if dst_dev else dst
        src_addr = self._device_address(src, count) if src_dev else src
        if self.state.sanitizer.enabled:
            if src_dev:
                self.state.sanitizer.check_read(decode_ptr(src)[0], src, count, call)
            if dst_dev:
                self.state.sanitizer.check_write(decode_ptr(dst)[0], dst, count, call)
        ctypes.memmove(dst_addr, src_addr, count)

    def _shm_ref(self, ptr: int, nbytes: int, is_device: bool) -> list | None:
        if is_device:
            self._device_address(ptr, nbytes)
            return [self.state.memory.segment_name(decode_ptr(ptr)[0]), decode_ptr(ptr)[2]]
        located = self.state.host.locate(ptr, nbytes)
        return list(located) if located is not None else None

    @api()
    def memcpy_async(
        self, dst: Any, dst_max: Any, src: Any, count: Any, kind: Any, stream: Any
    ) -> None:
        """Queue a copy on the stream; with pageable host memory it is done on return."""
        dst, src, count, dst_dev, src_dev = self._copy_args(dst, dst_max, src, count, kind)
        target = self.state.stream(stream)
        if count == 0:
            return
        dst_ref = self._shm_ref(dst, count, dst_dev)
        src_ref = self._shm_ref(src, count, src_dev)
        if dst_ref is None or src_ref is None:
            self._pageable_copy(target.track, dst, src, count, dst_dev, src_dev)
            return
        task = {"k": TaskKind.COPY, "dst": dst_ref, "src": src_ref, "n": count}
        reads = [(src, count)] if src_dev else []
        self.state.submit_task(target.track, task, reads, [(dst, count)], "acl.rt.memcpy_async")

    def _pageable_copy(
        self, track: StreamTrack, dst: int, src: int, count: int, dst_dev: bool, src_dev: bool
    ) -> None:
        """CANN: with non-page-locked host memory, aclrtMemcpyAsync "returns only after the
        memory copy task is complete"; the copy is queued behind the stream's earlier tasks, so
        on return those are done too: a sync of the stream up to here (its task errors stay for
        the next sync, which reports them). A lost card ends the wait: 507010, nothing copied."""
        session = self.state.require()
        last = track.last_task
        session.wait(track, last, None)
        code = ACL_SUCCESS
        if track.device_id in session.lost or session.broker_lost:
            code = ACL_ERROR_RT_LOST_HEARTBEAT
        self.state.sanitizer.stream_synced(track.device_id, track.stream_id, last, code)
        session.check_device(track.device_id)
        self._copy_now(dst, src, count, dst_dev, src_dev, "acl.rt.memcpy_async")

    def _memset_args(self, ptr: Any, max_count: Any, value: Any, count: Any):
        ptr, max_count = int_arg(ptr, "ptr"), int_arg(max_count, "max")
        value, count = int_arg(value, "value"), int_arg(count, "count")
        if ptr == 0 or count < 0 or count > max_count:
            raise AclError(f"memset count {count} > max {max_count}", ACL_ERROR_INVALID_PARAM)
        return ptr, value, count

    @api()
    def memset(self, ptr: Any, max_count: Any, value: Any, count: Any) -> None:
        """Synchronous fill of ``count`` bytes with ``value``."""
        ptr, value, count = self._memset_args(ptr, max_count, value, count)
        self.state.require()
        if count:
            address = self._device_address(ptr, count) if is_device_ptr(ptr) else ptr
            if is_device_ptr(ptr):
                self.state.sanitizer.check_write(decode_ptr(ptr)[0], ptr, count, "acl.rt.memset")
            ctypes.memset(address, value & 0xFF, count)

    @api()
    def memset_async(self, ptr: Any, max_count: Any, value: Any, count: Any, stream: Any) -> None:
        """Queue a fill of ``count`` bytes with ``value`` on the stream."""
        ptr, value, count = self._memset_args(ptr, max_count, value, count)
        target = self.state.stream(stream)
        ref = self._shm_ref(ptr, count, is_device_ptr(ptr))
        if ref is None:
            raise AclError(
                "memset_async needs device or pinned host memory", ACL_ERROR_RT_PARAM_INVALID
            )
        task = {"k": TaskKind.MEMSET, "dst": ref, "n": count, "v": value}
        writes = [(ptr, count)] if is_device_ptr(ptr) and count else []
        self.state.submit_task(target.track, task, [], writes, "acl.rt.memset_async")
