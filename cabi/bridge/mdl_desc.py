"""Model descriptions (``aclmdlCreateDesc`` ... ``aclmdlGetOutputIndexByName``), the dims
calls with the ``aclmdlIODims`` struct, the dynamic-shape calls (``aclmdlGetDynamicBatch``
with ``aclmdlBatch``, ``aclmdlGetDynamicHW`` with ``aclmdlHW``, the dynamic dims) and the AIPP
queries (``aclmdlGetAippType``, ``aclmdlGetFirstAippInfo``, ``aclmdlGetAippDataSize``: npufarm
models have no AIPP, so every input is ACL_DATA_WITHOUT_AIPP).

Everything is answered by the runtime's description tables, exactly as ``acl.mdl``; the bridge
only moves the answers into C structs. ``aclmdlIODims`` gets the tensor name (NUL-terminated,
127 bytes at most), ``dimCount`` and the dims (-1 for a dynamic dim). Tensor names come back as
``const char *`` that stay valid for the life of the process (CANN ties them to the
description); ``""`` when the index is out of range.
"""

from __future__ import annotations

import logging
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.registry import CallTable
from client import RUNTIME
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS, AclError

__all__ = ["CALLS", "fill_io_dims", "read_io_dims"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

_DT_UNDEFINED = -1
_FORMAT_UNDEFINED = -1


def fill_io_dims(target: Any, dims: dict[str, Any]) -> None:
    """Write pyACL's dims dict (``name``, ``dimCount``, ``dims``) into an ``aclmdlIODims``."""
    name = str(dims.get("name", "")).encode("utf-8", errors="surrogateescape")
    name = name[: cdata.MAX_TENSOR_NAME_LEN - 1]
    values = list(dims.get("dims", ()))[: cdata.MAX_DIM_COUNT]
    target.name[0 : len(name)] = name
    target.name[len(name)] = b"\0"
    target.dimCount = len(values)
    for i, value in enumerate(values):
        target.dims[i] = value


def read_io_dims(source: Any) -> dict[str, Any]:
    """An ``aclmdlIODims`` as pyACL's dims dict (at most ``ACL_MAX_DIM_CNT`` dims are read)."""
    count = int(source.dimCount)
    readable = min(count, cdata.MAX_DIM_COUNT)
    raw_name = cdata.bound().string(source.name)  # stops at the NUL or the array's end
    return {
        "name": raw_name.decode("utf-8", errors="surrogateescape"),
        "dimCount": count,
        "dims": [int(source.dims[i]) for i in range(readable)],
    }


# -- descriptions ----------------------------------------------------------------------------
@CALLS.pointer
def aclmdlCreateDesc() -> Any:
    """A new, unfilled model description."""
    return cdata.pointer(RUNTIME.handles.create_desc())


@CALLS.error
def aclmdlDestroyDesc(desc: Any) -> int:
    """Destroy a description; unknown → 100000."""
    return RUNTIME.handles.destroy_desc(cdata.address(desc))


@CALLS.error
def aclmdlGetDesc(desc: Any, model_id: int) -> int:
    """Fill the description from a loaded model; unknown model → 145003."""
    return RUNTIME.get_desc(cdata.address(desc), model_id)


@CALLS.value()
def aclmdlGetNumInputs(desc: Any) -> int:
    """The number of inputs (0 for NULL or an unfilled description)."""
    return RUNTIME.handles.get_num_inputs(cdata.address(desc))


@CALLS.value()
def aclmdlGetNumOutputs(desc: Any) -> int:
    """The number of outputs (0 for NULL or an unfilled description)."""
    return RUNTIME.handles.get_num_outputs(cdata.address(desc))


@CALLS.value()
def aclmdlGetInputSizeByIndex(desc: Any, index: int) -> int:
    """Bytes of input ``index`` (0 out of range)."""
    return RUNTIME.handles.get_input_size_by_index(cdata.address(desc), index)


@CALLS.value()
def aclmdlGetOutputSizeByIndex(desc: Any, index: int) -> int:
    """Bytes of output ``index`` (0 out of range)."""
    return RUNTIME.handles.get_output_size_by_index(cdata.address(desc), index)


@CALLS.value(_DT_UNDEFINED)
def aclmdlGetInputDataType(desc: Any, index: int) -> int:
    """aclDataType of input ``index``; ACL_DT_UNDEFINED (-1) out of range."""
    return RUNTIME.handles.get_input_data_type(cdata.address(desc), index)


@CALLS.value(_DT_UNDEFINED)
def aclmdlGetOutputDataType(desc: Any, index: int) -> int:
    """aclDataType of output ``index``; ACL_DT_UNDEFINED (-1) out of range."""
    return RUNTIME.handles.get_output_data_type(cdata.address(desc), index)


@CALLS.value(_FORMAT_UNDEFINED)
def aclmdlGetInputFormat(desc: Any, index: int) -> int:
    """aclFormat of input ``index``; ACL_FORMAT_UNDEFINED (-1) out of range."""
    return RUNTIME.handles.get_input_format(cdata.address(desc), index)


@CALLS.value(_FORMAT_UNDEFINED)
def aclmdlGetOutputFormat(desc: Any, index: int) -> int:
    """aclFormat of output ``index``; ACL_FORMAT_UNDEFINED (-1) out of range."""
    return RUNTIME.handles.get_output_format(cdata.address(desc), index)


@CALLS.pointer
def aclmdlGetInputNameByIndex(desc: Any, index: int) -> Any:
    """The name of input ``index`` (``""`` out of range)."""
    return cdata.interned(RUNTIME.handles.get_input_name_by_index(cdata.address(desc), index))


@CALLS.pointer
def aclmdlGetOutputNameByIndex(desc: Any, index: int) -> Any:
    """The name of output ``index`` (``""`` out of range)."""
    return cdata.interned(RUNTIME.handles.get_output_name_by_index(cdata.address(desc), index))


def _index_by_name(finder: Any, desc: Any, name: Any, index: Any) -> int:
    handle = cdata.require(desc, "modelDesc")
    wanted = cdata.text(name)
    if wanted is None:
        raise AclError("name is NULL", ACL_ERROR_INVALID_PARAM)
    cdata.require(index, "index")
    found, ret = finder(handle, wanted)
    if ret == ACL_SUCCESS:
        cdata.store("size_t", index, found)
    return ret


@CALLS.error
def aclmdlGetInputIndexByName(desc: Any, name: Any, index: Any) -> int:
    """Write the index of the input called ``name``; unknown name → 100000."""
    return _index_by_name(RUNTIME.handles.get_input_index_by_name, desc, name, index)


@CALLS.error
def aclmdlGetOutputIndexByName(desc: Any, name: Any, index: Any) -> int:
    """Write the index of the output called ``name``; unknown name → 100000."""
    return _index_by_name(RUNTIME.handles.get_output_index_by_name, desc, name, index)


# -- dims ------------------------------------------------------------------------------------
def _dims_into(getter: Any, desc: Any, index: int, dims: Any) -> int:
    handle = cdata.require(desc, "modelDesc")
    cdata.require(dims, "dims")
    found, ret = getter(handle, index)
    if ret == ACL_SUCCESS:
        fill_io_dims(cdata.struct_at("aclmdlIODims *", dims), found)
    return ret


@CALLS.error
def aclmdlGetInputDims(desc: Any, index: int, dims: Any) -> int:
    """Fill ``aclmdlIODims`` for input ``index``; out of range → 100000."""
    return _dims_into(RUNTIME.handles.get_input_dims, desc, index, dims)


@CALLS.error
def aclmdlGetInputDimsV2(desc: Any, index: int, dims: Any) -> int:
    """As aclmdlGetInputDims (npufarm models have no separate V2 shape)."""
    return _dims_into(RUNTIME.handles.get_input_dims, desc, index, dims)


@CALLS.error
def aclmdlGetOutputDims(desc: Any, index: int, dims: Any) -> int:
    """Fill ``aclmdlIODims`` for output ``index``; out of range → 100000."""
    return _dims_into(RUNTIME.handles.get_output_dims, desc, index, dims)


@CALLS.error
def aclmdlGetCurOutputDims(desc: Any, index: int, dims: Any) -> int:
    """The output dims of the current gear (the static dims: npufarm models have no gears)."""
    return _dims_into(RUNTIME.handles.get_cur_output_dims, desc, index, dims)


# -- dynamic shapes --------------------------------------------------------------------------
@CALLS.error
def aclmdlGetDynamicBatch(desc: Any, batch: Any) -> int:
    """Fill ``aclmdlBatch`` with the batch gears (none on npufarm's static models)."""
    cdata.require(batch, "batch")
    found, ret = RUNTIME.get_dynamic_batch(cdata.address(desc))
    if ret == ACL_SUCCESS:
        target = cdata.struct_at("aclmdlBatch *", batch)
        gears = list(found.get("batch", ()))[: cdata.MAX_GEAR_COUNT]
        target.batchCount = len(gears)
        for i, gear in enumerate(gears):
            target.batch[i] = gear
    return ret


@CALLS.error
def aclmdlGetDynamicHW(desc: Any, index: int, hw: Any) -> int:
    """Fill ``aclmdlHW`` with the height/width gears (none on npufarm's static models)."""
    cdata.require(hw, "hw")
    found, ret = RUNTIME.get_dynamic_hw(cdata.address(desc), index)
    if ret == ACL_SUCCESS:
        target = cdata.struct_at("aclmdlHW *", hw)
        gears = list(found.get("hw", ()))[: cdata.MAX_GEAR_COUNT]
        target.hwCount = len(gears)
        for i, (height, width) in enumerate(gears):
            target.hw[i][0], target.hw[i][1] = height, width
    return ret


@CALLS.error
def aclmdlGetInputDynamicGearCount(desc: Any, index: int, gear_count: Any) -> int:
    """Write the number of dynamic-dims gears (0); ``index`` must be -1."""
    cdata.require(gear_count, "gearCount")
    count, ret = RUNTIME.get_input_dynamic_gear_count(cdata.address(desc), index)
    if ret == ACL_SUCCESS:
        cdata.store("size_t", gear_count, count)
    return ret


@CALLS.error
def aclmdlGetInputDynamicDims(desc: Any, index: int, dims: Any, gear_count: int) -> int:
    """Fill ``gearCount`` ``aclmdlIODims`` with the gears' dims; ``index`` must be -1."""
    cdata.require(dims, "dims")
    found, ret = RUNTIME.get_input_dynamic_dims(cdata.address(desc), index, gear_count)
    if ret == ACL_SUCCESS:
        targets = cdata.struct_at("aclmdlIODims *", dims)
        for i, gear in enumerate(found or ()):
            fill_io_dims(targets[i], gear)
    return ret


@CALLS.error
def aclmdlSetDynamicBatchSize(model_id: int, dataset: Any, index: int, batch_size: int) -> int:
    """Select a batch gear: 145013 on npufarm's static models."""
    return RUNTIME.set_dynamic_batch_size(model_id, cdata.address(dataset), index, batch_size)


@CALLS.error
def aclmdlSetDynamicHWSize(model_id: int, dataset: Any, index: int, height: int, width: int) -> int:
    """Select a height/width gear: 145013 on npufarm's static models."""
    return RUNTIME.set_dynamic_hw_size(model_id, cdata.address(dataset), index, height, width)


@CALLS.error
def aclmdlSetInputDynamicDims(model_id: int, dataset: Any, index: int, dims: Any) -> int:
    """Select a dynamic-dims gear: 145012 on npufarm's static models; NULL dims → 100000."""
    cdata.require(dims, "dims")
    wanted = read_io_dims(cdata.struct_at("aclmdlIODims *", dims))
    return RUNTIME.set_input_dynamic_dims(model_id, cdata.address(dataset), index, wanted)


# -- AIPP (npufarm models have none) ---------------------------------------------------------
@CALLS.error
def aclmdlGetAippType(model_id: int, index: int, aipp_type: Any, attached_index: Any) -> int:
    """Write ACL_DATA_WITHOUT_AIPP (0) and ACL_INVALID_NODE_INDEX (0xFFFFFFFF) for an input;
    NULL out-pointer → 100000, unknown model → 145003, no such input → 500002."""
    cdata.require(aipp_type, "type")
    cdata.require(attached_index, "dynamicAttachedDataIndex")
    kind, attached, ret = RUNTIME.get_aipp_type(model_id, index)
    cdata.store("size_t", attached_index, attached)  # CANN writes it before it asks GE
    if ret == ACL_SUCCESS:
        cdata.store("int", aipp_type, kind)
    return ret


@CALLS.error
def aclmdlGetFirstAippInfo(model_id: int, index: int, aipp_info: Any) -> int:
    """145015 (AIPP not configured) for every input of a loaded model, as CANN answers for a
    model without AIPP; NULL ``aippInfo`` → 100000, unknown model → 145003."""
    cdata.require(aipp_info, "aippInfo")
    _, ret = RUNTIME.get_first_aipp_info(model_id, index)
    return ret


@CALLS.error
def aclmdlGetAippDataSize(batch_size: int, size: Any) -> int:
    """Write the bytes of a dynamic-AIPP input for ``batchSize`` images (64 + 96 each);
    NULL ``size`` or a batch size of 0 → 100000."""
    cdata.require(size, "size")
    value, ret = RUNTIME.get_aipp_data_size(batch_size)
    if ret == ACL_SUCCESS:
        cdata.store("size_t", size, value)
    return ret
