"""Model loading and execution: ``aclmdlLoadFromFile`` ... ``aclmdlExecuteAsyncV2``, plus the
C-only calls pyACL hides: ``aclmdlQuerySize`` / ``aclmdlQuerySizeFromMem`` and the
``...WithMem`` loads that take the caller's work and weight memory.

The memory a model asks for (npufarm's choice, documented): a model's *weight* memory is its
weights' bytes (``matmul``: K×N plus the bias, ``softmax_classifier``: features×classes, ``onnx``:
the ONNX graph's bytes, the element-wise kinds: none) and its *work* memory its feature maps,
taken as the bytes of its inputs and outputs; both rounded up to 32 bytes and never 0, so the
usual ``aclmdlQuerySize`` → ``aclrtMalloc`` → ``aclmdlLoadFromFileWithMem`` sequence works.

``...WithMem`` checks what GE checks: a NULL pointer leaves that memory to the runtime; a
non-NULL one with a size below the model's need is ACL_ERROR_GE_PARAM_INVALID (145000). npufarm
also checks that a non-NULL range lies in one live allocation of this process on the current
device (107000 otherwise, as for any foreign device pointer). The model then loads as
``aclmdlLoadFromFile`` / ``aclmdlLoadFromMem`` loads it; the card keeps its own copy of the
weights, so the caller's memory is only reserved, as it must stay allocated until the unload.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from cabi.bridge import cdata
from cabi.bridge.registry import CallTable
from client import RUNTIME
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
    AclError,
)
from device.memory import decode_ptr
from device.models import ModelSpec, load_model_file, parse_model

__all__ = ["CALLS", "ACL_ERROR_GE_PARAM_INVALID", "MEMORY_GRANULE", "model_memory"]

logger = logging.getLogger(__name__)

CALLS = CallTable()

ACL_ERROR_GE_PARAM_INVALID = 145000
"""GE's answer to work or weight memory smaller than the model needs (ge_error_codes.h)."""
MEMORY_GRANULE = 32
"""Work and weight sizes are multiples of this (ACL's allocation granule)."""


