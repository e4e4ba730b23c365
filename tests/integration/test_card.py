"""Integration tests for device.card: one real card in a thread against a scripted broker.

The test owns a ROUTER socket on a short ipc path and plays the broker: it receives the card's
READY and HEARTBEATs, keeps the card alive with its own HEARTBEATs, and sends REQUEST / SUBMIT
frames built with core.protocol. Tensor bytes go through the card's shm segment, as a client's
would.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq

from core import protocol as proto
from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID,
    ACL_ERROR_GE_EXEC_MODEL_ID_INVALID,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_DEVICE_MEM_ERROR,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
)
from core.protocol import WORKER_HEADER, Cmd
from device.card import Card, CardSpec
from device.memory import MAX_OFFSET, HbmSegment, encode_ptr, segment_name
from device.models import load_model_file

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
ADD_MODEL = REPO / "configs" / "models" / "add.toml"
SHM_DIR = Path("/dev/shm")
HBM_BYTES = 16 << 20
INTERVAL_S = 0.05
LIVENESS = 4
EXPIRY_S = INTERVAL_S * LIVENESS
EPOCH = 1
DEVICE = 0
CLIENT_PID = 4242  # client identities are c<pid>-<token>; their host segments ...-h<pid>-...
CLIENT = b"c4242-client1"
OTHER_CLIENT = b"c4242-client2"  # the same process after a re-init: a new session
TENSOR_BYTES = 1024 * 4  # add.toml: float32 [1, 1024]
WAIT_S = 5.0


def make_spec(farm_id: str, backend: str, **changes: object) -> CardSpec:
    spec = CardSpec(
        farm_id=farm_id,
        device_id=DEVICE,
        epoch=EPOCH,
        backend=backend,
        hbm_bytes=HBM_BYTES,
        soc_name="Ascend910B",
        speed_factor=1.0,
        jitter_sigma=0.0,
        exec_slots=2,
        time_scale=0.0,
        heartbeat_interval_s=INTERVAL_S,
        heartbeat_liveness=LIVENESS,
        seed=0,
    )
    return CardSpec.from_dict({**spec.to_dict(), **changes})


class ScriptedBroker:
    """A ROUTER socket playing the broker for one card (not thread-safe: test thread only)."""

    def __init__(self, address: str, card_identity: bytes) -> None:
        self.card_identity = card_identity
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)
        self.inbox: list[proto.WorkerFrame] = []
        self.heartbeats: list[dict] = []
        self.beating = True
        self.last_beat = 0.0
        self._rids = itertools.count(1)
        self._task_ids = itertools.count(1)

    def close(self) -> None:
        self.socket.close(0)
        self.ctx.term()

    # -- sending
    def send_raw(self, frames: list) -> None:
        self.socket.send_multipart([self.card_identity, *frames])

    def send(self, cmd: bytes, client: bytes, body: object) -> None:
        data = body if isinstance(body, bytes) else proto.pack(body)
        self.socket.send_multipart(proto.worker_message(cmd, client, data, self.card_identity))

    def beat_if_due(self) -> None:
        now = time.monotonic()
        if self.beating and now - self.last_beat >= INTERVAL_S:
            self.send(Cmd.HEARTBEAT, b"", b"")
            self.last_beat = now

    # -- receiving
    def pump(self, timeout_ms: float = 10.0) -> None:
        """Heartbeat when due, wait up to ``timeout_ms`` for traffic, file what arrives."""
        self.beat_if_due()
        if not self.socket.poll(timeout_ms):
            return
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = proto.parse_worker_message(frames, with_identity=True)
            if msg.cmd == Cmd.HEARTBEAT:
                self.heartbeats.append(proto.unpack(msg.body))
            else:
                self.inbox.append(msg)
        self.beat_if_due()

    def expect(self, predicate, timeout_s: float = WAIT_S) -> proto.WorkerFrame:
        """Remove and return the first inbox message matching ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for index, msg in enumerate(self.inbox):
                if predicate(msg):
                    return self.inbox.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout_s}s: {self.inbox}")
            self.pump(min(10.0, remaining * 1000.0))

    def pump_for(self, predicate, timeout_s: float = WAIT_S):
        """Keep the card alive until ``predicate()`` is truthy."""
        deadline = time.monotonic() + timeout_s
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s")
            self.pump(10.0)
        return value

    # -- card protocol
    def expect_ready(self) -> dict:
        msg = self.expect(lambda m: m.cmd == Cmd.READY)
        assert msg.identity == self.card_identity
        assert msg.client == b""
        return proto.unpack(msg.body)

    def request_nowait(self, op: str, client: bytes = CLIENT, **args: object) -> int:
        rid = next(self._rids)
        self.send(Cmd.REQUEST, client, {"rid": rid, "op": op, **args})
        return rid

    def reply(self, rid: int, client: bytes = CLIENT, timeout_s: float = WAIT_S) -> dict:
        def match(m: proto.WorkerFrame) -> bool:
            return m.cmd == Cmd.REPLY and m.client == client and proto.unpack(m.body)["rid"] == rid

        return proto.unpack(self.expect(match, timeout_s).body)

    def request(self, op: str, client: bytes = CLIENT, **args: object) -> dict:
        return self.reply(self.request_nowait(op, client, **args), client)

    def task_id(self) -> int:
        return next(self._task_ids)

    def submit(self, tasks: list[dict], client: bytes = CLIENT) -> None:
        self.send(Cmd.SUBMIT, client, tasks)

    def completions(self, task_ids, client: bytes = CLIENT, timeout_s: float = WAIT_S) -> dict:
        """Rows of ``task_ids`` by task id, gathered across COMPLETE messages."""
        wanted, rows = set(task_ids), {}
        deadline = time.monotonic() + timeout_s
        while not wanted <= set(rows):
            remaining = max(0.0, deadline - time.monotonic())
            msg = self.expect(lambda m: m.cmd == Cmd.COMPLETE and m.client == client, remaining)
            body = proto.unpack(msg.body)
            assert isinstance(body, list)
            for row in body:
                assert isinstance(row, list) and len(row) == 6, row
                assert row[0] not in rows, f"task {row[0]} completed twice"
                rows[row[0]] = row
        assert set(rows) == wanted, f"unexpected completions {set(rows) - wanted}"
        return rows

    def pending(self, cmd: bytes) -> list[proto.WorkerFrame]:
        return [m for m in self.inbox if m.cmd == cmd]


