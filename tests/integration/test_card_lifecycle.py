"""Issue 9 on one card: liveness under heavy compute, per-client host mappings, reclaim on a
client's departure (counted), deferred results that must not outlive their memory, and the
``destroy_stream`` / ``detach_host`` request ops.

The card runs in a thread against the scripted broker of :mod:`tests.integration.card_harness`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_DEVICE_MEM_ERROR,
    ACL_SUCCESS,
)
from core.protocol import WORKER_HEADER, Cmd
from device.memory import HbmSegment
from device.models import load_model_file
from tests.integration.card_harness import (
    CLIENT,
    CLIENT_PID,
    EXPIRY_S,
    OTHER_CLIENT,
    TENSOR_BYTES,
    AddBuffers,
    CardHarness,
)

pytestmark = pytest.mark.timeout(60)

DELAY_S = 0.3  # min_completion_delay_s of the deferred-publish tests: results land at completion
PAGE = 4096


@pytest.fixture
def make_harness():
    made: list[CardHarness] = []

    def make(**spec_changes: object) -> CardHarness:
        made.append(CardHarness(**spec_changes))
        made[-1].start()
        return made[-1]

    yield make
    for h in made:
        h.close()


def _mapped(name: str) -> int:
    """How many mappings of shm segment ``name`` this process has (the card runs in it)."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    return sum(1 for line in maps if f"/dev/shm/{name}" in line)


# --------------------------------------------------------------------------- liveness


def _chain_model(tmp_path: Path, steps: int = 64, width: int = 1024) -> dict:
    """An ONNX chain of ``steps`` [width, width] MatMuls by the identity: seconds of compute."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.system.test_card_liveness import chain_om

    om = chain_om(tmp_path, steps, width, width)
    return load_model_file(om).to_dict()


def test_heartbeats_go_on_while_a_kernel_computes(make_harness, tmp_path):
    model = _chain_model(tmp_path)  # before the card starts: the scripted broker is not pumped
    h = make_harness()
    b = h.broker
    reply = b.reply(b.request_nowait("load", spec=model), timeout_s=30.0)
    assert reply["code"] == ACL_SUCCESS, reply
    nbytes = 1024 * 1024 * 4
    x, y = h.malloc(nbytes), h.malloc(nbytes)
    h.shm.view(x, nbytes).view(np.float32)[:] = 1.5
    task_id = b.task_id()
    beats = [time.monotonic()]
    b.submit(
        [
            {
                "k": "exec",
                "t": task_id,
                "s": 0,
                "m": reply["handle"],
                "i": [[h.ptr(x), nbytes]],
                "o": [[h.ptr(y), nbytes]],
            }
        ]
    )
    deadline = time.monotonic() + 30.0
    while not b.pending(Cmd.COMPLETE):
        assert time.monotonic() < deadline, "the exec never completed"
        count = len(b.heartbeats)
        b.pump(5.0)
        if len(b.heartbeats) > count:
            beats.append(time.monotonic())
    beats.append(time.monotonic())  # the completion: the card is back at its loop
    row = b.completions([task_id])[task_id]
    assert row[1] == ACL_SUCCESS, row
    computed_s = row[3] - row[2]
    assert computed_s > 2 * EXPIRY_S, f"the chain computed for {computed_s:.2f}s only"
    gaps = np.diff(beats)
    assert gaps.max() < EXPIRY_S, f"heartbeat gaps {np.round(gaps, 3)} during the compute"
    assert (h.shm.view(y, nbytes).view(np.float32) == 1.5).all()
    assert h.alive(), h.errors


@pytest.mark.parametrize("populate", [True, False], ids=["madvise", "touch"])
def test_heartbeats_go_on_while_a_large_malloc_commits_its_pages(
    make_harness, monkeypatch, populate
):
    """768 MiB of fresh pages take longer than the expiry to commit (MADV_POPULATE_WRITE in
    chunks between loop turns, or the zero-writing fallback in one go)."""
    import device.memory

    if populate and not device.memory.prefault_preserves_contents():
        pytest.skip("no MADV_POPULATE_WRITE on this kernel")
    monkeypatch.setattr(device.memory, "_populate_supported", populate)
    size = 768 << 20
    h = make_harness(hbm_bytes=size + (1 << 20))
    b = h.broker
    beats = [time.monotonic()]
    rid = b.request_nowait("malloc", size=size)
    deadline = time.monotonic() + 30.0
    while not b.pending(Cmd.REPLY) or h.card.prefault_queue:  # (chunks may still commit)
        assert time.monotonic() < deadline, "the malloc never ended"
        count = len(b.heartbeats)
        b.pump(5.0)
        if len(b.heartbeats) > count:
            beats.append(time.monotonic())
    beats.append(time.monotonic())
    assert b.reply(rid)["code"] == ACL_SUCCESS
    gaps = np.diff(beats)
    assert gaps.max() < EXPIRY_S, f"heartbeat gaps {np.round(gaps, 3)} during the commit"
    assert h.alive(), h.errors


# --------------------------------------------------------------------------- host segments


class HostSegment:
    """A client's pinned host segment, re-creatable under the same name with new contents."""

    def __init__(self, h: CardHarness, tag: str = "host") -> None:
        self.name = f"npufarm-{h.farm_id}-h{CLIENT_PID}-{tag}"
        self.segment: HbmSegment | None = None

    def fill(self, value: int) -> None:
        """(Re)create the segment with every byte ``value`` (the old file is unlinked)."""
        self.close()
        self.segment = HbmSegment.create(self.name, PAGE)
        self.segment.view(0, PAGE)[:] = value

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment.unlink()
            self.segment = None


