"""A card against malformed input (integration): garbage frames and bodies are dropped,
bad tasks fail with their ACL code, bad requests get an error reply, and the card keeps
working throughout.

One real card in a thread against the scripted broker of :mod:`tests.integration.card_harness`.
"""

from __future__ import annotations

import pytest

from core import protocol as proto
from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_ID_INVALID,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_DEVICE_MEM_ERROR,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
)
from core.protocol import WORKER_HEADER, Cmd
from device.memory import MAX_OFFSET
from tests.integration.card_harness import (
    CLIENT,
    HBM_BYTES,
    OTHER_CLIENT,
    TENSOR_BYTES,
    AddBuffers,
    run_good_exec,
)

pytestmark = pytest.mark.timeout(30)


def test_garbage_is_dropped_and_the_card_keeps_working(harness):
    """A catalogue of malformed frames sent to one card in turn, each followed by a good
    execution (long for that reason: one card must survive them all, in sequence)."""
    h = harness
    h.start()
    buffers = AddBuffers(h)
    handle = h.load_add()
    run_good_exec(h, buffers, handle)

    # -- malformed frames: dropped without an answer
    b = h.broker
    good_body = proto.pack([buffers.task(999_001, handle)])
    for frames in (
        [b""],
        [b"", WORKER_HEADER],
        [b"", WORKER_HEADER, Cmd.SUBMIT, CLIENT],
        [b"", WORKER_HEADER, Cmd.SUBMIT, CLIENT, good_body, b"extra"],
        [b"x", WORKER_HEADER, Cmd.SUBMIT, CLIENT, good_body],  # no delimiter
        [b"", proto.CLIENT_HEADER, Cmd.SUBMIT, CLIENT, good_body],  # client header
        [b"", b"NPUW99", Cmd.SUBMIT, CLIENT, good_body],
        [b"", WORKER_HEADER, b"\x7f", CLIENT, good_body],  # unknown command
        [b"", WORKER_HEADER, b"", CLIENT, good_body],
        [b"", WORKER_HEADER, Cmd.SUBMIT, CLIENT, b"\xc1\xc1\xc1"],  # garbage msgpack
        [b"", WORKER_HEADER, Cmd.SUBMIT, CLIENT, good_body[:-3]],  # truncated msgpack
        [b"", WORKER_HEADER, Cmd.REQUEST, CLIENT, b"\x92\x01"],
        [b"", WORKER_HEADER, Cmd.COMPLETE, CLIENT, proto.pack([[1, 0, 0.0, 0.0]])],  # wrong way
        [b"", WORKER_HEADER, Cmd.READY, b"", proto.pack({})],
    ):
        b.send_raw(frames)
    # SUBMIT bodies that are not a list of tasks: dropped
    for body in ({"t": 1, "s": 0, "k": "record"}, 5, "tasks", None, b"\x01"):
        b.send(Cmd.SUBMIT, CLIENT, body)
    # REQUEST without a usable rid: dropped
    for body in ([1, 2], {"op": "stats"}, {"rid": "1", "op": "stats"}, 3):
        b.send(Cmd.REQUEST, CLIENT, body)

    # -- malformed tasks: failed with 107000 when they carry a task id, dropped otherwise
    bad_with_id = {
        "unknown kind": {"k": "launch", "t": b.task_id(), "s": 0},
        "exec without model": {"k": "exec", "t": b.task_id(), "s": 0, "i": [], "o": []},
        "exec with string refs": buffers.task(b.task_id(), handle, i=[["x", 1]]),
        "copy negative size": {
            "k": "copy",
            "t": b.task_id(),
            "s": 0,
            "dst": [h.shm_name, 0],
            "src": [h.shm_name, 0],
            "n": -4,
        },
        "wait without wt": {"k": "wait", "t": b.task_id(), "s": 0, "ws": 1},
        "no stream": {"k": "record", "t": b.task_id()},
    }
    bad_without_id = [None, 7, [1, 2], {"k": "record", "s": 0}, {"t": "8", "s": 0, "k": "record"}]
    b.submit([*bad_with_id.values(), *bad_without_id])

    # -- well-formed tasks naming memory they may not touch: 107000 at start
    freed = h.malloc(TENSOR_BYTES)
    assert b.request("free", offset=freed)["code"] == ACL_SUCCESS
    x_ref = [h.ptr(buffers.x), TENSOR_BYTES]
    y_ref = [h.ptr(buffers.y), TENSOR_BYTES]
    MEMORY_FAULTS = {  # noqa: N806
        "freed memory",
        "past the block",
        "offset past the block",
        "memset of a freed range",
    }
    bad_address = {
        "other device": buffers.task(b.task_id(), handle, i=[[h.ptr(buffers.x, 1), 4096], y_ref]),
        "old epoch": buffers.task(b.task_id(), handle, o=[[h.ptr(buffers.z, 0, 0), 4096]]),
        "freed memory": buffers.task(b.task_id(), handle, i=[x_ref, [h.ptr(freed), 4096]]),
        "past the block": buffers.task(b.task_id(), handle, o=[[h.ptr(buffers.z), 8192]]),
        "offset past the block": buffers.task(
            b.task_id(), handle, o=[[h.ptr(buffers.z) + 64, 4096]]
        ),
        "beyond the segment": buffers.task(
            b.task_id(), handle, i=[[h.ptr(HBM_BYTES * 2), 4], y_ref]
        ),
        "zero bytes far away": buffers.task(b.task_id(), handle, o=[[h.ptr(MAX_OFFSET), 0]]),
        "negative size": buffers.task(b.task_id(), handle, i=[[h.ptr(buffers.x), -1], y_ref]),
        "not a device pointer": buffers.task(
            b.task_id(), handle, i=[[0x7FFF_0000_1000, 4096], y_ref]
        ),
        "too few inputs": buffers.task(b.task_id(), handle, i=[x_ref]),
        "output too small": buffers.task(b.task_id(), handle, o=[[h.ptr(buffers.z), 16]]),
        "memset of a freed range": {
            "k": "memset",
            "t": b.task_id(),
            "s": 4,
            "dst": [h.shm_name, freed],
            "n": 64,
            "v": 1,
        },
        "memset zero bytes past the segment": {
            "k": "memset",
            "t": b.task_id(),
            "s": 4,
            "dst": [h.shm_name, HBM_BYTES * 4],
            "n": 0,
            "v": 1,
        },
        "copy from another farm": {
            "k": "copy",
            "t": b.task_id(),
            "s": 4,
            "dst": [h.shm_name, buffers.z],
            "src": ["npufarm-otherfarm-card0-e1", 0],
            "n": 64,
        },
        "copy from a malformed segment name": {
            "k": "copy",
            "t": b.task_id(),
            "s": 4,
            "dst": [h.shm_name, buffers.z],
            "src": [f"npufarm-{h.farm_id}-../../etc", 0],
            "n": 0,
        },
        "copy from a missing segment": {
            "k": "copy",
            "t": b.task_id(),
            "s": 4,
            "dst": [h.shm_name, buffers.z],
            "src": [f"npufarm-{h.farm_id}-nosuch", 0],
            "n": 64,
        },
    }
    unknown_model = buffers.task(b.task_id(), handle + 100)
    foreign_model = buffers.task(b.task_id(), handle)  # submitted by another client
    b.submit([*bad_address.values(), unknown_model])
    b.submit([foreign_model], client=OTHER_CLIENT)

    # -- requests the card must answer with an error code
    error_requests = {
        b.request_nowait("frobnicate"): ACL_ERROR_INVALID_PARAM,
        b.request_nowait(None): ACL_ERROR_INVALID_PARAM,
        b.request_nowait("malloc"): ACL_ERROR_INVALID_PARAM,  # no size
        b.request_nowait("malloc", size="big"): ACL_ERROR_INVALID_PARAM,
        b.request_nowait("malloc", size=0): ACL_ERROR_INVALID_PARAM,
        b.request_nowait("malloc", size=-5): ACL_ERROR_INVALID_PARAM,
        b.request_nowait("malloc", size=HBM_BYTES * 2): ACL_ERROR_RT_MEMORY_ALLOCATION,
        b.request_nowait("free", offset=freed): ACL_ERROR_RT_PARAM_INVALID,
        b.request_nowait("free", offset=buffers.x + 1): ACL_ERROR_RT_PARAM_INVALID,
        b.request_nowait("free", offset="x"): ACL_ERROR_INVALID_PARAM,
        b.request_nowait("unload", handle=handle + 100): ACL_ERROR_INVALID_PARAM,
        b.request_nowait("load"): ACL_ERROR_INVALID_PARAM,  # no spec
    }
    not_yours = b.request_nowait("free", OTHER_CLIENT, offset=buffers.x)
    not_your_model = b.request_nowait("unload", OTHER_CLIENT, handle=handle)

    for rid, code in error_requests.items():
        reply = b.reply(rid)
        assert reply["code"] == code, (rid, reply)
    assert b.reply(not_yours, OTHER_CLIENT)["code"] == ACL_ERROR_RT_PARAM_INVALID
    assert b.reply(not_your_model, OTHER_CLIENT)["code"] == ACL_ERROR_INVALID_PARAM

    rows = b.completions(
        [t["t"] for t in bad_with_id.values()]
        + [t["t"] for t in bad_address.values()]
        + [unknown_model["t"]]
    )
    for name, task in bad_with_id.items():
        assert rows[task["t"]][1] == ACL_ERROR_RT_PARAM_INVALID, name
    for name, task in bad_address.items():
        # a range of this card's memory that is not (or no longer) allocated is a device memory
        # fault (the client checks pointers at submission, so it was freed under the task);
        # anything else is a bad parameter
        expected = (
            ACL_ERROR_RT_DEVICE_MEM_ERROR if name in MEMORY_FAULTS else ACL_ERROR_RT_PARAM_INVALID
        )
        assert rows[task["t"]][1] == expected, name
    assert rows[unknown_model["t"]][1] == ACL_ERROR_GE_EXEC_MODEL_ID_INVALID
    foreign = b.completions([foreign_model["t"]], client=OTHER_CLIENT)
    assert foreign[foreign_model["t"]][1] == ACL_ERROR_GE_EXEC_MODEL_ID_INVALID

    # -- the card is still alive and correct; nothing was answered that should have been dropped
    assert h.alive(), h.errors
    run_good_exec(h, buffers, handle)
    stats = b.request("stats")
    assert stats["done"] == 2
    # tasks dropped without an id are announced to the broker (its ledger counted the batch)
    refused = [m for m in b.inbox if m.cmd == Cmd.CARD_EVENT and b"refused" in m.body]
    assert [m for m in b.inbox if m not in refused] == [], b.inbox
    assert h.alive(), h.errors
