"""The broker test harness: a real Broker in a thread against scripted peers.

No card processes are started: the harness registers each card as STARTING itself, then plays the
cards (DEALER sockets with the identities the supervisor would give them) and the clients. Test
modules take the ``harness`` fixture by importing :func:`broker_harness` (it overrides the card
``harness`` of tests/integration/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq

from core import protocol as proto
from core.config import load_config
from core.protocol import BROKER_DEVICE, Cmd, pack, pack_route
from farm.broker import Broker
from farm.registry import CardState

__all__ = [
    "BROKER_ROUTE",
    "CI_CONFIG",
    "ROUTE0",
    "ROUTE1",
    "WAIT_S",
    "BrokerHarness",
    "Peer",
    "broker_harness",
    "roundtrip",
    "up",
]

REPO = Path(__file__).resolve().parents[2]
CI_CONFIG = REPO / "configs" / "ci.toml"
BROKER_ROUTE = pack_route(BROKER_DEVICE, 0)
ROUTE0 = pack_route(0, 1)
ROUTE1 = pack_route(1, 1)
WAIT_S = 5.0


class Peer:
    """A scripted DEALER: a card (worker frames) or a client (client frames)."""

    def __init__(
        self, ctx: zmq.Context, address: str, identity: bytes, is_card: bool, rcvhwm: int = 0
    ) -> None:
        self.identity = identity
        self.is_card = is_card
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if rcvhwm:
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
            self.socket.setsockopt(zmq.RCVBUF, 4096)
        self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.connect(address)
        self.inbox: list = []
        self.beating = False

    def send_raw(self, frames: list) -> None:
        self.socket.send_multipart(frames)

    def send(self, cmd: bytes, frame: bytes, body: object) -> None:
        data = body if isinstance(body, bytes) else pack(body)
        if self.is_card:
            self.socket.send_multipart(proto.worker_message(cmd, frame, data))
        else:
            self.socket.send_multipart(proto.client_message(cmd, frame, data))

    def receive_all(self) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.is_card:
                self.inbox.append(proto.parse_worker_message(frames, with_identity=False))
            else:
                self.inbox.append(proto.parse_client_message(frames, with_identity=False))

    def take(self, cmd: bytes) -> list:
        """Remove and return every inbox message with ``cmd``."""
        taken = [m for m in self.inbox if m.cmd == cmd]
        self.inbox = [m for m in self.inbox if m.cmd != cmd]
        return taken

    def find(self, cmd: bytes) -> list:
        return [m for m in self.inbox if m.cmd == cmd]


class BrokerHarness:
    def __init__(self) -> None:
        self.tmpdir = tempfile.mkdtemp(dir="/tmp", prefix="bt")
        self.config = load_config(
            CI_CONFIG, overrides={"runtime_dir": self.tmpdir, "name": "bt"}, env={}
        )
        self.interval_s = self.config.heartbeat_interval_s
        self.expiry_s = self.config.heartbeat_expiry_s
        self.broker = Broker(self.config)
        self.errors: list[BaseException] = []
        now = time.monotonic()
        for device_id in range(self.config.card_count):
            entry = self.broker.registry.starting(device_id, 0, now)
            assert entry.epoch == 1 and entry.state is CardState.STARTING
        self.ctx = zmq.Context()
        self.peers: list[Peer] = []
        self._last_beat = 0.0
        self.thread = threading.Thread(target=self._run, name="broker-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.broker.run()
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        try:
            self.broker.running = False
            self.thread.join(timeout=5.0)
            assert not self.thread.is_alive(), "broker thread did not stop"
            self.broker.shutdown()
        finally:
            for peer in self.peers:
                peer.socket.close(0)
            self.ctx.term()
            leftovers = os.listdir(self.tmpdir)
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        assert leftovers == [], f"broker left files behind: {leftovers}"

    # -- peers
    def card(self, device_id: int, epoch: int = 1, rcvhwm: int = 0) -> Peer:
        identity = f"card{device_id}.{epoch}".encode()
        peer = Peer(self.ctx, self.broker.backend_address, identity, True, rcvhwm)
        self.peers.append(peer)
        return peer

    def client(self, identity: bytes) -> Peer:
        peer = Peer(self.ctx, self.config.endpoint_address(), identity, False)
        self.peers.append(peer)
        return peer

    def ready(self, card: Peer, device_id: int, epoch: int = 1) -> None:
        card.send(
            Cmd.READY,
            b"",
            {
                "device_id": device_id,
                "epoch": epoch,
                "pid": os.getpid(),
                "shm_name": f"npufarm-bt-card{device_id}-e{epoch}",
                "hbm_bytes": 256 << 20,
                "soc_name": "Ascend910B",
                "exec_slots": 4,
            },
        )
        card.beating = True

    # -- the scripted peers' event loop
    def pump(self, timeout_ms: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.interval_s:
            self._last_beat = now
            for peer in self.peers:
                if peer.is_card and peer.beating:
                    peer.send(Cmd.HEARTBEAT, b"", {"queued": 0})
        poller = zmq.Poller()
        for peer in self.peers:
            poller.register(peer.socket, zmq.POLLIN)
        for socket, _ in poller.poll(timeout_ms):
            next(p for p in self.peers if p.socket is socket).receive_all()

    def pump_for(self, predicate, timeout_s: float = WAIT_S):
        deadline = time.monotonic() + timeout_s
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s")
            assert self.alive(), self.errors
            self.pump()
        return value

    def expect(self, peer: Peer, cmd: bytes, timeout_s: float = WAIT_S):
        """Remove and return the first message with ``cmd`` in ``peer``'s inbox."""
        self.pump_for(lambda: peer.find(cmd), timeout_s)
        message = peer.find(cmd)[0]
        peer.inbox.remove(message)
        return message

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.errors

    def state(self, device_id: int) -> CardState:
        return self.broker.registry.cards[device_id].state


@pytest.fixture(name="harness")
def broker_harness():
    """A :class:`BrokerHarness`, closed after the test."""
    h = BrokerHarness()
    try:
        yield h
    finally:
        h.close()


def up(h: BrokerHarness, client_identity: bytes = b"client-A"):
    """Both scripted cards READY and one client through HELLO."""
    card0, card1 = h.card(0), h.card(1)
    client = h.client(client_identity)
    h.ready(card0, 0)
    h.ready(card1, 1)
    client.send(Cmd.HELLO, BROKER_ROUTE, {"pid": os.getpid()})
    hello = h.expect(client, Cmd.HELLO)
    return card0, card1, client, proto.unpack(hello.body)


def roundtrip(h: BrokerHarness, client: Peer, card: Peer, route: bytes, task_id: int) -> None:
    """One SUBMIT client -> card and its COMPLETE card -> client, checking every frame."""
    body = pack([{"k": "record", "t": task_id, "s": 0}])
    client.send(Cmd.SUBMIT, route, body)
    forwarded = h.expect(card, Cmd.SUBMIT)
    assert forwarded.client == client.identity
    assert forwarded.body == body  # forwarded untouched
    rows = pack([[task_id, 0, 1.0, 2.0]])
    card.send(Cmd.COMPLETE, client.identity, rows)
    complete = h.expect(client, Cmd.COMPLETE)
    assert complete.route == route
    assert complete.body == rows
