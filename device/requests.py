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
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_INTERNAL_ERROR,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_ERROR_RT_PARAM_INVALID,
    NpuFarmError,
)
from device.card_spec import CardSpec
from device.executor import Executor, ModelTable, Owners
from device.injection import CardFaults
from device.kernels import build_kernel
from device.loader import ModelLoader
from device.memory import Allocator, HbmSegment, prefault_preserves_contents
from device.model_spec import ModelSpec
from device.runner import TaskRunner
from device.streams import StreamScheduler

__all__ = ["OPS", "Handler", "CardState", "dispatch", "error_reply"]

logger = logging.getLogger(__name__)


class CardState(Protocol):
    """What the request ops use of a card (:class:`device.card.Card` is one)."""

    spec: CardSpec
    segment: HbmSegment
    allocator: Allocator
    owners: Owners  # allocation offset -> (client, serial); shared with the executor
    serials: Iterator[int]  # allocation serials: deferred writes' leases
    prefault_queue: deque[tuple[int, int]]  # (offset, nbytes) of fresh HBM to commit
    models: ModelTable  # shared with the executor
    faults: CardFaults
    executor: Executor
    runner: TaskRunner
    loader: ModelLoader
    scheduler: StreamScheduler

    def release(self, offset: int) -> int: ...

    def add_model(self, spec: ModelSpec, kernel: Any, client: bytes) -> int: ...

    def stats_body(self) -> dict[str, Any]: ...


Handler = Callable[[CardState, bytes, dict], "dict | None"]


def _int(body: dict, key: str) -> int:
    """``body[key]`` if it is an int (not a bool, str or float): TypeError otherwise, which
    the card answers with 100000."""
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer, got {type(value).__name__}")
    return value


def op_malloc(card: CardState, client: bytes, body: dict) -> dict:
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


def op_free(card: CardState, client: bytes, body: dict) -> dict:
    offset = _int(body, "offset")
    owner = card.owners.get(offset)
    if owner is None or owner[0] != client:
        return {"code": ACL_ERROR_RT_PARAM_INVALID, "error": "not a live allocation"}
    card.release(offset)
    return {}


def op_mem_info(card: CardState, client: bytes, body: dict) -> dict:
    return {"free": card.allocator.free_bytes, "total": card.spec.hbm_bytes}


def op_load(card: CardState, client: bytes, body: dict) -> dict | None:
    document = body["spec"]
    if isinstance(document, dict) and "blob_ref" in document:  # the model bytes, in shm
        name, offset, size = document.pop("blob_ref")
        document["blob"] = card.executor.read_host_bytes(client, name, offset, size)
    spec = ModelSpec.from_dict(document)
    if spec.kind == "onnx":  # may take longer than a heartbeat expiry: off the loop
        card.loader.submit(client, body["rid"], spec)
        return None
    return {"handle": card.add_model(spec, build_kernel(spec), client)}


def op_unload(card: CardState, client: bytes, body: dict) -> dict:
    handle = _int(body, "handle")
    entry = card.models.get(handle)
    if entry is None or entry[2] != client:
        return {"code": ACL_ERROR_INVALID_PARAM}
    del card.models[handle]
    return {}


def op_detach_host(card: CardState, client: bytes, body: dict) -> dict:
    name = body["name"]
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    card.executor.detach_host(client, name)
    return {}


def op_destroy_stream(card: CardState, client: bytes, body: dict) -> dict:
    card.scheduler.retire((client, _int(body, "stream")))
    return {}


def op_inject(card: CardState, client: bytes, body: dict) -> dict:
    return {"rule": card.faults.inject(body["rule"], body.get("rule_id"))}


def op_recover(card: CardState, client: bytes, body: dict) -> dict:
    kinds = body.get("kinds")
    removed = card.faults.recover(kinds)
    if kinds is None or "hang" in kinds:  # hangs that already fired end too
        card.runner.end_hangs()
    return {"removed": removed}


def op_stats(card: CardState, client: bytes, body: dict) -> dict:
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


def dispatch(card: CardState, client: bytes, body: dict) -> dict | None:
    """The reply to a request ``body`` (a map with an int ``rid``) through :data:`OPS`, or None
    when it is answered later. An op not in the table is refused with 100000."""
    op = body.get("op")
    handler = OPS.get(op) if isinstance(op, str) else None
    if handler is None:
        return {"code": ACL_ERROR_INVALID_PARAM, "error": f"unknown op {op!r}"}
    try:
        return handler(card, client, body)
    except Exception as exc:  # a request must never take the card down
        return error_reply(exc, op, card.spec.device_id)


def error_reply(exc: Exception, op: Any, device_id: int) -> dict:
    """The reply to request ``op`` whose handling raised ``exc``: the error's own code, 100000
    for arguments of the wrong type or value, else 507000 (logged: a card bug)."""
    if isinstance(exc, NpuFarmError):
        return {"code": exc.code, "error": str(exc)}
    if isinstance(exc, KeyError | TypeError | ValueError | OverflowError):
        return {"code": ACL_ERROR_INVALID_PARAM, "error": f"bad arguments: {exc}"}
    logger.error("card %d: request %r failed", device_id, op, exc_info=exc)
    return {"code": ACL_ERROR_RT_INTERNAL_ERROR, "error": repr(exc)}
