"""The tensor-description family: ``aclCreateTensorDesc``, the ``aclGetTensorDesc*`` getters and
the ``aclSetTensor*`` setters, with CANN's answers for NULL and bad arguments (hicann/runtime
and hicann/ge ``tensor_desc`` code): NULL → ``ACL_DT_UNDEFINED`` / ``ACL_FORMAT_UNDEFINED`` /
0 / -1 / ``""``; a negative dim makes the element count (and the size) 0; an empty shape is a
scalar of one element; a first dim of -2 (unknown rank) makes the dim count
``ACL_UNKNOWN_RANK``.

A tensor description is host bookkeeping with no device behind it, so it lives here, in a
table of its own (handles from the runtime's process-wide counter, never reused), outside any
session: CANN's descriptions do not need ``aclInit`` either. As in CANN, ``aclSetTensorShape`` /
``aclSetTensorFormat`` set the *storage* shape and format, ``aclSetTensorOriginShape`` /
``aclSetTensorOriginFormat`` the ones the getters report.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.base import data_type_size
from cabi.bridge.registry import CallTable
from client.handle_table import HandleTable
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS, AclError

__all__ = ["CALLS", "ACL_UNKNOWN_RANK", "TensorDesc", "TENSOR_DESCS", "copy_desc", "drop_desc"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

ACL_UNKNOWN_RANK = 0xFFFFFFFFFFFFFFFE
"""``aclGetTensorDescNumDims`` of a tensor whose rank is unknown (first dim -2)."""
_UNKNOWN_RANK_DIM = -2
_DT_UNDEFINED = -1
_FORMAT_UNDEFINED = -1
_SIZE_LIMIT = 2**64


@dataclass
class TensorDesc:
    """One aclTensorDesc. ``name_text`` keeps the C string ``aclGetTensorDescName`` returns."""

    data_type: int
    dims: tuple[int, ...]
    format: int
    storage_dims: tuple[int, ...] = ()
    storage_format: int = _FORMAT_UNDEFINED
    name: str = ""
    name_text: Any = field(default=None, repr=False)

    def element_count(self) -> int:
        if any(dim < 0 for dim in self.dims):
            return 0
        count = math.prod(self.dims)
        return count if count < _SIZE_LIMIT else 0

    def size(self) -> int:
        nbytes = self.element_count() * data_type_size(self.data_type)
        return nbytes if nbytes < _SIZE_LIMIT else 0


TENSOR_DESCS: HandleTable[TensorDesc] = HandleTable("tensor desc", 1 << 16)
"""Every live tensor description of the process, by handle."""


def _dims(num_dims: int, dims: Any) -> tuple[int, ...]:
    if num_dims <= 0:
        return ()
    ffi = cdata.bound()
    values = ffi.cast("int64_t *", cdata.address(dims))
    return tuple(int(values[i]) for i in range(num_dims))


def _desc(desc: Any) -> TensorDesc | None:
    return TENSOR_DESCS.get(cdata.address(desc))


def copy_desc(desc: Any) -> int:
    """A new description equal to ``desc`` (0 if unknown): what a dataset keeps."""
    found = _desc(desc)
    return 0 if found is None else TENSOR_DESCS.add(replace(found, name_text=None))


def drop_desc(handle: int) -> None:
    """Forget a description (unknown handles are ignored)."""
    TENSOR_DESCS.remove(handle)


# -- create, destroy -------------------------------------------------------------------------
@CALLS.pointer
def aclCreateTensorDesc(data_type: int, num_dims: int, dims: Any, tensor_format: int) -> Any:
    """A description of ``numDims`` dims; NULL for ``numDims < 0`` or NULL dims."""
    if num_dims < 0:
        raise AclError(f"numDims {num_dims} is negative", ACL_ERROR_INVALID_PARAM)
    if num_dims > 0 and cdata.address(dims) == 0:
        raise AclError(f"dims is NULL while numDims is {num_dims}", ACL_ERROR_INVALID_PARAM)
    created = TensorDesc(data_type, _dims(num_dims, dims), tensor_format)
    return cdata.pointer(TENSOR_DESCS.add(created))


@CALLS.void
def aclDestroyTensorDesc(desc: Any) -> None:
    """Destroy a description (NULL and unknown ones are ignored)."""
    drop_desc(cdata.address(desc))


# -- getters ---------------------------------------------------------------------------------
@CALLS.value(_DT_UNDEFINED)
def aclGetTensorDescType(desc: Any) -> int:
    """The data type; ACL_DT_UNDEFINED (-1) for NULL."""
    found = _desc(desc)
    return _DT_UNDEFINED if found is None else found.data_type


@CALLS.value(_FORMAT_UNDEFINED)
def aclGetTensorDescFormat(desc: Any) -> int:
    """The (origin) format; ACL_FORMAT_UNDEFINED (-1) for NULL."""
    found = _desc(desc)
    return _FORMAT_UNDEFINED if found is None else found.format


@CALLS.value()
def aclGetTensorDescSize(desc: Any) -> int:
    """Element count times the data type's size; 0 for NULL."""
    found = _desc(desc)
    return 0 if found is None else found.size()


