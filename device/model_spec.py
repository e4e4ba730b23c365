"""The model spec: tensors, latency profile, model kinds, and the validation every model passes.

A model document (the TOML model format's structure, or an ``.om`` container's metadata) has a
``model`` table (name, kind, seed, optional ``params``), ``inputs`` / ``outputs`` tensor tables
(name, dtype, shape, optional format), an optional ``latency`` table and, for kind ``onnx``, the
ONNX bytes as ``blob``. :func:`spec_from_document` turns one into a :class:`ModelSpec` or raises
:class:`ModelFormatError` (145006); :func:`check_kind` rejects what a kind cannot compute.

Reading files and containers is :mod:`device.models`; computing is :mod:`device.kernels`. Both
import this module, which imports neither.

A dynamic dimension (``-1``) is reported as such in the description; the kernels and byte sizes
treat it as 1.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID, AclError

__all__ = [
    "KINDS",
    "DTYPES",
    "ACL_FORMAT_ND",
    "ModelFormatError",
    "TensorSpec",
    "LatencyProfile",
    "ModelSpec",
    "invalid_model",
    "check_kind",
    "spec_from_document",
]

logger = logging.getLogger(__name__)

KINDS = ("identity", "add", "matmul", "softmax_classifier", "relu", "scale", "onnx")

# dtype name -> ACL enum value (aclDataType)
DTYPES: dict[str, int] = {
    "float32": 0,
    "float16": 1,
    "int8": 2,
    "int32": 3,
    "uint8": 4,
    "int16": 6,
    "uint16": 7,
    "uint32": 8,
    "int64": 9,
    "uint64": 10,
    "float64": 11,
    "bool": 12,
}
_FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})

ACL_FORMAT_ND = 2
MAX_DIMS = 128
MAX_NAME_CHARS = 127
MAX_TENSOR_BYTES = 1 << 40
MAX_WEIGHT_ELEMENTS = 1 << 26

# kind -> (input count, output count, float dtypes only, {param: type})
_KIND_RULES: dict[str, tuple[int, int, bool, dict[str, type]]] = {
    "identity": (1, 1, False, {}),
    "add": (2, 1, False, {}),
    "relu": (1, 1, False, {}),
    "scale": (1, 1, True, {"scale": float}),
    "matmul": (1, 1, True, {"units": int, "bias": bool}),
    "softmax_classifier": (1, 1, True, {"classes": int}),
    "onnx": (0, 0, False, {}),  # any counts and dtypes: the ONNX graph decides (device/om.py)
}
_TOP_KEYS = frozenset({"model", "inputs", "outputs", "latency", "blob"})
_MODEL_KEYS = frozenset({"name", "kind", "seed", "params", "description"})
_TENSOR_KEYS = frozenset({"name", "dtype", "shape", "format"})


class ModelFormatError(AclError):
    """A model file or description is invalid (default 145006, 145002 for unreadable paths)."""

    def __init__(
        self, message: str, code: int = ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID, **where: Any
    ) -> None:
        super().__init__(message, code, **where)


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; ``-1`` dims are dynamic (treated as 1 for sizes)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    format: int = ACL_FORMAT_ND

    @functools.cached_property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def acl_dtype(self) -> int:
        return DTYPES[self.dtype]

    @functools.cached_property
    def concrete_shape(self) -> tuple[int, ...]:
        return tuple(1 if dim == -1 else dim for dim in self.shape)

    @property
    def is_dynamic(self) -> bool:
        return -1 in self.shape

    @functools.cached_property
    def nbytes(self) -> int:
        return math.prod(self.concrete_shape) * self.np_dtype.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "format": self.format,
        }


@dataclass(frozen=True)
class LatencyProfile:
    """Modelled cost of one execution, before card speed and global time scale."""

    fixed_s: float = 0.0
    per_batch_s: float = 0.0
    per_mib_s: float = 0.0
    jitter_sigma: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "fixed_s": self.fixed_s,
            "per_batch_s": self.per_batch_s,
            "per_mib_s": self.per_mib_s,
            "jitter_sigma": self.jitter_sigma,
        }


@dataclass(frozen=True)
class ModelSpec:
    """A validated synthetic model; ``params`` is a sorted tuple of ``(key, value)`` pairs."""

    name: str
    kind: str
    seed: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    latency: LatencyProfile = field(default_factory=LatencyProfile)
    params: tuple[tuple[str, object], ...] = ()
    blob: bytes = field(default=b"", repr=False)  # kind "onnx": the ONNX model (device/om.py)

    def param(self, key: str, default: object = None) -> object:
        for name, value in self.params:
            if name == key:
                return value
        return default

    @property
    def input_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.inputs)

    @property
    def output_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.outputs)

    @property
    def batch_size(self) -> int:
        """Dim 0 of the first input (1 for a scalar input)."""
        shape = self.inputs[0].concrete_shape if self.inputs else ()
        return shape[0] if shape else 1

    def to_dict(self) -> dict[str, Any]:
        """The TOML document structure, msgpack-friendly (str, int, float, bool, list, dict)."""
        return {
            "model": {
                "name": self.name,
                "kind": self.kind,
                "seed": self.seed,
                "params": dict(self.params),
            },
            "inputs": [tensor.to_dict() for tensor in self.inputs],
            "outputs": [tensor.to_dict() for tensor in self.outputs],
            "latency": self.latency.to_dict(),
            **({"blob": self.blob} if self.blob else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild (and re-validate) a spec from :meth:`to_dict` output."""
        return spec_from_document(data, "<dict>")


