"""A card's task batches (integration): every task kind in one SUBMIT, run in stream order
and stamped with their own start times.

One real card in a thread against the scripted broker of :mod:`tests.integration.card_harness`.
"""

from __future__ import annotations

import pytest

from core.errors import ACL_SUCCESS
from tests.integration.card_harness import AddBuffers

pytestmark = pytest.mark.timeout(30)


def test_batch_of_every_task_kind(harness):
    h = harness
    h.start()
    buffers = AddBuffers(h)
    handle = h.load_add()
    scratch = h.malloc(256)
    copy_dst = h.malloc(256)
    seg = h.shm_name
    ids = [h.broker.task_id() for _ in range(5)]
    tasks = [
        {"k": "memset", "t": ids[0], "s": 1, "dst": [seg, scratch], "n": 256, "v": 0x5A},
        {"k": "record", "t": ids[1], "s": 1},
        {"k": "wait", "t": ids[2], "s": 2, "ws": 1, "wt": ids[1]},
        {"k": "copy", "t": ids[3], "s": 2, "dst": [seg, copy_dst], "src": [seg, scratch], "n": 256},
        buffers.task(ids[4], handle, stream=3),
    ]
    h.broker.submit(tasks)
    rows = h.broker.completions(ids)
    assert all(rows[t][1] == ACL_SUCCESS for t in ids), rows
    # stream order: the copy waited for the memset through the record/wait pair
    assert rows[ids[3]][3] >= rows[ids[1]][3] >= rows[ids[0]][3]
    assert bytes(h.shm.view(copy_dst, 256)) == b"\x5a" * 256
    buffers.check_output()
    assert h.alive()


def test_completion_start_times_respect_stream_order(harness):
    """Tasks started in one scheduling pass after a predecessor finished are stamped with their
    own start time, not the pass's: a row never starts before its stream predecessor ended."""
    h = harness
    h.start()
    scratch = h.malloc(1 << 20)
    seg = h.shm_name
    ids = [h.broker.task_id() for _ in range(4)]
    h.broker.submit(
        [
            {"k": "memset", "t": ids[0], "s": 1, "dst": [seg, scratch], "n": 1 << 20, "v": 1},
            {"k": "memset", "t": ids[1], "s": 1, "dst": [seg, scratch], "n": 1 << 20, "v": 2},
            {"k": "record", "t": ids[2], "s": 1},
            {"k": "wait", "t": ids[3], "s": 2, "ws": 1, "wt": ids[2]},
        ]
    )
    rows = h.broker.completions(ids)
    assert all(rows[t][1] == ACL_SUCCESS for t in ids), rows
    for earlier, later in zip(ids, ids[1:]):
        assert rows[later][2] >= rows[earlier][3], (rows[earlier], rows[later])
