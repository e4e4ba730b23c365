"""Datasets (``aclmdlCreateDataset`` ...), the tensor descriptions a dataset carries
(``aclmdlSetDatasetTensorDesc`` / ``aclmdlGetDatasetTensorDesc``) and exec-config handles
(``aclmdlCreateExecConfigHandle`` ... ``aclmdlSetExecConfigOpt``).

Datasets and exec configs are the runtime's host-side tables (``RUNTIME.handles``), the same
``acl.mdl`` uses. The tensor descriptions are CANN's per-dataset copies: setting one copies
the caller's description (the caller may destroy its own at once), setting NULL removes it,
and ``aclmdlDestroyDataset`` destroys the copies with the dataset.

``aclmdlSetExecConfigOpt`` takes ``(const void *attrValue, size_t valueSize)`` where pyACL takes
the value: the value is read by the attribute's C type, after CANN's checks (NULL handle or
value → 100000; ``valueSize`` must be the type's size: ``int32_t`` for the sync timeouts and
the priority, ``void *`` for the work address, ``size_t`` for the work size).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.registry import CallTable
from cabi.bridge.tensor import copy_desc, drop_desc
from client import RUNTIME
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS, AclError

__all__ = ["CALLS", "EXEC_CONFIG_VALUE_TYPES", "dataset_tensor_descs"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

EXEC_CONFIG_VALUE_TYPES: dict[int, str] = {
    0: "int32_t",  # ACL_MDL_STREAM_SYNC_TIMEOUT
    1: "int32_t",  # ACL_MDL_EVENT_SYNC_TIMEOUT
    2: "uintptr_t",  # ACL_MDL_WORK_ADDR_PTR
    3: "size_t",  # ACL_MDL_WORK_SIZET
    8: "int32_t",  # ACL_MDL_EXEC_PRIORITY_INT32
}
"""aclmdlExecConfigAttr -> the C type ``attrValue`` points to (other ids are refused)."""

_descs_lock = threading.Lock()
_dataset_descs: dict[int, dict[int, int]] = {}  # dataset -> {index: tensor desc copy}


def dataset_tensor_descs(dataset: int) -> dict[int, int]:
    """A copy of ``{index: tensor desc handle}`` of a dataset (tests, tools)."""
    with _descs_lock:
        return dict(_dataset_descs.get(dataset, {}))


# -- datasets --------------------------------------------------------------------------------
@CALLS.pointer
def aclmdlCreateDataset() -> Any:
    """A new, empty dataset."""
    return cdata.pointer(RUNTIME.handles.create_dataset())


@CALLS.error
def aclmdlDestroyDataset(dataset: Any) -> int:
    """Destroy the dataset and its tensor descriptions (not its buffers); unknown → 100000."""
    handle = cdata.address(dataset)
    ret = RUNTIME.handles.destroy_dataset(handle)
    with _descs_lock:
        copies = _dataset_descs.pop(handle, {}) if ret == ACL_SUCCESS else {}
    for copy in copies.values():
        drop_desc(copy)
    return ret


@CALLS.error
def aclmdlAddDatasetBuffer(dataset: Any, buffer: Any) -> int:
    """Append a data buffer; unknown dataset or buffer → 100000."""
    _, ret = RUNTIME.handles.add_dataset_buffer(cdata.address(dataset), cdata.address(buffer))
    return ret


@CALLS.value()
def aclmdlGetDatasetNumBuffers(dataset: Any) -> int:
    """The number of buffers; 0 for an unknown dataset."""
    return RUNTIME.handles.get_dataset_num_buffers(cdata.address(dataset))


@CALLS.pointer
def aclmdlGetDatasetBuffer(dataset: Any, index: int) -> Any:
    """Buffer ``index``; NULL out of range."""
    return cdata.pointer(RUNTIME.handles.get_dataset_buffer(cdata.address(dataset), index))


def _checked_index(dataset: Any, index: int) -> int:
    handle = cdata.require(dataset, "dataset")
    count = RUNTIME.handles.get_dataset_num_buffers(handle)
    if index >= count:
        raise AclError(f"index {index} >= the dataset's {count} buffers", ACL_ERROR_INVALID_PARAM)
    return handle


@CALLS.error
def aclmdlSetDatasetTensorDesc(dataset: Any, tensor_desc: Any, index: int) -> int:
    """Keep a copy of ``tensorDesc`` for buffer ``index`` (NULL removes it); an index past the
    buffers → 100000."""
    handle = _checked_index(dataset, index)
    copy = copy_desc(tensor_desc) if cdata.address(tensor_desc) else 0
    with _descs_lock:
        descs = _dataset_descs.setdefault(handle, {})
        old = descs.pop(index, 0)
        if copy:
            descs[index] = copy
    if old:
        drop_desc(old)
    return ACL_SUCCESS


@CALLS.pointer
def aclmdlGetDatasetTensorDesc(dataset: Any, index: int) -> Any:
    """The description kept for buffer ``index``; NULL when none (or out of range)."""
    handle = _checked_index(dataset, index)
    with _descs_lock:
        found = _dataset_descs.get(handle, {}).get(index, 0)
    return cdata.pointer(found)


# -- exec-config handles ---------------------------------------------------------------------
@CALLS.pointer
def aclmdlCreateExecConfigHandle() -> Any:
    """A new exec-config handle with default settings."""
    return cdata.pointer(RUNTIME.handles.create_exec_config_handle())


@CALLS.error
def aclmdlDestroyExecConfigHandle(handle: Any) -> int:
    """Destroy an exec-config handle; unknown → 100000."""
    return RUNTIME.handles.destroy_exec_config_handle(cdata.address(handle))


@CALLS.error
def aclmdlSetExecConfigOpt(handle: Any, attr: int, attr_value: Any, value_size: int) -> int:
    """Set one attribute from ``*attrValue``; bad handle, attr, size or value → 100000."""
    config = cdata.require(handle, "handle")
    value_at = cdata.require(attr_value, "attrValue")
    ctype = EXEC_CONFIG_VALUE_TYPES.get(attr)
    if ctype is None:
        raise AclError(f"exec config attr {attr} is not supported", ACL_ERROR_INVALID_PARAM)
    ffi = cdata.bound()
    if value_size != ffi.sizeof(ctype):
        raise AclError(
            f"valueSize {value_size} of attr {attr} is not {ffi.sizeof(ctype)}",
            ACL_ERROR_INVALID_PARAM,
        )
    value = int(ffi.cast(f"{ctype} *", value_at)[0])
    return RUNTIME.handles.set_exec_config_opt(config, attr, value)