@CALLS.value()
def aclGetTensorDescElementCount(desc: Any) -> int:
    """The product of the dims (1 for a scalar, 0 with a negative dim or for NULL)."""
    found = _desc(desc)
    return 0 if found is None else found.element_count()


@CALLS.value()
def aclGetTensorDescNumDims(desc: Any) -> int:
    """The number of dims; ACL_UNKNOWN_RANK when the first dim is -2; 0 for NULL."""
    found = _desc(desc)
    if found is None:
        return 0
    if found.dims and found.dims[0] == _UNKNOWN_RANK_DIM:
        return ACL_UNKNOWN_RANK
    return len(found.dims)


@CALLS.value(-1)
def aclGetTensorDescDim(desc: Any, index: int) -> int:
    """Dim ``index``; -1 for NULL or an index out of range."""
    found = _desc(desc)
    if found is None or index >= len(found.dims):
        return -1
    return found.dims[index]


@CALLS.error
def aclGetTensorDescDimV2(desc: Any, index: int, dim_size: Any) -> int:
    """Write dim ``index``; NULL desc or dimSize, or an index out of range → 100000."""
    found = _desc(desc)
    if found is None:
        raise AclError("desc is NULL or unknown", ACL_ERROR_INVALID_PARAM)
    cdata.require(dim_size, "dimSize")
    if index >= len(found.dims):
        raise AclError(f"index {index} >= {len(found.dims)} dims", ACL_ERROR_INVALID_PARAM)
    cdata.store("int64_t", dim_size, found.dims[index])
    return ACL_SUCCESS


@CALLS.void
def aclSetTensorDescName(desc: Any, name: Any) -> None:
    """Name the description (NULL name → ``""``); a NULL desc is ignored."""
    found = _desc(desc)
    if found is not None:
        found.name = cdata.text(name) or ""
        found.name_text = None


@CALLS.pointer
def aclGetTensorDescName(desc: Any) -> Any:
    """The name (``""`` for NULL), valid until the name changes or the description goes."""
    found = _desc(desc)
    if found is None:
        return cdata.interned("")
    if found.name_text is None:
        found.name_text = cdata.bound().new("char[]", found.name.encode("utf-8", "surrogateescape"))
    return cdata.pointer(cdata.address(found.name_text))


# -- setters ---------------------------------------------------------------------------------
def _shape(desc: Any, num_dims: int, dims: Any) -> tuple[TensorDesc, tuple[int, ...]]:
    found = _desc(desc)
    if found is None:
        raise AclError("desc is NULL or unknown", ACL_ERROR_INVALID_PARAM)
    cdata.require(dims, "dims")
    return found, _dims(num_dims, dims)


@CALLS.error
def aclSetTensorShape(desc: Any, num_dims: int, dims: Any) -> int:
    """Set the storage shape; NULL desc or dims → 100000."""
    found, shape = _shape(desc, num_dims, dims)
    found.storage_dims = shape
    return ACL_SUCCESS


@CALLS.error
def aclSetTensorStorageShape(desc: Any, num_dims: int, dims: Any) -> int:
    """The deprecated name of aclSetTensorShape."""
    return aclSetTensorShape.__wrapped__(desc, num_dims, dims)


@CALLS.error
def aclSetTensorOriginShape(desc: Any, num_dims: int, dims: Any) -> int:
    """Set the shape the getters report; NULL desc or dims → 100000."""
    found, shape = _shape(desc, num_dims, dims)
    found.dims = shape
    return ACL_SUCCESS


@CALLS.error
def aclSetTensorFormat(desc: Any, tensor_format: int) -> int:
    """Set the storage format (a NULL desc is ignored, as in CANN)."""
    found = _desc(desc)
    if found is not None:
        found.storage_format = tensor_format
    return ACL_SUCCESS


@CALLS.error
def aclSetTensorStorageFormat(desc: Any, tensor_format: int) -> int:
    """The deprecated name of aclSetTensorFormat."""
    return aclSetTensorFormat.__wrapped__(desc, tensor_format)


@CALLS.error
def aclSetTensorOriginFormat(desc: Any, tensor_format: int) -> int:
    """Set the format the getters report (a NULL desc is ignored, as in CANN)."""
    found = _desc(desc)
    if found is not None:
        found.format = tensor_format
    return ACL_SUCCESS