def _round_up(nbytes: int) -> int:
    return max(MEMORY_GRANULE, -(-nbytes // MEMORY_GRANULE) * MEMORY_GRANULE)


def model_memory(spec: ModelSpec) -> tuple[int, int]:
    """``(work bytes, weight bytes)`` the model asks for (see the module docstring)."""
    work = spec.input_bytes + spec.output_bytes
    weights = 0
    if spec.kind == "onnx":
        weights = len(spec.blob)
    elif spec.kind in ("matmul", "softmax_classifier") and spec.inputs and spec.outputs:
        x, y = spec.inputs[0], spec.outputs[0]
        features, width = math.prod(x.concrete_shape[1:]), y.concrete_shape[-1]
        elements = features * width
        if spec.kind == "matmul" and spec.param("bias", True):
            elements += width
        weights = elements * x.np_dtype.itemsize
    return _round_up(work), _round_up(weights)


def _path(model_path: Any) -> str:
    path = cdata.text(model_path)
    if not path:
        raise AclError("modelPath is NULL or empty", ACL_ERROR_INVALID_PARAM)
    return path


def _blob(model: Any, size: int) -> bytes:
    if cdata.address(model) == 0 or size == 0:
        raise AclError("model is NULL or modelSize 0", ACL_ERROR_INVALID_PARAM)
    return cdata.read_bytes(model, size)


def _store_sizes(spec: ModelSpec, work_size: Any, weight_size: Any) -> int:
    cdata.require(work_size, "workSize")
    cdata.require(weight_size, "weightSize")
    work, weights = model_memory(spec)
    cdata.store("size_t", work_size, work)
    cdata.store("size_t", weight_size, weights)
    return ACL_SUCCESS


def _check_memory(spec: ModelSpec, work: tuple[Any, int], weight: tuple[Any, int]) -> None:
    """GE's checks of the caller's work and weight memory, then npufarm's range check."""
    needs = dict(zip(("work", "weight"), model_memory(spec), strict=True))
    for what, (ptr, size) in (("work", work), ("weight", weight)):
        if cdata.address(ptr) and size < needs[what]:
            raise AclError(
                f"{what} memory of {size} bytes is below the model's {needs[what]}",
                ACL_ERROR_GE_PARAM_INVALID,
            )
    device_id = RUNTIME.state.current_context().device_id
    for what, (ptr, size) in (("work", work), ("weight", weight)):
        address = cdata.address(ptr)
        if not address:
            continue
        decoded = decode_ptr(address)
        if decoded is None or decoded[0] != device_id:
            raise AclError(
                f"{what} memory {address:#x} is not memory of device {device_id}",
                ACL_ERROR_RT_PARAM_INVALID,
            )
        RUNTIME.state.check_device_range(address, size)


def _store_model_id(model_id: Any, found: int, ret: int) -> int:
    if ret == ACL_SUCCESS:
        cdata.store("uint32_t", model_id, found)
    return ret


# -- sizes -----------------------------------------------------------------------------------
@CALLS.error
def aclmdlQuerySize(file_name: Any, work_size: Any, weight_size: Any) -> int:
    """Write the work and weight memory the model file asks for; 145002 bad path, 145006 not a
    model."""
    return _store_sizes(load_model_file(_path(file_name)), work_size, weight_size)


@CALLS.error
def aclmdlQuerySizeFromMem(model: Any, model_size: int, work_size: Any, weight_size: Any) -> int:
    """As aclmdlQuerySize for a model in host memory."""
    return _store_sizes(parse_model(_blob(model, model_size)), work_size, weight_size)


# -- loading ---------------------------------------------------------------------------------
@CALLS.error
def aclmdlLoadFromFile(model_path: Any, model_id: Any) -> int:
    """Load a model file onto the current device and write its id."""
    path = _path(model_path)
    cdata.require(model_id, "modelId")
    return _store_model_id(model_id, *RUNTIME.load_from_file(path))


@CALLS.error
def aclmdlLoadFromMem(model: Any, model_size: int, model_id: Any) -> int:
    """Load a model from host memory and write its id; NULL or size 0 → 100000."""
    address = cdata.require(model, "model")
    cdata.require(model_id, "modelId")
    return _store_model_id(model_id, *RUNTIME.load_from_mem(address, model_size))


@CALLS.error
def aclmdlLoadFromFileWithMem(
    model_path: Any,
    model_id: Any,
    work_ptr: Any,
    work_size: int,
    weight_ptr: Any,
    weight_size: int,
) -> int:
    """Load a model file with the caller's work and weight memory (checked, then reserved)."""
    path = _path(model_path)
    cdata.require(model_id, "modelId")
    _check_memory(load_model_file(path), (work_ptr, work_size), (weight_ptr, weight_size))
    return _store_model_id(model_id, *RUNTIME.load_from_file(path))


@CALLS.error
def aclmdlLoadFromMemWithMem(
    model: Any,
    model_size: int,
    model_id: Any,
    work_ptr: Any,
    work_size: int,
    weight_ptr: Any,
    weight_size: int,
) -> int:
    """Load a model from host memory with the caller's work and weight memory."""
    blob = _blob(model, model_size)
    cdata.require(model_id, "modelId")
    _check_memory(parse_model(blob), (work_ptr, work_size), (weight_ptr, weight_size))
    return _store_model_id(model_id, *RUNTIME.load_from_mem(cdata.address(model), model_size))


@CALLS.error
def aclmdlUnload(model_id: int) -> int:
    """Unload a model; unknown id → 145003."""
    return RUNTIME.unload(model_id)


# -- execution -------------------------------------------------------------------------------
@CALLS.error
def aclmdlExecute(model_id: int, inputs: Any, outputs: Any) -> int:
    """Run the model now on the current context; the task's code."""
    return RUNTIME.execute(model_id, cdata.address(inputs), cdata.address(outputs))


@CALLS.error
def aclmdlExecuteAsync(model_id: int, inputs: Any, outputs: Any, stream: Any) -> int:
    """Queue one execution on the stream."""
    return RUNTIME.execute_async(
        model_id, cdata.address(inputs), cdata.address(outputs), cdata.address(stream)
    )


@CALLS.error
def aclmdlExecuteV2(model_id: int, inputs: Any, outputs: Any, stream: Any, handle: Any) -> int:
    """Run the model on the stream and wait with the exec config's stream timeout."""
    return RUNTIME.execute_v2(
        model_id,
        cdata.address(inputs),
        cdata.address(outputs),
        cdata.address(stream),
        cdata.address(handle),
    )


@CALLS.error
def aclmdlExecuteAsyncV2(model_id: int, inputs: Any, outputs: Any, stream: Any, handle: Any) -> int:
    """Queue one execution with an exec config (its sync timeouts apply to the next sync)."""
    return RUNTIME.execute_async_v2(
        model_id,
        cdata.address(inputs),
        cdata.address(outputs),
        cdata.address(stream),
        cdata.address(handle),
    )