@pytest.fixture
def host(make_harness):
    made: list[HostSegment] = []

    def make(h: CardHarness, tag: str = "host") -> HostSegment:
        made.append(HostSegment(h, tag))
        return made[-1]

    yield make
    for segment in made:
        segment.close()


def _copy_in(h: CardHarness, source: HostSegment, client: bytes) -> bytes:
    """H2D copy of the host segment into a fresh block of ``client``; the block's bytes."""
    dst = h.malloc(PAGE, client)
    task_id = h.broker.task_id()
    h.broker.submit(
        [
            {
                "k": "copy",
                "t": task_id,
                "s": 0,
                "dst": [h.shm_name, dst],
                "src": [source.name, 0],
                "n": PAGE,
            }
        ],
        client,
    )
    row = h.broker.completions([task_id], client)[task_id]
    assert row[1] == ACL_SUCCESS, row
    return bytes(h.shm.view(dst, PAGE))


def test_detach_host_closes_the_mapping_so_a_new_segment_is_seen(make_harness, host):
    h = make_harness()
    segment = host(h)
    segment.fill(0xAA)
    assert _copy_in(h, segment, CLIENT) == b"\xaa" * PAGE
    assert h.broker.request("detach_host", name=segment.name)["code"] == ACL_SUCCESS
    segment.fill(0xBB)  # a new segment under the same name (a re-init's first malloc_host)
    assert _mapped(segment.name) == 1, "the card still maps the old segment"
    assert _copy_in(h, segment, CLIENT) == b"\xbb" * PAGE


def test_detach_host_replies_and_validates(make_harness, host):
    h = make_harness()
    reply = h.broker.request("detach_host", name=f"npufarm-{h.farm_id}-never-attached")
    assert reply["code"] == ACL_SUCCESS and set(reply) == {"rid", "code"}
    for bad in (None, 5, b"name", ["x"]):
        assert h.broker.request("detach_host", name=bad)["code"] == ACL_ERROR_INVALID_PARAM
    assert h.broker.request("detach_host")["code"] == ACL_ERROR_INVALID_PARAM
    assert h.alive(), h.errors


def test_host_mappings_are_kept_per_client(make_harness, host):
    """Two processes may use one segment name in turn (names restart at each init): the card
    must not serve one client's bytes from another client's old mapping."""
    h = make_harness()
    segment = host(h)
    segment.fill(0xAA)
    assert _copy_in(h, segment, CLIENT) == b"\xaa" * PAGE
    segment.fill(0xBB)
    assert _copy_in(h, segment, OTHER_CLIENT) == b"\xbb" * PAGE


