"""Synthetic models: the TOML model format, its validation and the latency model.

A model file is TOML with a ``[model]`` table (name, kind, seed, optional ``[model.params]``),
``[[inputs]]`` / ``[[outputs]]`` tensor tables (name, dtype, shape, optional format) and an
optional ``[latency]`` table. Anything else is "not a model" (ACL code 145006); a path that cannot
be read is 145002.

The numpy kernels (:class:`Kernel`, :func:`build_kernel`, :func:`typed_view`, :func:`reference`)
live in :mod:`device.kernels` and are re-exported here.

A dynamic dimension (``-1``) is reported as such in the description; the kernels and byte sizes
treat it as 1.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID,
    ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID,
    AclError,
)
from device.kernels import Compute as Compute  # re-exported: device/onnx_kernel.py uses it
from device.kernels import Kernel, build_kernel, reference, typed_view

__all__ = [
    "KINDS",
    "DTYPES",
    "ACL_FORMAT_ND",
    "MAX_MODEL_FILE_BYTES",
    "ModelFormatError",
    "TensorSpec",
    "LatencyProfile",
    "ModelSpec",
    "parse_model",
    "spec_from_document",
    "load_model_file",
    "Kernel",
    "build_kernel",
    "typed_view",
    "reference",
    "modelled_duration_s",
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
MAX_MODEL_FILE_BYTES = 1 << 20
MAX_DIMS = 128
MAX_NAME_CHARS = 127
MAX_TENSOR_BYTES = 1 << 40
MAX_WEIGHT_ELEMENTS = 1 << 26
_MIB = float(1 << 20)

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
        return _spec_from_document(data, "<dict>")


# --------------------------------------------------------------------------- validation


def _invalid(source: str, message: str) -> ModelFormatError:
    return ModelFormatError(f"{source}: not a model: {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str, source: str) -> None:
    unknown = sorted(str(key) for key in table if key not in allowed)
    if unknown:
        raise _invalid(source, f"unknown key(s) {', '.join(unknown)} in {where}")


def _name(value: object, where: str, source: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise _invalid(source, f"{where} must be a string of 1-{MAX_NAME_CHARS} characters")
    return value


def _shape(value: object, where: str, source: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_DIMS:
        raise _invalid(source, f"{where}.shape must be a list of at most {MAX_DIMS} ints")
    for dim in value:
        if not _is_int(dim) or (dim < 1 and dim != -1):
            raise _invalid(source, f"{where}.shape has {dim!r}; dims are ints >= 1 or -1")
    return tuple(value)


def _tensor(table: object, where: str, source: str) -> TensorSpec:
    if not isinstance(table, Mapping):
        raise _invalid(source, f"{where} must be a table")
    _check_keys(table, _TENSOR_KEYS, where, source)
    dtype = table.get("dtype")
    if dtype not in DTYPES:
        raise _invalid(source, f"{where}.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    fmt = table.get("format", ACL_FORMAT_ND)
    if not _is_int(fmt) or not -1 <= fmt < 256:
        raise _invalid(source, f"{where}.format must be an int in -1..255")
    spec = TensorSpec(
        name=_name(table.get("name"), f"{where}.name", source),
        dtype=dtype,
        shape=_shape(table.get("shape"), where, source),
        format=fmt,
    )
    if spec.nbytes > MAX_TENSOR_BYTES:
        raise _invalid(source, f"{where} has {spec.nbytes} bytes (limit {MAX_TENSOR_BYTES})")
    return spec


def _tensors(value: object, role: str, source: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise _invalid(source, f"missing [[{role}]] tables")
    tensors = tuple(_tensor(item, f"{role}[{i}]", source) for i, item in enumerate(value))
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise _invalid(source, f"duplicate {role} names {names}")
    return tensors


def _latency(value: object, source: str) -> LatencyProfile:
    if not isinstance(value, Mapping):
        raise _invalid(source, "[latency] must be a table")
    allowed = frozenset(LatencyProfile.__dataclass_fields__)
    _check_keys(value, allowed, "[latency]", source)
    for key, number in value.items():
        if not _is_number(number) or number < 0:
            raise _invalid(source, f"latency.{key} must be a finite number >= 0")
    return LatencyProfile(**{key: float(number) for key, number in value.items()})


def _params(value: object, kind: str, source: str) -> tuple[tuple[str, object], ...]:
    if not isinstance(value, Mapping):
        raise _invalid(source, "[model.params] must be a table")
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
            raise _invalid(source, f"params.{key} must be a {wanted.__name__}, got {param!r}")
    return tuple(sorted((key, float(v) if types[key] is float else v) for key, v in value.items()))


def _expect(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise _invalid(source, message)


def _check_kind(spec: ModelSpec, source: str) -> None:
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


def _spec_from_document(doc: Mapping[str, Any], source: str) -> ModelSpec:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("model"), Mapping):
        raise _invalid(source, "missing [model] table")
    _check_keys(doc, _TOP_KEYS, "the top level", source)
    model = doc["model"]
    _check_keys(model, _MODEL_KEYS, "[model]", source)
    kind = model.get("kind")
    if kind not in _KIND_RULES:
        raise _invalid(source, f"model.kind {kind!r} is not one of {', '.join(KINDS)}")
    seed = model.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 1 << 63:
        raise _invalid(source, f"model.seed must be an int in 0..2^63-1, got {seed!r}")
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
    _check_kind(spec, source)
    return spec


spec_from_document = _spec_from_document


def _blob(value: object, kind: str, source: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _invalid(source, "blob must be bytes")
    _expect(not value or kind == "onnx", source, f"kind {kind!r} takes no blob")
    return bytes(value)


def parse_model(data: bytes, source: str = "<memory>") -> ModelSpec:
    """Parse and validate a model: an npufarm ``.om`` container (:mod:`device.om`) or a
    synthetic TOML model; raises ModelFormatError (145006) if it is neither (a real Ascend .om
    and a raw ONNX file get a message that says to convert with ``npufarm atc``)."""
    from device import om

    if om.is_npufarm_om(data) or om.is_ascend_om(data):
        return om.spec_from_om(data, source)
    if len(data) > MAX_MODEL_FILE_BYTES:
        raise _invalid(source, f"larger than {MAX_MODEL_FILE_BYTES} bytes")
    if om.looks_like_onnx(data):
        raise _invalid(source, f"an ONNX model is not an offline model; {om.CONVERT_HINT}")
    try:
        text = bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as exc:
        raise _invalid(source, "not UTF-8 text") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _invalid(source, f"not TOML ({exc})") from exc
    return _spec_from_document(doc, source)


def load_model_file(path: str | os.PathLike[str]) -> ModelSpec:
    """Read and parse a model file; unreadable path → 145002, not a model → 145006."""
    from device import om

    try:
        where = os.fsdecode(path)
        with open(path, "rb") as handle:
            data = handle.read(8)
            # an .om container is read whole; anything else up to the TOML limit (+1 to see it)
            whole = om.is_npufarm_om(data) or om.is_ascend_om(data)
            data += handle.read() if whole else handle.read(MAX_MODEL_FILE_BYTES + 1 - len(data))
    except (OSError, TypeError, ValueError) as exc:
        raise ModelFormatError(
            f"cannot read model file {path!r}: {exc}", ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID
        ) from exc
    return parse_model(data, source=where)


# --------------------------------------------------------------------------- latency


def modelled_duration_s(
    latency: LatencyProfile,
    spec: ModelSpec,
    speed_factor: float,
    time_scale: float,
    rng: np.random.Generator,
) -> float:
    """Modelled execution time in seconds.

    ``(fixed + per_batch × batch + per_mib × input MiB) × jitter / speed_factor × time_scale``,
    where jitter is lognormal with median 1 (drawn only when ``jitter_sigma > 0``) and
    ``speed_factor > 1`` is a faster card. ``time_scale == 0`` returns 0.0 without drawing.
    """
    if speed_factor <= 0:
        raise ValueError(f"speed_factor must be > 0, got {speed_factor}")
    if time_scale < 0:
        raise ValueError(f"time_scale must be >= 0, got {time_scale}")
    if time_scale == 0:
        return 0.0
    base = (
        latency.fixed_s
        + latency.per_batch_s * spec.batch_size
        + latency.per_mib_s * spec.input_bytes / _MIB
    )
    if latency.jitter_sigma > 0:
        base *= float(rng.lognormal(0.0, latency.jitter_sigma))
    return base / speed_factor * time_scale
