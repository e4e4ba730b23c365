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
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from farm.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
    ConfigError,
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

HANDLE_BASE = 0x7F00_0000_1000
"""First handle value handed out in a process."""
HANDLE_STEP = 16
"""Distance between two consecutive handles."""

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1

# aclmdlExecConfigAttr ids (acl-reference §4); kept local so client/ does not import the facade.
_ATTR_STREAM_SYNC_TIMEOUT = 0
_ATTR_EVENT_SYNC_TIMEOUT = 1
_ATTR_WORK_ADDR_PTR = 2
_ATTR_WORK_SIZET = 3
_ATTR_EXEC_PRIORITY_INT32 = 8

EXEC_CONFIG_EXTENSION_ATTRS = frozenset(
    {_ATTR_WORK_ADDR_PTR, _ATTR_WORK_SIZET, _ATTR_EXEC_PRIORITY_INT32}
)
"""Attribute ids a card profile may enable as documented npufarm extensions."""

_ACL_DT_UNDEFINED = -1
_ACL_FORMAT_UNDEFINED = -1
_ACL_FORMAT_ND = 2

_DEFAULT_DESTROYED_HISTORY = 1 << 16

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


def sync_timeout_error(ms: Any) -> int:
    """The code a stream/event sync with timeout ``ms`` fails with before waiting.

    ``-1`` waits forever and ``> 0`` waits that many milliseconds (both 0); ``0``, anything below
    ``-1`` and non-integers are rejected with ``ACL_ERROR_RT_PARAM_INVALID`` (107000).
    """
    value = as_int(ms)
    if value is None or value == 0 or value < -1:
        return ACL_ERROR_RT_PARAM_INVALID
    return ACL_SUCCESS


@dataclass(frozen=True, slots=True)
class ExecConfig:
    """The settings of an exec-config handle, copied at submission."""

    stream_sync_timeout_ms: int = -1
    event_sync_timeout_ms: int = -1
    work_addr: int = 0
    work_size: int = 0
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    """What a model description reports about one input or output tensor."""

    name: str
    dims: tuple[int, ...]
    acl_dtype: int
    format: int
    nbytes: int

    @classmethod
    def from_spec(cls, spec: Any) -> _TensorInfo:
        """Copy the fields of a ``TensorSpec``-like object (duck typed)."""
        return cls(
            name=str(spec.name),
            dims=tuple(int(d) for d in spec.shape),
            acl_dtype=int(spec.acl_dtype),
            format=int(getattr(spec, "format", _ACL_FORMAT_ND)),
            nbytes=int(spec.nbytes),
        )

    def dims_dict(self) -> dict[str, Any]:
        """The dict pyACL's ``get_*_dims`` returns."""
        return {"name": self.name, "dimCount": len(self.dims), "dims": list(self.dims)}


@dataclass(frozen=True, slots=True)
class _Desc:
    """A model description; ``model_id`` is ``None`` until filled by ``get_desc``."""

    model_id: int | None = None
    inputs: tuple[_TensorInfo, ...] = ()
    outputs: tuple[_TensorInfo, ...] = ()


def _empty_dims() -> dict[str, Any]:
    return {"name": "", "dimCount": 0, "dims": []}


_T = TypeVar("_T")


class _Table(Generic[_T]):
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


def _valid_u64(value: Any) -> int | None:
    number = as_int(value)
    if number is None or number < 0 or number > _UINT64_MAX:
        return None
    return number


def _at(items: tuple[_TensorInfo, ...], index: Any) -> _TensorInfo | None:
    i = as_int(index)
    if i is None or i < 0 or i >= len(items):
        return None
    return items[i]