def test_a_departed_clients_mappings_are_closed(make_harness, host):
    h = make_harness()
    segment = host(h)
    segment.fill(0xAA)
    assert _copy_in(h, segment, CLIENT) == b"\xaa" * PAGE
    assert _mapped(segment.name) == 2  # the test's own and the card's
    h.broker.send(Cmd.DISCONNECT, CLIENT, b"")
    h.broker.pump_for(lambda: _mapped(segment.name) == 1, 5.0)


# --------------------------------------------------------------------------- reclaim


def test_a_departed_clients_resources_are_reclaimed_and_counted(make_harness, host):
    h = make_harness()
    b = h.broker
    kept = h.malloc(TENSOR_BYTES, OTHER_CLIENT)
    used_before = b.request("stats", OTHER_CLIENT)["hbm_used"]
    buffers = AddBuffers(h, CLIENT)
    handle = h.load_add(CLIENT)
    segment = host(h)
    segment.fill(0x11)
    _copy_in(h, segment, CLIENT)  # a fourth block, and a host mapping
    ids = [b.task_id(), b.task_id()]
    b.submit([buffers.task(ids[0], handle, stream=1), buffers.task(ids[1], handle, stream=2)])
    assert all(row[1] == ACL_SUCCESS for row in b.completions(ids).values())
    stats = b.request("stats", OTHER_CLIENT)
    held_bytes = stats["hbm_used"] - used_before
    assert stats["streams"] == 3  # the copy's stream 0, and streams 1 and 2
    b.send(Cmd.DISCONNECT, CLIENT, b"")
    stats = b.request("stats", OTHER_CLIENT)
    assert stats["hbm_used"] == used_before
    assert stats["streams"] == 0
    assert {k: stats[k] for k in stats if k.startswith("reclaimed_")} == {
        "reclaimed_clients": 1,
        "reclaimed_hbm_bytes": held_bytes,
        "reclaimed_models": 1,
        "reclaimed_streams": 3,
        "reclaimed_tasks": 0,  # both execs had completed
    }
    assert _mapped(segment.name) == 1
    b.send(Cmd.DISCONNECT, CLIENT, b"")  # nothing left to reclaim: not counted again
    b.send(Cmd.DISCONNECT, b"\x00never-seen", b"")
    assert b.request("stats", OTHER_CLIENT)["reclaimed_clients"] == 1
    b.pump_for(lambda: b.heartbeats and b.heartbeats[-1].get("reclaimed_clients") == 1)
    assert b.request("free", OTHER_CLIENT, offset=kept)["code"] == ACL_SUCCESS
    assert h.alive(), h.errors


# --------------------------------------------------------------------------- deferred results


def test_a_deferred_result_never_lands_in_memory_freed_meanwhile(make_harness):
    """An exec and a memset complete DELAY_S after they start; their destination is freed and
    handed to another client before that. The tasks fail with a memory error; the other
    client's bytes stay as they were."""
    h = make_harness(min_completion_delay_s=DELAY_S)
    b = h.broker
    buffers = AddBuffers(h, CLIENT)
    handle = h.load_add(CLIENT)
    scratch = h.malloc(PAGE, CLIENT)
    ids = [b.task_id(), b.task_id()]
    b.submit(
        [
            buffers.task(ids[0], handle, stream=1),
            {
                "k": "memset",
                "t": ids[1],
                "s": 2,
                "dst": [h.shm_name, scratch],
                "n": PAGE,
                "v": 0x77,
            },
        ]
    )
    b.pump_for(lambda: b.request("stats")["running"] == 2, 2.0)
    for offset in (buffers.z, scratch):
        assert b.request("free", offset=offset)["code"] == ACL_SUCCESS
    reused = [h.malloc(TENSOR_BYTES, OTHER_CLIENT), h.malloc(PAGE, OTHER_CLIENT)]
    assert reused == [buffers.z, scratch], "the allocator did not hand the ranges out again"
    for offset, nbytes in zip(reused, (TENSOR_BYTES, PAGE)):
        h.shm.view(offset, nbytes)[:] = 0x11
    rows = b.completions(ids)
    assert [rows[t][1] for t in ids] == [ACL_ERROR_RT_DEVICE_MEM_ERROR] * 2, rows
    for offset, nbytes in zip(reused, (TENSOR_BYTES, PAGE)):
        assert bytes(h.shm.view(offset, nbytes)) == b"\x11" * nbytes
    # memory that stays allocated gets its results as before
    z = h.malloc(TENSOR_BYTES, CLIENT)
    task_id = b.task_id()
    b.submit([buffers.task(task_id, handle, o=[[h.ptr(z), TENSOR_BYTES]])])
    assert b.completions([task_id])[task_id][1] == ACL_SUCCESS
    np.testing.assert_array_equal(h.floats(z), buffers.xv + buffers.yv)


