"""npufarm's offline-model container (``.om``): what ``npufarm atc`` writes and the loaders read.

A real Ascend ``.om`` holds a graph compiled for one SoC by ATC; npufarm cannot run that. Its own
``.om`` keeps the *source* model plus the metadata ATC would have fixed at conversion time
(tensor names, dtypes, shapes, formats), so a model description is known without running it::

    offset  size  field
    0       8     magic  b"NPUFAROM"
    8       2     container version (big-endian, 1)
    10      2     framework (ATC --framework: 5 = ONNX)
    12      4     metadata length M (JSON, UTF-8)
    16      8     model length N
    24      4     CRC-32 of the model bytes
    28      M     metadata: {"format": "npufarm.om/1", "name", "framework", "soc_version",
                             "inputs": [{"name", "dtype", "shape", "format"}], "outputs": [...],
                             "latency": {...}, "atc": {options as given}, "source", "sha256"}
    28+M    N     the model (ONNX bytes)

A real Ascend offline model starts with the GE model-file magic ``0x444F4D49`` (little-endian:
``b"IMOD"``); loading one fails with 145006 and a message naming ``npufarm atc``. Nothing here
imports onnx or onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from device.model_spec import ModelSpec, invalid_model, spec_from_document

__all__ = [
    "OM_MAGIC",
    "ASCEND_OM_MAGIC",
    "HEADER",
    "FRAMEWORK_ONNX",
    "FRAMEWORKS",
    "is_npufarm_om",
    "is_ascend_om",
    "looks_like_onnx",
    "pack_om",
    "unpack_om",
    "spec_from_om",
]

logger = logging.getLogger(__name__)

OM_MAGIC = b"NPUFAROM"
ASCEND_OM_MAGIC = b"IMOD"  # GE ModelFileHeader magic 0x444F4D49, little-endian on disk
HEADER = struct.Struct(">8sHHIQI")
CONTAINER_VERSION = 1
METADATA_FORMAT = "npufarm.om/1"
FRAMEWORK_ONNX = 5
FRAMEWORKS = {0: "Caffe", 1: "MindSpore", 3: "TensorFlow", 5: "ONNX"}  # ATC --framework values
MAX_METADATA_BYTES = 16 << 20

CONVERT_HINT = (
    "convert the source model for npufarm: "
    "npufarm atc --model=<model.onnx> --framework=5 --output=<out/name> --soc_version=<SoC>"
)


def is_npufarm_om(data: bytes) -> bool:
    return bytes(data[: len(OM_MAGIC)]) == OM_MAGIC


def is_ascend_om(data: bytes) -> bool:
    return bytes(data[: len(ASCEND_OM_MAGIC)]) == ASCEND_OM_MAGIC


def looks_like_onnx(data: bytes) -> bool:
    """Whether ``data`` is a serialized ONNX ModelProto (it starts with field 1, ``ir_version``,
    a small varint); with the onnx package at hand, whether it parses to a graph with nodes.
    Only used to give a helpful message, never to accept a model."""
    head = bytes(data[:2])
    if len(head) < 2 or head[0] != 0x08 or not 1 <= head[1] < 64:
        return False
    try:
        import onnx  # optional heavy dependency (the onnx extra): imported lazily
    except ImportError:
        return True
    try:
        return len(onnx.load_model_from_string(bytes(data)).graph.node) > 0
    except Exception:  # DecodeError and friends: not ONNX after all
        return False


def pack_om(metadata: Mapping[str, Any], model: bytes, framework: int = FRAMEWORK_ONNX) -> bytes:
    """The container bytes for ``model`` with ``metadata`` (JSON-serialisable)."""
    meta = dict(metadata)
    meta.setdefault("format", METADATA_FORMAT)
    meta["sha256"] = hashlib.sha256(model).hexdigest()
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    header = HEADER.pack(
        OM_MAGIC, CONTAINER_VERSION, framework, len(text), len(model), zlib.crc32(model)
    )
    return header + text + bytes(model)


def unpack_om(data: bytes, source: str = "<memory>") -> tuple[dict[str, Any], bytes]:
    """(metadata, model bytes) of a container; 145006 when it is not a valid one."""
    view = memoryview(data)
    if is_ascend_om(view):
        raise invalid_model(
            source,
            "this is an Ascend offline model compiled by ATC for real hardware; npufarm "
            f"cannot run compiled graphs, {CONVERT_HINT}",
        )
    if len(view) < HEADER.size or not is_npufarm_om(view):
        raise invalid_model(source, f"too short or no npufarm .om header; {CONVERT_HINT}")
    magic, version, framework, meta_len, model_len, crc = HEADER.unpack_from(view)
    if version != CONTAINER_VERSION:
        raise invalid_model(
            source, f"container version {version}, this npufarm reads {CONTAINER_VERSION}"
        )
    if meta_len > MAX_METADATA_BYTES or HEADER.size + meta_len + model_len != len(view):
        raise invalid_model(
            source, f"truncated or padded: header says {meta_len}+{model_len} bytes"
        )
    body = view[HEADER.size + meta_len :]
    if zlib.crc32(body) != crc:
        raise invalid_model(source, "model bytes fail their CRC-32 (corrupted file)")
    try:
        meta = json.loads(bytes(view[HEADER.size : HEADER.size + meta_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_model(source, f"metadata is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise invalid_model(source, f"metadata format is not {METADATA_FORMAT!r}")
    if framework != FRAMEWORK_ONNX:
        raise invalid_model(
            source, f"framework {framework} ({FRAMEWORKS.get(framework, '?')}): only ONNX"
        )
    return meta, bytes(body)


def spec_from_om(data: bytes, source: str = "<memory>") -> ModelSpec:
    """The model spec (kind ``onnx``, the ONNX bytes as its blob) of a container."""
    meta, model = unpack_om(data, source)
    document = {
        "model": {"name": meta.get("name") or "model", "kind": "onnx", "seed": 0},
        "inputs": meta.get("inputs"),
        "outputs": meta.get("outputs"),
        "latency": meta.get("latency") or {},
        "blob": model,
    }
    return spec_from_document(document, source)
