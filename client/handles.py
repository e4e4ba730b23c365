"""Host-side descriptor tables that pyACL keeps in the caller's process.

Data buffers, datasets, model descriptions and exec-config handles never reach a device: they are
plain bookkeeping in the process that calls ``acl``. :class:`HandleTables` holds one table per kind
(one instance per acl session) and implements the pyACL return conventions (acl-reference §2):
functions whose C form returns a pointer, size or count return it directly, functions with
out-parameters return a tuple with ``ret`` last, and ``add_dataset_buffer`` returns ``(ds, ret)``.

Handles are nonzero ints drawn from one process-wide counter, so they are unique across all kinds
and all sessions and are never reused after a destroy; a destroy of an unknown or already destroyed
handle returns ``ACL_ERROR_INVALID_PARAM`` (100000). Everything here is pure and thread-safe: no
sockets, no device access.

This module holds the session-wide calls, data buffers and datasets; model descriptions and
exec-config handles come from the :class:`client.descriptors.ModelDescTables` base class, the
handle counter and per-kind table from :mod:`client.handle_table` (all names importable from
here).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

from client.descriptors import EXEC_CONFIG_EXTENSION_ATTRS, ExecConfig, ModelDescTables
from client.handle_table import HANDLE_BASE, HANDLE_STEP, UINT64_MAX, HandleTable, as_int
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
)

__all__ = [
    "HANDLE_BASE",
    "HANDLE_STEP",
    "EXEC_CONFIG_EXTENSION_ATTRS",
    "ExecConfig",
    "HandleTables",
    "as_int",
    "sync_timeout_error",
]

logger = logging.getLogger(__name__)

_DEFAULT_DESTROYED_HISTORY = 1 << 16


def sync_timeout_error(ms: Any) -> int:
    """The code a stream/event sync with timeout ``ms`` fails with before waiting.

    ``-1`` waits forever and ``> 0`` waits that many milliseconds (both 0); ``0``, anything below
    ``-1`` and non-integers are rejected with ``ACL_ERROR_RT_PARAM_INVALID`` (107000).
    """
    value = as_int(ms)
    if value is None or value == 0 or value < -1:
        return ACL_ERROR_RT_PARAM_INVALID
    return ACL_SUCCESS


def _valid_u64(value: Any) -> int | None:
    number = as_int(value)
    if number is None or number < 0 or number > UINT64_MAX:
        return None
    return number


class HandleTables(ModelDescTables):
    """All host-side descriptor tables of one acl session.

    ``exec_config_extensions`` lists the exec-config attribute ids (a subset of 2, 3, 8) the card
    profile accepts beyond the stream/event sync timeouts; real 910B-class products reject them.
    ``destroyed_history`` bounds how many destroyed handles per kind are remembered for
    :meth:`was_destroyed` (a double destroy returns 100000 either way).
    """

    def __init__(
        self,
        exec_config_extensions: Iterable[int] = (),
        *,
        destroyed_history: int = _DEFAULT_DESTROYED_HISTORY,
    ) -> None:
        super().__init__(exec_config_extensions, destroyed_history)
        self._buffers: HandleTable[tuple[int, int]] = HandleTable("data buffer", destroyed_history)
        self._datasets: HandleTable[list[int]] = HandleTable("dataset", destroyed_history)
        self._tables = (self._buffers, self._datasets, self._descs, self._exec_configs)
        self._generations = itertools.count(1)
        self.generation = 0  # changes whenever a data buffer or dataset changes (cache key)

    # ------------------------------------------------------------------ session-wide

    def clear(self) -> None:
        """Drop every table (used at finalize); old handles become unknown."""
        for table in self._tables:
            table.clear()

    def live_counts(self) -> dict[str, int]:
        """Number of live handles per kind (for leak reports at finalize)."""
        return {table.kind: len(table) for table in self._tables}

    def was_destroyed(self, handle: Any) -> bool:
        """Whether ``handle`` was destroyed recently (distinguishes double destroy from junk)."""
        return any(table.was_destroyed(handle) for table in self._tables)

    # ------------------------------------------------------------------ data buffers

    def create_data_buffer(self, ptr: Any, size: Any) -> int:
        """``acl.create_data_buffer``: a handle (ptr 0 / size 0 allowed); 0 for bad arguments."""
        address, nbytes = _valid_u64(ptr), _valid_u64(size)
        if address is None or nbytes is None:
            logger.debug("create_data_buffer rejected ptr=%r size=%r", ptr, size)
            return 0
        return self._buffers.add((address, nbytes))

    def destroy_data_buffer(self, buf: Any) -> int:
        """``acl.destroy_data_buffer``: ret; unknown or destroyed handle → 100000."""
        ret = self._buffers.remove(buf)
        self.generation = next(self._generations)
        return ret

    def update_data_buffer(self, buf: Any, ptr: Any, size: Any) -> int:
        """``acl.update_data_buffer``: ret; unknown handle or bad ptr/size → 100000."""
        key = as_int(buf)
        address, nbytes = _valid_u64(ptr), _valid_u64(size)
        if key is None or address is None or nbytes is None:
            return ACL_ERROR_INVALID_PARAM
        with self._buffers.lock:
            if key not in self._buffers.live:
                return ACL_ERROR_INVALID_PARAM
            self._buffers.live[key] = (address, nbytes)
        self.generation = next(self._generations)
        return ACL_SUCCESS

    def get_data_buffer_addr(self, buf: Any) -> int:
        """``acl.get_data_buffer_addr``: the pointer, 0 if unknown."""
        entry = self._buffers.get(buf)
        return 0 if entry is None else entry[0]

    def get_data_buffer_size_v2(self, buf: Any) -> int:
        """``acl.get_data_buffer_size_v2``: the size in bytes, 0 if unknown."""
        entry = self._buffers.get(buf)
        return 0 if entry is None else entry[1]

    get_data_buffer_size = get_data_buffer_size_v2

    def buffer(self, buf: Any) -> tuple[int, int] | None:
        """Internal: ``(ptr, size)`` of a data buffer, ``None`` if unknown."""
        return self._buffers.get(buf)

    # ------------------------------------------------------------------ datasets

    def create_dataset(self) -> int:
        """``acl.mdl.create_dataset``: a new empty dataset."""
        return self._datasets.add([])

    def add_dataset_buffer(self, ds: Any, buf: Any) -> tuple[Any, int]:
        """``acl.mdl.add_dataset_buffer``: ``(ds, ret)``; unknown ds or buffer → 100000."""
        buf_key = as_int(buf)
        if buf_key is None or self._buffers.get(buf_key) is None:
            logger.debug("add_dataset_buffer: unknown data buffer %r", buf)
            return ds, ACL_ERROR_INVALID_PARAM
        key = as_int(ds)
        if key is None:
            return ds, ACL_ERROR_INVALID_PARAM
        with self._datasets.lock:
            buffers = self._datasets.live.get(key)
            if buffers is None:
                logger.debug("add_dataset_buffer: unknown dataset %r", ds)
                return ds, ACL_ERROR_INVALID_PARAM
            buffers.append(buf_key)
        self.generation = next(self._generations)
        return ds, ACL_SUCCESS

    def get_dataset_num_buffers(self, ds: Any) -> int:
        """``acl.mdl.get_dataset_num_buffers``: count, 0 if unknown."""
        key = as_int(ds)
        if key is None:
            return 0
        with self._datasets.lock:
            buffers = self._datasets.live.get(key)
            return 0 if buffers is None else len(buffers)

    def get_dataset_buffer(self, ds: Any, index: Any) -> int:
        """``acl.mdl.get_dataset_buffer``: the buffer handle, 0 if out of range or unknown."""
        key, i = as_int(ds), as_int(index)
        if key is None or i is None or i < 0:
            return 0
        with self._datasets.lock:
            buffers = self._datasets.live.get(key)
            if buffers is None or i >= len(buffers):
                return 0
            return buffers[i]

    def destroy_dataset(self, ds: Any) -> int:
        """``acl.mdl.destroy_dataset``: ret; its data buffers stay alive."""
        ret = self._datasets.remove(ds)
        self.generation = next(self._generations)
        return ret

    def dataset_buffers(self, ds: Any) -> list[int] | None:
        """Internal: a copy of the dataset's buffer handles, ``None`` if unknown."""
        key = as_int(ds)
        if key is None:
            return None
        with self._datasets.lock:
            buffers = self._datasets.live.get(key)
            return None if buffers is None else list(buffers)