# --------------------------------------------------------------------------- request ops


def test_destroy_stream_removes_the_card_stream_once_drained(make_harness):
    h = make_harness(min_completion_delay_s=DELAY_S)
    b = h.broker
    scratch = h.malloc(PAGE)
    task_id = b.task_id()
    b.submit(
        [{"k": "memset", "t": task_id, "s": 7, "dst": [h.shm_name, scratch], "n": PAGE, "v": 1}]
    )
    b.pump_for(lambda: b.request("stats")["running"] == 1, 2.0)
    assert b.request("destroy_stream", stream=7)["code"] == ACL_SUCCESS
    assert b.request("stats")["streams"] == 1  # still running: kept until it is drained
    assert b.completions([task_id])[task_id][1] == ACL_SUCCESS
    assert b.request("stats")["streams"] == 0
    assert b.request("destroy_stream", stream=99)["code"] == ACL_SUCCESS  # unknown: nothing to do
    for bad in ("7", None, 1.5):
        assert b.request("destroy_stream", stream=bad)["code"] == ACL_ERROR_INVALID_PARAM
    # a destroyed stream id used again is a new, working stream
    task_id = b.task_id()
    b.submit([{"k": "record", "t": task_id, "s": 7}])
    assert b.completions([task_id])[task_id][1] == ACL_SUCCESS
    assert h.alive(), h.errors


def test_only_the_request_table_is_reachable(make_harness):
    h = make_harness()
    for op in ("reply", "drop_client", "crash", "__init__", "_error_reply", "", None, 5, []):
        assert h.broker.request(op)["code"] == ACL_ERROR_INVALID_PARAM, op
    assert h.alive(), h.errors


def test_malformed_inputs_are_counted_and_their_warnings_rate_limited(make_harness, caplog):
    h = make_harness()
    b = h.broker
    caplog.set_level(logging.WARNING, logger="device.card")
    for _ in range(200):
        b.send_raw([b"", WORKER_HEADER, Cmd.SUBMIT, CLIENT, b"\xc1\xc1"])  # not msgpack
        b.send(Cmd.SUBMIT, CLIENT, 5)  # not a list of tasks
        b.send(Cmd.REQUEST, CLIENT, {"op": "stats"})  # no rid
        b.submit([{"k": "launch", "s": 0}])  # a task without an id
    stats = b.pump_for(lambda: (s := b.request("stats"))["malformed"] >= 800 and s, 10.0)
    assert stats["malformed"] == 800
    warnings = [r for r in caplog.records if r.name == "device.card"]
    assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]
    assert h.alive(), h.errors


def test_integer_fields_must_be_integers(make_harness):
    h = make_harness()
    b = h.broker
    offset = h.malloc(PAGE)
    for op, field in (
        ("malloc", "size"),
        ("free", "offset"),
        ("unload", "handle"),
        ("destroy_stream", "stream"),
    ):
        for bad in (str(PAGE), float(PAGE), True, None, [PAGE]):
            reply = b.request(op, **{field: bad})
            assert reply["code"] == ACL_ERROR_INVALID_PARAM, (op, bad, reply)
    assert b.request("free", offset=offset)["code"] == ACL_SUCCESS
