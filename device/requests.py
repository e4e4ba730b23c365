"""The card's request ops: one explicit table from op name to handler.

A REQUEST body is ``{"rid": int, "op": str, ...}``; the handler returns the reply map (the card
adds ``rid`` and ``code``, 0 unless set), or None when the answer comes later (a model still
building, device/loader.py). An op not in :data:`OPS` is refused with 100000
(ACL_ERROR_INVALID_PARAM), as is a body whose fields have the wrong types: no attribute lookup
by a name off the wire.

==============  =========================================  ====================================
op              body                                       reply
==============  =========================================  ====================================
malloc          size                                       offset
free            offset                                     {}
mem_info        —                                          free, total
load            spec (a ModelSpec map; blob or blob_ref)   handle (maybe later)
unload          handle                                     {}
detach_host     name (the client's pinned host segment)    {} (also when it was not attached)
destroy_stream  stream                                     {} (the entry goes once drained)
inject          rule, rule_id?                             rule
recover         kinds?                                     removed
stats           —                                          the heartbeat's stats body
==============  =========================================  ====================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_ERROR_RT_PARAM_INVALID,
)
from device import executor
from device.kernels import build_kernel
from device.memory import prefault_preserves_contents
from device.models import ModelSpec

if TYPE_CHECKING:
    from device.card import Card

__all__ = ["OPS", "Handler"]

logger = logging.getLogger(__name__)

Handler = Callable[["Card", bytes, dict], "dict | None"]


def _int(body: dict, key: str) -> int:
    """``body[key]`` if it is an int (not a bool, str or float): TypeError otherwise, which
    the card answers with 100000."""
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer, got {type(value).__name__}")
    return value


def op_malloc(card: Card, client: bytes, body: dict) -> dict:
    size = _int(body, "size")
    if size <= 0:
        return {"code": ACL_ERROR_INVALID_PARAM}
    injected = card.faults.on_malloc()
    if injected:
        return {"code": injected, "error": "injected out of memory"}
    offset = card.allocator.alloc(size)
    if offset is None:
        return {
            "code": ACL_ERROR_RT_MEMORY_ALLOCATION,
            "error": f"HBM exhausted: {size} bytes requested, {card.allocator.free_bytes} free",
        }
    if prefault_preserves_contents():
        # commit pages in chunks from the loop, between its turns
        card.prefault_queue.append((offset, size))
    else:
        try:
            card.segment.prefault(offset, size)
        except OSError as exc:  # /dev/shm is full: an allocation failure, not SIGBUS
            card.allocator.free(offset)
            return {"code": ACL_ERROR_RT_MEMORY_ALLOCATION, "error": f"no HBM pages: {exc}"}
    card.owners[offset] = (client, next(card.serials))
    return {"offset": offset}


def op_free(card: Card, client: bytes, body: dict) -> dict:
    offset = _int(body, "offset")
    owner = card.owners.get(offset)
    if owner is None or owner[0] != client:
        return {"code": ACL_ERROR_RT_PARAM_INVALID, "error": "not a live allocation"}
    card.release(offset)
    return {}


def op_mem_info(card: Card, client: bytes, body: dict) -> dict:
    return {"free": card.allocator.free_bytes, "total": card.spec.hbm_bytes}


def op_load(card: Card, client: bytes, body: dict) -> dict | None:
    document = body["spec"]
    if isinstance(document, dict) and "blob_ref" in document:  # the model bytes, in shm
        name, offset, size = document.pop("blob_ref")
        document["blob"] = executor.read_host_bytes(card, client, name, offset, size)
    spec = ModelSpec.from_dict(document)
    if spec.kind == "onnx":  # may take longer than a heartbeat expiry: off the loop
        card.loader.submit(client, body["rid"], spec)
        return None
    return {"handle": card.add_model(spec, build_kernel(spec), client)}


def op_unload(card: Card, client: bytes, body: dict) -> dict:
    handle = _int(body, "handle")
    entry = card.models.get(handle)
    if entry is None or entry[2] != client:
        return {"code": ACL_ERROR_INVALID_PARAM}
    del card.models[handle]
    return {}


def op_detach_host(card: Card, client: bytes, body: dict) -> dict:
    name = body["name"]
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    segment = card.attached.pop((client, name), None)
    if segment is not None:
        segment.close()
    return {}


def op_destroy_stream(card: Card, client: bytes, body: dict) -> dict:
    card.scheduler.retire((client, _int(body, "stream")))
    return {}


def op_inject(card: Card, client: bytes, body: dict) -> dict:
    return {"rule": card.faults.inject(body["rule"], body.get("rule_id"))}


def op_recover(card: Card, client: bytes, body: dict) -> dict:
    kinds = body.get("kinds")
    removed = card.faults.recover(kinds)
    if kinds is None or "hang" in kinds:  # hangs that already fired end too
        card.end_hangs()
    return {"removed": removed}


def op_stats(card: Card, client: bytes, body: dict) -> dict:
    return card.stats_body()


OPS: dict[str, Handler] = {
    "malloc": op_malloc,
    "free": op_free,
    "mem_info": op_mem_info,
    "load": op_load,
    "unload": op_unload,
    "detach_host": op_detach_host,
    "destroy_stream": op_destroy_stream,
    "inject": op_inject,
    "recover": op_recover,
    "stats": op_stats,
}
