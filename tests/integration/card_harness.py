"""The card test harness: one real card in a thread against a scripted broker.

The test owns a ROUTER socket on a short ipc path and plays the broker: it receives the card's
READY and HEARTBEATs, keeps the card alive with its own HEARTBEATs, and sends REQUEST / SUBMIT
frames built with core.protocol. Tensor bytes go through the card's shm segment, as a client's
would. Test modules build a :class:`CardHarness` themselves or take the ``harness`` fixture, which
tests/integration/conftest.py shares.
"""

from __future__ import annotations

import itertools
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
from core.errors import ACL_SUCCESS
from core.protocol import Cmd
from device.card import Card, CardSpec
from device.memory import HbmSegment, encode_ptr, segment_name
from device.models import load_model_file

__all__ = [
    "ADD_MODEL",
    "CLIENT",
    "CLIENT_PID",
    "DEVICE",
    "EPOCH",
    "EXPIRY_S",
    "HBM_BYTES",
    "INTERVAL_S",
    "LIVENESS",
    "OTHER_CLIENT",
    "SHM_DIR",
    "TENSOR_BYTES",
    "WAIT_S",
    "AddBuffers",
    "CardHarness",
    "ScriptedBroker",
    "harness",
    "make_spec",
    "run_good_exec",
]

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

    def load_add(self, client: bytes = CLIENT, fixed_s: float | None = None) -> int:
        """Load the add model (with a fixed modelled latency of ``fixed_s`` if given)."""
        spec = load_model_file(ADD_MODEL).to_dict()
        if fixed_s is not None:
            spec["latency"] = {"fixed_s": fixed_s}
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
