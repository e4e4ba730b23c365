"""``aclInit`` / ``aclFinalize``, ``aclGetRecentErrMsg``, data buffers, ``aclDataTypeSize`` and
the float16 conversions: the ``acl_base.h`` part of libascendcl that is not about tensors.

``aclInit`` checks its configuration file as CANN does (:mod:`client.init_config`) and then
starts the same session ``acl.init`` starts. ``aclGetRecentErrMsg`` returns this thread's last
error text (the runtime's, or the bridge's own argument checks) and clears it, NULL when there
is none; the pointer stays valid until the thread's next call, as CANN's thread-local string.
"""

from __future__ import annotations

import logging
from typing import Any

from cabi.bridge import cdata, fp16
from cabi.bridge.registry import CallTable
from client import RUNTIME
from client.init_config import config_error
from core.errors import AclError

__all__ = ["CALLS", "DATA_TYPE_SIZES", "data_type_size"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

# aclDataType -> bytes per element, as CANN's aclDataTypeSize answers (data_buffer.cpp in
# hicann/runtime): 0 for ACL_DT_UNDEFINED and ACL_STRING, 1 for the sub-byte ACL_INT4 and
# ACL_UINT1, and 8 for anything it does not list.
DATA_TYPE_SIZES: dict[int, int] = {
    -1: 0,  # ACL_DT_UNDEFINED
    13: 0,  # ACL_STRING
    29: 1,  # ACL_INT4
    30: 1,  # ACL_UINT1
    2: 1,  # ACL_INT8
    4: 1,  # ACL_UINT8
    12: 1,  # ACL_BOOL
    34: 1,  # ACL_HIFLOAT8
    35: 1,  # ACL_FLOAT8_E5M2
    36: 1,  # ACL_FLOAT8_E4M3FN
    37: 1,  # ACL_FLOAT8_E8M0
    1: 2,  # ACL_FLOAT16
    6: 2,  # ACL_INT16
    7: 2,  # ACL_UINT16
    27: 2,  # ACL_BF16
    0: 4,  # ACL_FLOAT
    3: 4,  # ACL_INT32
    8: 4,  # ACL_UINT32
    33: 4,  # ACL_COMPLEX32
    17: 16,  # ACL_COMPLEX128
}
_DEFAULT_TYPE_SIZE = 8  # ACL_INT64, ACL_UINT64, ACL_DOUBLE, ACL_COMPLEX64 and anything unknown


def data_type_size(data_type: int) -> int:
    """Bytes per element of an ``aclDataType`` (CANN's table)."""
    return DATA_TYPE_SIZES.get(data_type, _DEFAULT_TYPE_SIZE)


# -- init ------------------------------------------------------------------------------------
@CALLS.error
def aclInit(config_path: Any) -> int:
    """Start the session (``NPUFARM_ADDRESS``, the state file, else an embedded farm) after
    checking the configuration file as CANN does; 100002 if already initialised."""
    path = cdata.text(config_path)
    if RUNTIME.session is not None:
        return RUNTIME.init()  # 100002 before the file is looked at, as in CANN
    code, reason = config_error(path)
    if code:
        raise AclError(reason, code)
    return RUNTIME.init(path or None)


@CALLS.error
def aclFinalize() -> int:
    """End the session; 100037 after an earlier finalize."""
    return RUNTIME.finalize()


@CALLS.pointer
def aclGetRecentErrMsg() -> Any:
    """This thread's last error text, cleared by the read; NULL when there is none."""
    message = RUNTIME.get_recent_err_msg()
    return cdata.thread_text(message or None)


# -- data buffers ----------------------------------------------------------------------------
@CALLS.pointer
def aclCreateDataBuffer(data: Any, size: int) -> Any:
    """A data buffer describing ``size`` bytes at ``data`` (NULL and 0 allowed)."""
    return cdata.pointer(RUNTIME.handles.create_data_buffer(cdata.address(data), size))


@CALLS.error
def aclDestroyDataBuffer(buffer: Any) -> int:
    """Destroy the descriptor (not the memory); unknown → 100000."""
    return RUNTIME.handles.destroy_data_buffer(cdata.address(buffer))


@CALLS.error
def aclUpdateDataBuffer(buffer: Any, data: Any, size: int) -> int:
    """Point the buffer at other memory; unknown buffer → 100000."""
    return RUNTIME.handles.update_data_buffer(cdata.address(buffer), cdata.address(data), size)


@CALLS.pointer
def aclGetDataBufferAddr(buffer: Any) -> Any:
    """The buffer's address; NULL for an unknown buffer."""
    return cdata.pointer(RUNTIME.handles.get_data_buffer_addr(cdata.address(buffer)))


@CALLS.value()
def aclGetDataBufferSizeV2(buffer: Any) -> int:
    """The buffer's size in bytes; 0 for an unknown buffer."""
    return RUNTIME.handles.get_data_buffer_size_v2(cdata.address(buffer))


@CALLS.value()
def aclGetDataBufferSize(buffer: Any) -> int:
    """The deprecated 32-bit form of :func:`aclGetDataBufferSizeV2` (truncated, as C does)."""
    return RUNTIME.handles.get_data_buffer_size(cdata.address(buffer)) & 0xFFFFFFFF


# -- scalar helpers --------------------------------------------------------------------------
@CALLS.value()
def aclDataTypeSize(data_type: int) -> int:
    """Bytes per element of ``data_type`` (0 for undefined and string types)."""
    return data_type_size(data_type)


@CALLS.real
def aclFloat16ToFloat(value: int) -> float:
    """A half as a float (exact; CANN reads inf/NaN bit patterns as numbers)."""
    return fp16.half_to_float(value)


@CALLS.value()
def aclFloatToFloat16(value: float) -> int:
    """A float as a half (round to nearest even; CANN saturates at ±65504)."""
    return fp16.float_to_half(value)