# --------------------------------------------------------------------------- validation


def invalid_model(source: str, message: str) -> ModelFormatError:
    """The 145006 error for ``source`` (a path, ``<memory>``...) that is not a model."""
    return ModelFormatError(f"{source}: not a model: {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str, source: str) -> None:
    unknown = sorted(str(key) for key in table if key not in allowed)
    if unknown:
        raise invalid_model(source, f"unknown key(s) {', '.join(unknown)} in {where}")


def _name(value: object, where: str, source: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise invalid_model(source, f"{where} must be a string of 1-{MAX_NAME_CHARS} characters")
    return value


def _shape(value: object, where: str, source: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_DIMS:
        raise invalid_model(source, f"{where}.shape must be a list of at most {MAX_DIMS} ints")
    for dim in value:
        if not _is_int(dim) or (dim < 1 and dim != -1):
            raise invalid_model(source, f"{where}.shape has {dim!r}; dims are ints >= 1 or -1")
    return tuple(value)


def _tensor(table: object, where: str, source: str) -> TensorSpec:
    if not isinstance(table, Mapping):
        raise invalid_model(source, f"{where} must be a table")
    _check_keys(table, _TENSOR_KEYS, where, source)
    dtype = table.get("dtype")
    if dtype not in DTYPES:
        raise invalid_model(source, f"{where}.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    fmt = table.get("format", ACL_FORMAT_ND)
    if not _is_int(fmt) or not -1 <= fmt < 256:
        raise invalid_model(source, f"{where}.format must be an int in -1..255")
    spec = TensorSpec(
        name=_name(table.get("name"), f"{where}.name", source),
        dtype=dtype,
        shape=_shape(table.get("shape"), where, source),
        format=fmt,
    )
    if spec.nbytes > MAX_TENSOR_BYTES:
        raise invalid_model(source, f"{where} has {spec.nbytes} bytes (limit {MAX_TENSOR_BYTES})")
    return spec


def _tensors(value: object, role: str, source: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise invalid_model(source, f"missing [[{role}]] tables")
    tensors = tuple(_tensor(item, f"{role}[{i}]", source) for i, item in enumerate(value))
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise invalid_model(source, f"duplicate {role} names {names}")
    return tensors


def _latency(value: object, source: str) -> LatencyProfile:
    if not isinstance(value, Mapping):
        raise invalid_model(source, "[latency] must be a table")
    allowed = frozenset(LatencyProfile.__dataclass_fields__)
    _check_keys(value, allowed, "[latency]", source)
    for key, number in value.items():
        if not _is_number(number) or number < 0:
            raise invalid_model(source, f"latency.{key} must be a finite number >= 0")
    return LatencyProfile(**{key: float(number) for key, number in value.items()})


def _params(value: object, kind: str, source: str) -> tuple[tuple[str, object], ...]:
    if not isinstance(value, Mapping):
        raise invalid_model(source, "[model.params] must be a table")
    types = _KIND_RULES[kind][3]
    _check_keys(value, frozenset(types), f"[model.params] of kind {kind!r}", source)
    for key, param in value.items():
        wanted = types[key]
        ok = {
            bool: isinstance(param, bool),
            int: _is_int(param) and param >= 1,
            float: _is_number(param),
        }[wanted]
        if not ok:
            raise invalid_model(source, f"params.{key} must be a {wanted.__name__}, got {param!r}")
    return tuple(sorted((key, float(v) if types[key] is float else v) for key, v in value.items()))


def _expect(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise invalid_model(source, message)


def check_kind(spec: ModelSpec, source: str) -> None:
    """Reject tensor counts, dtypes and shapes the kind cannot compute."""
    kind = spec.kind
    _expect(kind in _KIND_RULES, source, f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "onnx":
        _expect(bool(spec.blob), source, "an onnx model comes in an .om container: npufarm atc")
        return
    n_in, n_out, float_only, _ = _KIND_RULES[kind]
    _expect(len(spec.inputs) == n_in, source, f"kind {kind!r} takes {n_in} input(s)")
    _expect(len(spec.outputs) == n_out, source, f"kind {kind!r} gives {n_out} output(s)")
    dtype = spec.inputs[0].dtype
    dtypes = sorted({tensor.dtype for tensor in spec.inputs + spec.outputs})
    _expect(len(dtypes) == 1, source, f"kind {kind!r} needs one dtype throughout, got {dtypes}")
    _expect(not float_only or dtype in _FLOAT_DTYPES, source, f"kind {kind!r} needs floats")
    x, y = spec.inputs[0].concrete_shape, spec.outputs[0].concrete_shape
    if kind in ("identity", "relu", "scale", "add"):
        shapes = {tensor.concrete_shape for tensor in spec.inputs + spec.outputs}
        _expect(len(shapes) == 1, source, f"kind {kind!r} needs equal shapes, got {shapes}")
        return
    _expect(len(y) == 2, source, f"kind {kind!r} needs a 2-D output [B, N], got {list(y)}")
    if kind == "matmul":
        _expect(len(x) == 2, source, f"matmul needs a 2-D input [B, K], got {list(x)}")
        width_key = "units"
    else:
        _expect(len(x) >= 2, source, f"{kind} needs an input [B, ...], got {list(x)}")
        width_key = "classes"
    _expect(x[0] == y[0], source, f"batch {x[0]} of the input differs from output {y[0]}")
    width = spec.param(width_key)
    _expect(width in (None, y[1]), source, f"params.{width_key}={width} but output has {y[1]}")
    weights = math.prod(x[1:]) * y[1]
    _expect(weights <= MAX_WEIGHT_ELEMENTS, source, f"{weights} weights exceed the limit")


def spec_from_document(doc: Mapping[str, Any], source: str) -> ModelSpec:
    """The validated spec of a model document (parsed TOML, :meth:`ModelSpec.to_dict` output
    or an ``.om`` container's metadata); :class:`ModelFormatError` naming ``source`` if not."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("model"), Mapping):
        raise invalid_model(source, "missing [model] table")
    _check_keys(doc, _TOP_KEYS, "the top level", source)
    model = doc["model"]
    _check_keys(model, _MODEL_KEYS, "[model]", source)
    kind = model.get("kind")
    if kind not in _KIND_RULES:
        raise invalid_model(source, f"model.kind {kind!r} is not one of {', '.join(KINDS)}")
    seed = model.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 1 << 63:
        raise invalid_model(source, f"model.seed must be an int in 0..2^63-1, got {seed!r}")
    spec = ModelSpec(
        name=_name(model.get("name", kind), "model.name", source),
        kind=kind,
        seed=seed,
        inputs=_tensors(doc.get("inputs"), "inputs", source),
        outputs=_tensors(doc.get("outputs"), "outputs", source),
        latency=_latency(doc.get("latency", {}), source),
        params=_params(model.get("params", {}), kind, source),
        blob=_blob(doc.get("blob", b""), kind, source),
    )
    check_kind(spec, source)
    return spec


def _blob(value: object, kind: str, source: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise invalid_model(source, "blob must be bytes")
    _expect(not value or kind == "onnx", source, f"kind {kind!r} takes no blob")
    return bytes(value)
