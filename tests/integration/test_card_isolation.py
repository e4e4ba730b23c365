"""Integration tests for what the fuzzer found a card letting through (issue 9): one client
writing or reading another client's HBM, two waits holding each other's streams for ever, and a
departed client's tasks never getting a completion row (so the broker's ledger kept them in
flight). A real card in a thread against the scripted broker of tests/integration/card_harness.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from core.errors import (
    ACL_ERROR_RT_DEVICE_MEM_ERROR,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_RT_STREAM_ABORT,
    ACL_SUCCESS,
)
from core.protocol import Cmd
from device.memory import HbmSegment, segment_name
from tests.integration.card_harness import (
    CLIENT,
    CLIENT_PID,
    OTHER_CLIENT,
    TENSOR_BYTES,
    AddBuffers,
    CardHarness,
    harness,  # noqa: F401 (fixture)
    run_good_exec,
)

pytestmark = pytest.mark.timeout(30)

BLOCK = 4096


@pytest.fixture
def victim(harness):  # noqa: F811
    """OTHER_CLIENT's block filled with 0x11, and a block of CLIENT's own."""
    h = harness
    h.start()
    theirs = h.malloc(BLOCK, OTHER_CLIENT)
    mine = h.malloc(BLOCK, CLIENT)
    h.shm.view(theirs, BLOCK)[:] = 0x11
    h.shm.view(mine, BLOCK)[:] = 0x22
    return h, theirs, mine


def _run(h: CardHarness, task: dict, client: bytes = CLIENT) -> int:
    task_id = task["t"] = h.broker.task_id()
    task.setdefault("s", 1)
    h.broker.submit([task], client)
    return h.broker.completions([task_id], client)[task_id][1]


def test_a_memset_into_another_clients_block_fails_and_writes_nothing(victim):
    h, theirs, _ = victim
    seg = h.shm_name
    code = _run(h, {"k": "memset", "dst": [seg, theirs], "n": BLOCK, "v": 0xEE})
    assert code == ACL_ERROR_RT_DEVICE_MEM_ERROR
    code = _run(h, {"k": "memset", "dst": [seg, theirs + 64], "n": 16, "v": 0xEE})  # inside it
    assert code == ACL_ERROR_RT_DEVICE_MEM_ERROR
    assert bytes(h.shm.view(theirs, BLOCK)) == b"\x11" * BLOCK
    # the owner itself still may
    assert _run(h, {"k": "memset", "dst": [seg, theirs], "n": BLOCK, "v": 0x33}, OTHER_CLIENT) == 0
    assert bytes(h.shm.view(theirs, 4)) == b"\x33" * 4
    assert h.alive(), h.errors


def test_a_copy_to_or_from_another_clients_block_fails(victim):
    h, theirs, mine = victim
    seg = h.shm_name
    into = {"k": "copy", "dst": [seg, theirs], "src": [seg, mine], "n": BLOCK}
    assert _run(h, into) == ACL_ERROR_RT_DEVICE_MEM_ERROR
    assert bytes(h.shm.view(theirs, BLOCK)) == b"\x11" * BLOCK
    out_of = {"k": "copy", "dst": [seg, mine], "src": [seg, theirs], "n": BLOCK}
    assert _run(h, out_of) == ACL_ERROR_RT_DEVICE_MEM_ERROR  # reading is refused too
    assert bytes(h.shm.view(mine, BLOCK)) == b"\x22" * BLOCK
    unallocated = {"k": "memset", "dst": [seg, theirs + 2 * BLOCK + 8192], "n": 8, "v": 1}
    assert _run(h, unallocated) == ACL_ERROR_RT_DEVICE_MEM_ERROR  # same code as foreign
    assert h.alive(), h.errors


def test_a_copy_naming_another_cards_hbm_as_host_memory_is_refused(victim):
    h, _, mine = victim
    name = segment_name(h.farm_id, 1, 1)  # card 1's HBM, another client's bytes in it
    with HbmSegment.create(name, BLOCK) as other_card:
        try:
            other_card.view(0, BLOCK)[:] = 0x11
            task = {"k": "copy", "dst": [name, 0], "src": [h.shm_name, mine], "n": 16}
            assert _run(h, task) == ACL_ERROR_RT_PARAM_INVALID
            assert bytes(other_card.view(0, 16)) == b"\x11" * 16
        finally:
            other_card.unlink()
    assert h.alive(), h.errors


def test_a_copy_naming_another_processs_pinned_memory_is_refused(victim):
    """Pinned host segments carry their process's pid (``npufarm-<farm>-h<pid>-...``), client
    identities too (``c<pid>-<token>``): a card maps for a client only its own process's."""
    h, _, mine = victim
    name = f"npufarm-{h.farm_id}-h{CLIENT_PID + 1}-x-1"  # another process's pinned memory
    with HbmSegment.create(name, BLOCK) as theirs:
        try:
            theirs.view(0, BLOCK)[:] = 0x11
            into = {"k": "copy", "dst": [name, 0], "src": [h.shm_name, mine], "n": 16}
            out_of = {"k": "copy", "dst": [h.shm_name, mine], "src": [name, 0], "n": 16}
            assert _run(h, into) == ACL_ERROR_RT_PARAM_INVALID
            assert _run(h, out_of) == ACL_ERROR_RT_PARAM_INVALID
            assert bytes(theirs.view(0, 16)) == b"\x11" * 16
            assert bytes(h.shm.view(mine, 16)) == b"\x22" * 16
        finally:
            theirs.unlink()
    assert h.alive(), h.errors