class CardHarness:
    """A real card in a thread plus the scripted broker it talks to."""

    def __init__(self, **spec_changes: object) -> None:
        self.tmpdir = tempfile.mkdtemp(dir="/tmp", prefix="ct")
        self.address = f"ipc://{self.tmpdir}/b.sock"
        self.farm_id = f"itest{os.getpid()}x{uuid.uuid4().hex[:6]}"
        self.broker = ScriptedBroker(self.address, f"card{DEVICE}.{EPOCH}".encode())
        self.card: Card | None = None
        self.thread: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self.shm: HbmSegment | None = None
        self.model_handle = 0
        self.card = Card(make_spec(self.farm_id, self.address, **spec_changes))
        self.thread = threading.Thread(target=self._run, name="card-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.card.run()
        except BaseException as exc:  # reported by the test, not as a stray thread warning
            self.errors.append(exc)

    @property
    def shm_name(self) -> str:
        return segment_name(self.farm_id, DEVICE, EPOCH)

    def close(self) -> None:
        try:
            if self.shm is not None:
                self.shm.close()
            if self.card is not None:
                self.card.running = False
            if self.thread is not None:
                self.thread.join(timeout=5.0)
                assert not self.thread.is_alive(), "card thread did not stop"
            if self.card is not None:
                self.card.close()  # run_card's job in a real card process
                self.card = None
        finally:
            self.broker.close()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        leftovers = [
            p.name for p in SHM_DIR.iterdir() if p.name.startswith(f"npufarm-{self.farm_id}")
        ]
        assert leftovers == [], f"leftover shm segments: {leftovers}"

    # -- conveniences over the scripted broker
    def start(self) -> dict:
        ready = self.broker.expect_ready()
        self.shm = HbmSegment.attach(ready["shm_name"])
        return ready

    def malloc(self, size: int, client: bytes = CLIENT) -> int:
        reply = self.broker.request("malloc", client, size=size)
        assert reply["code"] == ACL_SUCCESS, reply
        return reply["offset"]

    def load_add(self, client: bytes = CLIENT) -> int:
        spec = load_model_file(ADD_MODEL).to_dict()
        reply = self.broker.request("load", client, spec=spec)
        assert reply["code"] == ACL_SUCCESS, reply
        return reply["handle"]

    def ptr(self, offset: int, device_id: int = DEVICE, epoch: int = EPOCH) -> int:
        return encode_ptr(device_id, epoch, offset)

    def floats(self, offset: int, count: int = 1024) -> np.ndarray:
        return self.shm.view(offset, count * 4).view(np.float32)

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.errors


@pytest.fixture
def harness():
    h = CardHarness()
    try:
        yield h
    finally:
        h.close()


class AddBuffers:
    """x, y, z of the add model in the card's HBM, with x and y filled."""

    def __init__(self, h: CardHarness, client: bytes = CLIENT, seed: int = 0) -> None:
        self.h = h
        self.x, self.y, self.z = (h.malloc(TENSOR_BYTES, client) for _ in range(3))
        rng = np.random.default_rng(seed)
        self.xv = rng.standard_normal(1024).astype(np.float32)
        self.yv = rng.standard_normal(1024).astype(np.float32)
        h.floats(self.x)[:] = self.xv
        h.floats(self.y)[:] = self.yv
        h.floats(self.z)[:] = np.nan

    def task(self, task_id: int, handle: int, stream: int = 0, **changes) -> dict:
        task = {
            "k": "exec",
            "t": task_id,
            "s": stream,
            "m": handle,
            "i": [[self.h.ptr(self.x), TENSOR_BYTES], [self.h.ptr(self.y), TENSOR_BYTES]],
            "o": [[self.h.ptr(self.z), TENSOR_BYTES]],
        }
        task.update(changes)
        return task

    def check_output(self) -> None:
        np.testing.assert_array_equal(self.h.floats(self.z), self.xv + self.yv)


def run_good_exec(h: CardHarness, buffers: AddBuffers, handle: int) -> list:
    """Submit one valid exec and check it completes with code 0 and the right output."""
    h.floats(buffers.z)[:] = np.nan
    task_id = h.broker.task_id()
    h.broker.submit([buffers.task(task_id, handle)])
    row = h.broker.completions([task_id])[task_id]
    assert row[1] == ACL_SUCCESS, row
    buffers.check_output()
    return row


# --------------------------------------------------------------------------- tests


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


def test_garbage_is_dropped_and_the_card_keeps_working(harness):
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


def test_disconnect_of_a_client_releases_its_memory_and_models(harness):
    h = harness
    h.start()
    mine = AddBuffers(h, client=CLIENT)
    handle = h.load_add(client=CLIENT)
    other = h.malloc(TENSOR_BYTES, client=OTHER_CLIENT)
    h.broker.send(Cmd.DISCONNECT, CLIENT, b"")
    info = h.broker.request("mem_info", OTHER_CLIENT)
    assert info["free"] < HBM_BYTES  # the other client's block is still there
    assert h.broker.request("free", OTHER_CLIENT, offset=other)["code"] == ACL_SUCCESS
    assert h.broker.request("mem_info", OTHER_CLIENT)["free"] == HBM_BYTES
    # the departed client's model and memory are gone
    task_id = h.broker.task_id()
    h.broker.submit([mine.task(task_id, handle)], client=CLIENT)
    row = h.broker.completions([task_id])[task_id]
    assert row[1] == ACL_ERROR_GE_EXEC_MODEL_ID_INVALID
    assert h.alive()


def test_disconnect_from_the_broker_stops_the_card(harness):
    h = harness
    h.start()
    h.broker.send(Cmd.DISCONNECT, b"", b"")
    h.broker.pump_for(lambda: not h.thread.is_alive())
    assert not h.errors


def test_card_exits_when_the_broker_goes_silent(harness):
    h = harness
    h.start()
    h.malloc(TENSOR_BYTES)
    h.broker.pump_for(lambda: len(h.broker.heartbeats) >= 2)
    h.broker.beating = False
    h.thread.join(timeout=EXPIRY_S + 5.0)
    assert not h.thread.is_alive(), "card did not notice the silent broker"
    silent_s = time.monotonic() - h.broker.last_beat
    assert silent_s > EXPIRY_S  # not before the expiry...
    assert silent_s < EXPIRY_S + 2.0  # ...and not long after it
    assert not h.errors
    assert h.card.running is False
    assert (SHM_DIR / h.shm_name).exists()  # unlinking is close()'s job (run_card calls it)
    h.shm.close()
    h.shm = None
    h.card.close()
    h.card = None  # closed: the fixture must not close it again
    assert not (SHM_DIR / h.shm_name).exists()


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
