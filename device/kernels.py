"""Model kernels: numpy for the synthetic kinds, onnxruntime (device/onnx_kernel.py) for ``onnx``.

Re-exported by :mod:`device.models`; the spec they compute comes from :mod:`device.model_spec`.

Kernels work on flat uint8 views of device memory: :meth:`Kernel.run` reinterprets the first
``nbytes`` of each view with the tensor's dtype and shape and writes results in place. Weights
come from ``np.random.default_rng(seed)``, so every process builds identical weights.
:func:`reference` runs the very same computation on fresh arrays.

A dynamic dimension (``-1``) is treated as 1 (``TensorSpec.concrete_shape``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID,
    ACL_ERROR_INVALID_PARAM,
    AclError,
)
from device.model_spec import ModelSpec, TensorSpec, check_kind
from device.onnx_kernel import make_onnx_compute

__all__ = [
    "Compute",
    "Kernel",
    "build_kernel",
    "typed_view",
    "reference",
]

logger = logging.getLogger(__name__)

_BIAS_SIGMA = 0.1

Compute = Callable[[list[np.ndarray], list[np.ndarray]], None]


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _weights(rng: np.random.Generator, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
    """``N(0, 1/sqrt(rows))`` weights, drawn in float32 so every dtype sees the same values."""
    weights = rng.standard_normal((rows, cols), dtype=np.float32)
    weights *= np.float32(1.0 / math.sqrt(rows))
    return weights.astype(dtype, copy=False)


def _finish(result: np.ndarray, out: np.ndarray) -> None:
    if result is not out:
        np.copyto(out, result, casting="same_kind")


def _identity(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
    np.copyto(ys[0], xs[0])


def _add(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
    np.add(xs[0], xs[1], out=ys[0])


def _relu(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
    np.maximum(xs[0], xs[0].dtype.type(0), out=ys[0])


def _make_scale(spec: ModelSpec) -> Compute:
    factor = float(spec.param("scale", 1.0))

    def scale(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        np.multiply(xs[0], factor, out=ys[0])

    return scale


def _make_matmul(spec: ModelSpec) -> Compute:
    x_spec, y_spec = spec.inputs[0], spec.outputs[0]
    ctype = _compute_dtype(x_spec.np_dtype)
    rng = np.random.default_rng(spec.seed)
    k, n = x_spec.concrete_shape[1], y_spec.concrete_shape[1]
    weights = _weights(rng, k, n, ctype)
    bias = None
    if spec.param("bias", True):
        bias = (rng.standard_normal(n, dtype=np.float32) * np.float32(_BIAS_SIGMA)).astype(ctype)

    def matmul(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        out = ys[0]
        result = out if out.dtype == ctype else np.empty(out.shape, ctype)
        np.matmul(xs[0].astype(ctype, copy=False), weights, out=result)
        if bias is not None:
            np.add(result, bias, out=result)
        _finish(result, out)

    return matmul


def _make_softmax_classifier(spec: ModelSpec) -> Compute:
    x_spec, y_spec = spec.inputs[0], spec.outputs[0]
    ctype = _compute_dtype(x_spec.np_dtype)
    features = math.prod(x_spec.concrete_shape[1:])
    weights = _weights(np.random.default_rng(spec.seed), features, y_spec.concrete_shape[1], ctype)

    def softmax_classifier(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        x, out = xs[0], ys[0]
        logits = out if out.dtype == ctype else np.empty(out.shape, ctype)
        np.matmul(x.reshape(x.shape[0], features).astype(ctype, copy=False), weights, out=logits)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        _finish(logits, out)

    return softmax_classifier


_FACTORIES: dict[str, Callable[[ModelSpec], Compute]] = {
    "identity": lambda spec: _identity,
    "add": lambda spec: _add,
    "relu": lambda spec: _relu,
    "scale": _make_scale,
    "matmul": _make_matmul,
    "softmax_classifier": _make_softmax_classifier,
    "onnx": make_onnx_compute,  # onnxruntime is imported when the first ONNX model builds
}


def typed_view(buffer: np.ndarray, tensor: TensorSpec) -> np.ndarray:
    """The first ``tensor.nbytes`` of a flat uint8 buffer as a typed, shaped array (no copy)."""
    nbytes = tensor.nbytes
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise AclError(f"tensor {tensor.name}: expected a flat uint8 view", ACL_ERROR_INVALID_PARAM)
    if buffer.size < nbytes:
        raise AclError(
            f"tensor {tensor.name}: buffer of {buffer.size} bytes, model needs {nbytes}",
            ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID,
        )
    try:
        return buffer[:nbytes].view(tensor.np_dtype).reshape(tensor.concrete_shape)
    except ValueError as exc:
        raise AclError(f"tensor {tensor.name}: {exc}", ACL_ERROR_INVALID_PARAM) from exc


class Kernel:
    """The compiled form of a model: weights generated once, computation in place."""

    def __init__(self, spec: ModelSpec, compute: Compute) -> None:
        self.spec = spec
        self._compute = compute

    def run(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Compute from flat uint8 input views into flat uint8 output views (in place)."""
        spec = self.spec
        if len(inputs) != len(spec.inputs) or len(outputs) != len(spec.outputs):
            raise AclError(
                f"model {spec.name} takes {len(spec.inputs)} input and {len(spec.outputs)} "
                f"output buffers, got {len(inputs)} and {len(outputs)}",
                ACL_ERROR_INVALID_PARAM,
            )
        xs = [typed_view(buf, tensor) for buf, tensor in zip(inputs, spec.inputs)]
        ys = [typed_view(buf, tensor) for buf, tensor in zip(outputs, spec.outputs)]
        self._compute(xs, ys)

    def compute(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        """Compute from typed, shaped inputs into typed, shaped outputs."""
        self._compute(xs, ys)

    def __repr__(self) -> str:
        return f"Kernel({self.spec.name!r}, kind={self.spec.kind!r})"


def build_kernel(spec: ModelSpec) -> Kernel:
    """Validate ``spec`` against its kind and build its kernel (weights from ``spec.seed``)."""
    check_kind(spec, f"model {spec.name!r}")
    return Kernel(spec, _FACTORIES[spec.kind](spec))


_cached_kernel = functools.lru_cache(maxsize=4)(build_kernel)


def _typed_input(array: np.ndarray, tensor: TensorSpec) -> np.ndarray:
    data = np.asarray(array)
    count = math.prod(tensor.concrete_shape)
    if data.dtype == tensor.np_dtype and data.size == count:
        return data.reshape(tensor.concrete_shape)
    if data.dtype == np.uint8 and data.ndim == 1 and data.size >= tensor.nbytes:
        raw = np.ascontiguousarray(data[: tensor.nbytes])
        return raw.view(tensor.np_dtype).reshape(tensor.concrete_shape)
    raise ValueError(
        f"input {tensor.name}: expected {count} x {tensor.dtype} or raw bytes, "
        f"got {data.size} x {data.dtype}"
    )


def reference(spec: ModelSpec, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs as fresh arrays; inputs are typed arrays or raw uint8 bytes."""
    if len(inputs) != len(spec.inputs):
        raise ValueError(f"model {spec.name} takes {len(spec.inputs)} inputs, got {len(inputs)}")
    xs = [_typed_input(array, tensor) for array, tensor in zip(inputs, spec.inputs)]
    ys = [np.empty(tensor.concrete_shape, tensor.np_dtype) for tensor in spec.outputs]
    _cached_kernel(spec).compute(xs, ys)
    return ys
