"""Model files: the TOML format and ``.om`` containers read into a spec; the latency model.

A model file is TOML with a ``[model]`` table (name, kind, seed, optional ``[model.params]``),
``[[inputs]]`` / ``[[outputs]]`` tensor tables (name, dtype, shape, optional format) and an
optional ``[latency]`` table. Anything else is "not a model" (ACL code 145006); a path that cannot
be read is 145002.

The spec and its validation live in :mod:`device.model_spec`, the numpy kernels
(:class:`Kernel`, :func:`build_kernel`, :func:`typed_view`, :func:`reference`) in
:mod:`device.kernels`; both are re-exported here for callers outside the device package.

A dynamic dimension (``-1``) is reported as such in the description; the kernels and byte sizes
treat it as 1.
"""

from __future__ import annotations

import logging
import os
import tomllib

import numpy as np

from core.errors import ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID
from device import om
from device.kernels import Kernel, build_kernel, reference, typed_view
from device.model_spec import (
    ACL_FORMAT_ND,
    DTYPES,
    KINDS,
    LatencyProfile,
    ModelFormatError,
    ModelSpec,
    TensorSpec,
    invalid_model,
    spec_from_document,
)

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

MAX_MODEL_FILE_BYTES = 1 << 20
_MIB = float(1 << 20)


def parse_model(data: bytes, source: str = "<memory>") -> ModelSpec:
    """Parse and validate a model: an npufarm ``.om`` container (:mod:`device.om`) or a
    synthetic TOML model; raises ModelFormatError (145006) if it is neither (a real Ascend .om
    and a raw ONNX file get a message that says to convert with ``npufarm atc``)."""
    if om.is_npufarm_om(data) or om.is_ascend_om(data):
        return om.spec_from_om(data, source)
    if len(data) > MAX_MODEL_FILE_BYTES:
        raise invalid_model(source, f"larger than {MAX_MODEL_FILE_BYTES} bytes")
    if om.looks_like_onnx(data):
        raise invalid_model(source, f"an ONNX model is not an offline model; {om.CONVERT_HINT}")
    try:
        text = bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as exc:
        raise invalid_model(source, "not UTF-8 text") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise invalid_model(source, f"not TOML ({exc})") from exc
    return spec_from_document(doc, source)


def load_model_file(path: str | os.PathLike[str]) -> ModelSpec:
    """Read and parse a model file; unreadable path → 145002, not a model → 145006."""
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