class HandleTables:
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
        extensions = frozenset(int(attr) for attr in exec_config_extensions)
        unknown = extensions - EXEC_CONFIG_EXTENSION_ATTRS
        if unknown:
            raise ConfigError(
                f"exec_config_extensions: unsupported attribute ids {sorted(unknown)}; "
                f"allowed {sorted(EXEC_CONFIG_EXTENSION_ATTRS)}"
            )
        self._extensions = extensions
        self._buffers: _Table[tuple[int, int]] = _Table("data buffer", destroyed_history)
        self._datasets: _Table[list[int]] = _Table("dataset", destroyed_history)
        self._descs: _Table[_Desc] = _Table("model desc", destroyed_history)
        self._exec_configs: _Table[ExecConfig] = _Table("exec config", destroyed_history)
        self._tables = (self._buffers, self._datasets, self._descs, self._exec_configs)
        self._generations = itertools.count(1)
        self.generation = 0  # changes whenever a data buffer or dataset changes (cache key)

    @property
    def extensions(self) -> frozenset[int]:
        """The exec-config attribute ids accepted beyond 0 and 1."""
        return self._extensions

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

    # ------------------------------------------------------------------ model descriptions

    def create_desc(self) -> int:
        """``acl.mdl.create_desc``: a new, unfilled model description."""
        return self._descs.add(_Desc())

    def fill_desc(self, desc: Any, model_id: int, spec: Any) -> int:
        """Fill ``desc`` from a ``ModelSpec``-like object (called by ``get_desc``); ret."""
        key = as_int(desc)
        if key is None:
            return ACL_ERROR_INVALID_PARAM
        try:
            filled = _Desc(
                model_id=int(model_id),
                inputs=tuple(_TensorInfo.from_spec(t) for t in spec.inputs),
                outputs=tuple(_TensorInfo.from_spec(t) for t in spec.outputs),
            )
        except (AttributeError, TypeError, ValueError):
            logger.exception("fill_desc: model %r has an unusable spec", model_id)
            return ACL_ERROR_INVALID_PARAM
        with self._descs.lock:
            if key not in self._descs.live:
                return ACL_ERROR_INVALID_PARAM
            self._descs.live[key] = filled
        return ACL_SUCCESS

    def destroy_desc(self, desc: Any) -> int:
        """``acl.mdl.destroy_desc``: ret; unknown or destroyed handle → 100000."""
        return self._descs.remove(desc)

    def get_model_id(self, desc: Any) -> int:
        """Internal: the model id a description was filled for, -1 if unknown or unfilled."""
        entry = self._descs.get(desc)
        if entry is None or entry.model_id is None:
            return -1
        return entry.model_id

    def has_desc(self, desc: Any) -> bool:
        """Internal: whether ``desc`` is a live model description (filled or not)."""
        return self._descs.get(desc) is not None

    def _inputs(self, desc: Any) -> tuple[_TensorInfo, ...]:
        entry = self._descs.get(desc)
        return () if entry is None else entry.inputs

    def _outputs(self, desc: Any) -> tuple[_TensorInfo, ...]:
        entry = self._descs.get(desc)
        return () if entry is None else entry.outputs

    def get_num_inputs(self, desc: Any) -> int:
        """``acl.mdl.get_num_inputs``: 0 for a NULL, unknown or unfilled description."""
        return len(self._inputs(desc))

    def get_num_outputs(self, desc: Any) -> int:
        """``acl.mdl.get_num_outputs``: 0 for a NULL, unknown or unfilled description."""
        return len(self._outputs(desc))

    def get_input_size_by_index(self, desc: Any, index: Any) -> int:
        """``acl.mdl.get_input_size_by_index``: bytes, 0 if out of range."""
        info = _at(self._inputs(desc), index)
        return 0 if info is None else info.nbytes

    def get_output_size_by_index(self, desc: Any, index: Any) -> int:
        """``acl.mdl.get_output_size_by_index``: bytes, 0 if out of range."""
        info = _at(self._outputs(desc), index)
        return 0 if info is None else info.nbytes

    def get_input_dims(self, desc: Any, index: Any) -> tuple[dict[str, Any], int]:
        """``acl.mdl.get_input_dims``: ``(dims_dict, ret)``; out of range → 100000."""
        info = _at(self._inputs(desc), index)
        if info is None:
            return _empty_dims(), ACL_ERROR_INVALID_PARAM
        return info.dims_dict(), ACL_SUCCESS

    def get_output_dims(self, desc: Any, index: Any) -> tuple[dict[str, Any], int]:
        """``acl.mdl.get_output_dims``: ``(dims_dict, ret)``; out of range → 100000."""
        info = _at(self._outputs(desc), index)
        if info is None:
            return _empty_dims(), ACL_ERROR_INVALID_PARAM
        return info.dims_dict(), ACL_SUCCESS

    def get_cur_output_dims(self, desc: Any, index: Any) -> tuple[dict[str, Any], int]:
        """``acl.mdl.get_cur_output_dims``: same as the output dims (static models)."""
        return self.get_output_dims(desc, index)

    def get_input_data_type(self, desc: Any, index: Any) -> int:
        """``acl.mdl.get_input_data_type``: ACL dtype enum, -1 (undefined) if out of range."""
        info = _at(self._inputs(desc), index)
        return _ACL_DT_UNDEFINED if info is None else info.acl_dtype

    def get_output_data_type(self, desc: Any, index: Any) -> int:
        """``acl.mdl.get_output_data_type``: ACL dtype enum, -1 (undefined) if out of range."""
        info = _at(self._outputs(desc), index)
        return _ACL_DT_UNDEFINED if info is None else info.acl_dtype

    def get_input_format(self, desc: Any, index: Any) -> int:
        """``acl.mdl.get_input_format``: ACL format enum, -1 if out of range."""
        info = _at(self._inputs(desc), index)
        return _ACL_FORMAT_UNDEFINED if info is None else info.format

    def get_output_format(self, desc: Any, index: Any) -> int:
        """``acl.mdl.get_output_format``: ACL format enum, -1 if out of range."""
        info = _at(self._outputs(desc), index)
        return _ACL_FORMAT_UNDEFINED if info is None else info.format

    def get_input_name_by_index(self, desc: Any, index: Any) -> str:
        """``acl.mdl.get_input_name_by_index``: the tensor name, "" if out of range."""
        info = _at(self._inputs(desc), index)
        return "" if info is None else info.name

    def get_output_name_by_index(self, desc: Any, index: Any) -> str:
        """``acl.mdl.get_output_name_by_index``: the tensor name, "" if out of range."""
        info = _at(self._outputs(desc), index)
        return "" if info is None else info.name

    @staticmethod
    def _index_of(items: tuple[_TensorInfo, ...], name: Any) -> tuple[int, int]:
        if isinstance(name, str):
            for i, info in enumerate(items):
                if info.name == name:
                    return i, ACL_SUCCESS
        return -1, ACL_ERROR_INVALID_PARAM

    def get_input_index_by_name(self, desc: Any, name: Any) -> tuple[int, int]:
        """``acl.mdl.get_input_index_by_name``: ``(index, ret)``; unknown name → (-1, 100000)."""
        return self._index_of(self._inputs(desc), name)

    def get_output_index_by_name(self, desc: Any, name: Any) -> tuple[int, int]:
        """``acl.mdl.get_output_index_by_name``: ``(index, ret)``; unknown name → (-1, 100000)."""
        return self._index_of(self._outputs(desc), name)

    # ------------------------------------------------------------------ exec-config handles

    def create_exec_config_handle(self) -> int:
        """``acl.mdl.create_exec_config_handle``: a handle with default settings."""
        return self._exec_configs.add(ExecConfig())

    def _exec_config_value(self, attr: int, value: Any) -> tuple[str, int] | None:
        """The field and checked value ``attr`` sets, ``None`` if attr or value is rejected."""
        number = as_int(value)
        if number is None:
            return None
        if attr in (_ATTR_STREAM_SYNC_TIMEOUT, _ATTR_EVENT_SYNC_TIMEOUT):
            if not -1 <= number <= _INT32_MAX:
                return None
            field = (
                "stream_sync_timeout_ms"
                if attr == _ATTR_STREAM_SYNC_TIMEOUT
                else "event_sync_timeout_ms"
            )
            return field, number
        if attr not in self._extensions:
            return None
        if attr == _ATTR_EXEC_PRIORITY_INT32:
            return ("priority", number) if _INT32_MIN <= number <= _INT32_MAX else None
        if not 0 <= number <= _UINT64_MAX:
            return None
        return ("work_addr" if attr == _ATTR_WORK_ADDR_PTR else "work_size"), number

    def set_exec_config_opt(self, handle: Any, attr: Any, value: Any) -> int:
        """``acl.mdl.set_exec_config_opt``: ret; bad handle, attr or value → 100000."""
        key, attr_id = as_int(handle), as_int(attr)
        if key is None or attr_id is None:
            return ACL_ERROR_INVALID_PARAM
        checked = self._exec_config_value(attr_id, value)
        with self._exec_configs.lock:
            settings = self._exec_configs.live.get(key)
            if settings is None:
                logger.debug("set_exec_config_opt: unknown handle %r", handle)
                return ACL_ERROR_INVALID_PARAM
            if checked is None:
                logger.debug("set_exec_config_opt: attr %r value %r rejected", attr, value)
                return ACL_ERROR_INVALID_PARAM
            field, number = checked
            self._exec_configs.live[key] = replace(settings, **{field: number})
        return ACL_SUCCESS

    def destroy_exec_config_handle(self, handle: Any) -> int:
        """``acl.mdl.destroy_exec_config_handle``: ret; unknown handle → 100000."""
        return self._exec_configs.remove(handle)

    def exec_config_snapshot(self, handle: Any) -> ExecConfig | None:
        """Internal: the handle's settings as of now, ``None`` if unknown.

        The result is immutable: later ``set_exec_config_opt`` calls replace the handle's entry and
        never change a snapshot already taken (settings are copied at submission).
        """
        return self._exec_configs.get(handle)