def test_an_exec_on_another_clients_buffers_fails_and_the_cache_does_not_leak(victim):
    h, _, _ = victim
    handle = h.load_add(CLIENT)
    theirs = AddBuffers(h, client=OTHER_CLIENT, seed=1)
    mine = AddBuffers(h, client=CLIENT, seed=2)
    run_good_exec(h, mine, handle)  # a cached binding of CLIENT's own buffers
    foreign_out = [[h.ptr(theirs.z), TENSOR_BYTES]]
    foreign_in = [[h.ptr(theirs.x), TENSOR_BYTES], [h.ptr(mine.y), TENSOR_BYTES]]
    for field, ref in (("o", foreign_out), ("i", foreign_in)):
        h.floats(theirs.z)[:] = np.nan
        code = _run(h, mine.task(0, handle, **{field: ref}))
        assert code == ACL_ERROR_RT_DEVICE_MEM_ERROR, field
        assert np.isnan(h.floats(theirs.z)).all()
    # a block freed and allocated again by someone else: the old binding must not be reused
    assert h.broker.request("free", CLIENT, offset=mine.z)["code"] == ACL_SUCCESS
    again = h.malloc(TENSOR_BYTES, OTHER_CLIENT)
    assert again == mine.z
    h.floats(again)[:] = 7.0
    assert _run(h, mine.task(0, handle)) == ACL_ERROR_RT_DEVICE_MEM_ERROR
    assert (h.floats(again) == 7.0).all()
    assert h.alive(), h.errors


# --------------------------------------------------------------------------- waits


def test_two_waits_on_each_others_streams_fail_at_once(harness):  # noqa: F811
    h = harness
    h.start()
    b = h.broker
    first, second = b.task_id(), b.task_id()
    b.submit(
        [
            {"k": "wait", "t": first, "s": 1, "ws": 2, "wt": first + 9},
            {"k": "wait", "t": second, "s": 2, "ws": 1, "wt": second + 8},
        ]
    )
    rows = b.completions([first, second], timeout_s=2.0)
    assert {rows[t][1] for t in (first, second)} == {ACL_ERROR_RT_PARAM_INVALID}
    assert h.alive(), h.errors


def test_a_wait_on_a_record_never_submitted_on_its_stream_fails(harness):  # noqa: F811
    h = harness
    h.start()
    b = h.broker
    record, other, wait = b.task_id(), b.task_id(), b.task_id()
    b.submit([{"k": "record", "t": record, "s": 1}, {"k": "record", "t": other, "s": 3}])
    b.submit([{"k": "wait", "t": wait, "s": 2, "ws": 1, "wt": other}])  # other is on stream 3
    rows = b.completions([record, other, wait])
    assert rows[wait][1] == ACL_ERROR_RT_PARAM_INVALID
    ok = b.task_id()
    b.submit([{"k": "wait", "t": ok, "s": 2, "ws": 1, "wt": record}])  # the real pairing
    assert b.completions([ok])[ok][1] == ACL_SUCCESS
    assert h.alive(), h.errors


# --------------------------------------------------------------------------- departure


@pytest.fixture
def slow_harness():
    h = CardHarness(min_completion_delay_s=3.0)  # every task stays queued/running for 3 s
    try:
        yield h
    finally:
        h.close()


def test_a_departed_clients_tasks_all_end_with_stream_abort(slow_harness):
    h = slow_harness
    h.start()
    b = h.broker
    block = h.malloc(BLOCK, CLIENT)
    ids = [b.task_id() for _ in range(6)]
    tasks = [
        {"k": "memset", "t": t, "s": 1 + i % 2, "dst": [h.shm_name, block], "n": 64, "v": 1}
        for i, t in enumerate(ids)
    ]
    b.submit(tasks)
    b.pump_for(lambda: b.request("stats", OTHER_CLIENT)["running"] == 2)  # two on timers
    sent_s = time.monotonic()
    b.send(Cmd.DISCONNECT, CLIENT, b"")
    rows = b.completions(ids, timeout_s=2.0)
    assert time.monotonic() - sent_s < 2.0  # at the departure, not at the 3 s completions
    assert {rows[t][1] for t in ids} == {ACL_ERROR_RT_STREAM_ABORT}
    stats = b.request("stats", OTHER_CLIENT)
    assert stats["reclaimed_tasks"] == 6
    assert stats["queued"] == stats["running"] == 0
    assert h.alive(), h.errors
