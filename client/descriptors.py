"""Model descriptions and exec-config handles: the model half of ``HandleTables``.

:class:`ModelDescTables` owns the model-description and exec-config tables and implements the
``acl.mdl`` description getters (``get_num_inputs``, ``get_input_dims``, ...) and the
exec-config calls (``create_exec_config_handle``, ``set_exec_config_opt``, ...) with pyACL's
return shapes; ``HandleTables`` extends it with the data buffers and datasets. Pure and
thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from client.handle_table import UINT64_MAX, HandleTable, as_int
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS, ConfigError

__all__ = [
    "EXEC_CONFIG_EXTENSION_ATTRS",
    "ExecConfig",
    "ModelDesc",
    "ModelDescTables",
    "TensorInfo",
]

logger = logging.getLogger(__name__)

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1

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


@dataclass(frozen=True, slots=True)
class ExecConfig:
    """The settings of an exec-config handle, copied at submission."""

    stream_sync_timeout_ms: int = -1
    event_sync_timeout_ms: int = -1
    work_addr: int = 0
    work_size: int = 0
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """What a model description reports about one input or output tensor."""

    name: str
    dims: tuple[int, ...]
    acl_dtype: int
    format: int
    nbytes: int

    @classmethod
    def from_spec(cls, spec: Any) -> TensorInfo:
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
class ModelDesc:
    """A model description; ``model_id`` is ``None`` until filled by ``get_desc``."""

    model_id: int | None = None
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()


def _empty_dims() -> dict[str, Any]:
    return {"name": "", "dimCount": 0, "dims": []}


def _at(items: tuple[TensorInfo, ...], index: Any) -> TensorInfo | None:
    i = as_int(index)
    if i is None or i < 0 or i >= len(items):
        return None
    return items[i]


class ModelDescTables:
    """The model-description and exec-config tables and their calls.

    ``exec_config_extensions`` lists the exec-config attribute ids (a subset of 2, 3, 8) the card
    profile accepts beyond the stream/event sync timeouts; real 910B-class products reject them.
    ``destroyed_history`` bounds how many destroyed handles per kind are remembered.
    """

    def __init__(self, exec_config_extensions: Iterable[int], destroyed_history: int) -> None:
        extensions = frozenset(int(attr) for attr in exec_config_extensions)
        unknown = extensions - EXEC_CONFIG_EXTENSION_ATTRS
        if unknown:
            raise ConfigError(
                f"exec_config_extensions: unsupported attribute ids {sorted(unknown)}; "
                f"allowed {sorted(EXEC_CONFIG_EXTENSION_ATTRS)}"
            )
        self._extensions = extensions
        self._descs: HandleTable[ModelDesc] = HandleTable("model desc", destroyed_history)
        self._exec_configs: HandleTable[ExecConfig] = HandleTable("exec config", destroyed_history)

    @property
    def extensions(self) -> frozenset[int]:
        """The exec-config attribute ids accepted beyond 0 and 1."""
        return self._extensions

    # ------------------------------------------------------------------ model descriptions

    def create_desc(self) -> int:
        """``acl.mdl.create_desc``: a new, unfilled model description."""
        return self._descs.add(ModelDesc())

    def fill_desc(self, desc: Any, model_id: int, spec: Any) -> int:
        """Fill ``desc`` from a ``ModelSpec``-like object (called by ``get_desc``); ret."""
        key = as_int(desc)
        if key is None:
            return ACL_ERROR_INVALID_PARAM
        try:
            filled = ModelDesc(
                model_id=int(model_id),
                inputs=tuple(TensorInfo.from_spec(t) for t in spec.inputs),
                outputs=tuple(TensorInfo.from_spec(t) for t in spec.outputs),
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

    def _inputs(self, desc: Any) -> tuple[TensorInfo, ...]:
        entry = self._descs.get(desc)
        return () if entry is None else entry.inputs

    def _outputs(self, desc: Any) -> tuple[TensorInfo, ...]:
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
    def _index_of(items: tuple[TensorInfo, ...], name: Any) -> tuple[int, int]:
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
        if not 0 <= number <= UINT64_MAX:
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
