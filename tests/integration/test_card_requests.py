"""A card's requests (integration): READY, then malloc, load, exec, stats, unload and free
end to end; requests with impossible arguments get an error reply and the card lives on.

One real card in a thread against the scripted broker of :mod:`tests.integration.card_harness`.
"""

from __future__ import annotations

import math
import os
import time

import pytest

from core import protocol as proto
from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID,
    ACL_ERROR_INVALID_PARAM,
    ACL_SUCCESS,
)
from core.protocol import Cmd
from tests.integration.card_harness import DEVICE, EPOCH, HBM_BYTES, SHM_DIR, AddBuffers

pytestmark = pytest.mark.timeout(30)


def test_ready_then_malloc_load_exec(harness):
    h = harness
    before = time.monotonic()
    ready = h.start()
    assert ready == {
        "device_id": DEVICE,
        "epoch": EPOCH,
        "pid": os.getpid(),
        "shm_name": h.shm_name,
        "hbm_bytes": HBM_BYTES,
        "soc_name": "Ascend910B",
        "exec_slots": 2,
    }
    assert (SHM_DIR / h.shm_name).stat().st_size == HBM_BYTES

    info = h.broker.request("mem_info")
    assert info == {"rid": info["rid"], "code": 0, "free": HBM_BYTES, "total": HBM_BYTES}

    buffers = AddBuffers(h)
    offsets = [buffers.x, buffers.y, buffers.z]
    assert len(set(offsets)) == 3
    assert all(o % 64 == 0 and 0 <= o < HBM_BYTES for o in offsets)
    assert h.broker.request("mem_info")["free"] < HBM_BYTES

    handle = h.load_add()
    assert isinstance(handle, int)

    task_id = h.broker.task_id()
    h.broker.submit([buffers.task(task_id, handle)])
    rows = h.broker.completions([task_id])
    tid, code, start_s, end_s, stream, queued_s = rows[task_id]
    assert (tid, code) == (task_id, ACL_SUCCESS)
    assert before <= queued_s <= start_s <= end_s <= time.monotonic()
    assert stream == buffers.task(task_id, handle)["s"]
    buffers.check_output()

    stats = h.broker.request("stats")
    assert stats["done"] == 1 and stats["failed"] == 0 and stats["submitted"] == 1
    assert stats["epoch"] == EPOCH and stats["hbm_total"] == HBM_BYTES
    # the card heartbeats the broker with the same stats
    beat = h.broker.pump_for(lambda: [b for b in h.broker.heartbeats if b.get("done") == 1])
    assert beat[-1]["hbm_used"] == stats["hbm_used"] > 0

    # unload, free, and the memory is back
    assert h.broker.request("unload", handle=handle)["code"] == ACL_SUCCESS
    for offset in offsets:
        assert h.broker.request("free", offset=offset)["code"] == ACL_SUCCESS
    assert h.broker.request("mem_info")["free"] == HBM_BYTES
    assert h.alive()


def test_malloc_of_an_infinite_size_is_refused_not_fatal(harness):
    h = harness
    h.start()
    rid = h.broker.request_nowait("malloc", size=math.inf)
    h.broker.pump_for(lambda: not h.alive() or h.broker.pending(Cmd.REPLY))
    assert h.alive(), h.errors
    assert h.broker.reply(rid)["code"] == ACL_ERROR_INVALID_PARAM


def test_load_of_an_invalid_model_gets_an_error_reply(harness):
    """A bad model spec is answered with its ACL code (not swallowed without a reply)."""
    h = harness
    h.start()
    rid = h.broker.request_nowait("load", spec={"model": {"kind": "no-such-kind"}})
    reply = h.broker.reply(rid, timeout_s=2.0)
    assert reply["code"] == ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID, reply
    assert h.alive()


def test_a_request_marked_no_reply_takes_effect_and_gets_no_reply(harness):
    """A release nobody waits for (a client's teardown) gets no REPLY, so the broker has
    nothing to drop for a client that left; the op itself is done."""
    h = harness
    h.start()
    free_before = h.broker.request("mem_info")["free"]
    offset = h.malloc(4096)
    assert h.broker.request("mem_info")["free"] < free_before
    rid = h.broker.request_nowait("free", offset=offset, **{proto.NO_REPLY: True})
    assert h.broker.request("mem_info")["free"] == free_before  # (answered after the free)
    h.broker.pump(50.0)
    assert not [m for m in h.broker.pending(Cmd.REPLY) if proto.unpack(m.body)["rid"] == rid]
