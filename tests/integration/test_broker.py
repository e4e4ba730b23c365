"""Integration tests for farm.broker: a real Broker in a thread against scripted peers.

No card processes are started: the test registers each card as STARTING itself, then plays the
cards (DEALER sockets with the identities the supervisor would give them) and the clients.
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
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_ERROR_RT_LOST_HEARTBEAT
from core.protocol import BROKER_DEVICE, CLIENT_HEADER, WORKER_HEADER, Cmd, pack, pack_route
from farm.broker import Broker
from farm.broker_cards import CardControl
from farm.registry import CardState

pytestmark = pytest.mark.timeout(30)

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


@pytest.fixture
def harness():
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


# --------------------------------------------------------------------------- tests


def test_hello_waits_for_every_card_then_describes_the_farm(harness):
    h = harness
    card0, card1 = h.card(0), h.card(1)
    client = h.client(b"client-A")
    client.send(Cmd.HELLO, BROKER_ROUTE, {"pid": os.getpid()})
    h.ready(card0, 0)
    h.pump_for(lambda: h.state(0) is CardState.READY)
    h.pump_for(lambda: card0.find(Cmd.HEARTBEAT))  # the broker heartbeats a READY card
    assert client.find(Cmd.HELLO) == []  # card 1 is still starting
    assert h.state(1) is CardState.STARTING
    h.ready(card1, 1)
    hello = h.expect(client, Cmd.HELLO)
    assert hello.route == BROKER_ROUTE
    farm = proto.unpack(hello.body)
    assert farm["name"] == "bt"
    assert farm["farm_id"] == h.broker.farm_id
    assert farm["endpoint"] == h.config.endpoint_address()
    assert farm["heartbeat_interval_s"] == h.config.heartbeat_interval_s
    assert farm["heartbeat_liveness"] == h.config.heartbeat_liveness
    assert [c["device_id"] for c in farm["cards"]] == [0, 1]
    for card in farm["cards"]:
        assert card["state"] == "ready"
        assert card["epoch"] == 1
        assert card["shm_name"] == f"npufarm-bt-card{card['device_id']}-e1"
        assert card["hbm_bytes"] == 256 << 20
    # the farm wrote its state file once up
    assert (Path(h.tmpdir) / "bt.json").exists()
    # a later HELLO is answered at once
    late = h.client(b"client-B")
    late.send(Cmd.HELLO, BROKER_ROUTE, {})
    assert proto.unpack(h.expect(late, Cmd.HELLO).body)["name"] == "bt"


def test_submit_request_complete_reply_are_routed(harness):
    h = harness
    card0, card1, client, _ = up(h)
    roundtrip(h, client, card0, ROUTE0, 1)
    roundtrip(h, client, card1, ROUTE1, 2)
    assert card0.find(Cmd.SUBMIT) == [] and card1.find(Cmd.SUBMIT) == []

    # requests and replies follow the same paths
    request = pack({"rid": 7, "op": "malloc", "size": 64})
    client.send(Cmd.REQUEST, ROUTE1, request)
    forwarded = h.expect(card1, Cmd.REQUEST)
    assert (forwarded.client, forwarded.body) == (b"client-A", request)
    reply = pack({"rid": 7, "code": 0, "offset": 0})
    card1.send(Cmd.REPLY, b"client-A", reply)
    answered = h.expect(client, Cmd.REPLY)
    assert (answered.route, answered.body) == (ROUTE1, reply)

    # two clients: completions go to the client named in the frame
    other = h.client(b"client-B")
    roundtrip(h, other, card0, ROUTE0, 3)
    card0.send(Cmd.COMPLETE, b"client-A", [[4, 0, 1.0, 1.0]])
    assert proto.unpack(h.expect(client, Cmd.COMPLETE).body) == [[4, 0, 1.0, 1.0]]
    assert other.find(Cmd.COMPLETE) == []

    # broker-level commands
    client.send(Cmd.STATUS, BROKER_ROUTE, {})
    status = proto.unpack(h.expect(client, Cmd.STATUS).body)
    assert [c["state"] for c in status["cards"]] == ["ready", "ready"]
    client.send(Cmd.HEARTBEAT, BROKER_ROUTE, {})
    assert h.expect(client, Cmd.HEARTBEAT).route == BROKER_ROUTE
    client.send(Cmd.REQUEST, BROKER_ROUTE, {"rid": 9, "op": "no-such-op"})
    unknown = proto.unpack(h.expect(client, Cmd.REPLY).body)
    assert (unknown["rid"], unknown["code"]) == (9, ACL_ERROR_INVALID_PARAM)
    assert "no-such-op" in unknown["error"] and "\n" not in unknown["error"]
    client.send(Cmd.REQUEST, BROKER_ROUTE, {"rid": 10, "op": "restart", "device_id": 0})
    restart = proto.unpack(h.expect(client, Cmd.REPLY).body)
    assert restart["rid"] == 10 and restart["code"] == 0  # READY: nothing to restart
    assert restart["card"]["epoch"] == 1
    assert h.alive(), h.errors


def test_client_disconnect_is_passed_to_the_cards_it_used(harness):
    h = harness
    card0, card1, client, _ = up(h)
    roundtrip(h, client, card0, ROUTE0, 1)
    client.send(Cmd.DISCONNECT, BROKER_ROUTE, {})
    disconnect = h.expect(card0, Cmd.DISCONNECT)
    assert disconnect.client == b"client-A"
    # card 1 never saw this client and is not told
    roundtrip(h, client, card1, ROUTE1, 2)  # (and now has: a sync point for card 1's inbox)
    assert card1.find(Cmd.DISCONNECT) == []


def test_card_loss_is_announced_and_its_work_refused(harness):
    h = harness
    card0, card1, client, _ = up(h)
    roundtrip(h, client, card0, ROUTE0, 1)  # the broker now knows client-A uses card 0
    bystander = h.client(b"client-C")  # never used card 0, but is told too (it may later)
    bystander.send(Cmd.HELLO, BROKER_ROUTE, {})
    h.expect(bystander, Cmd.HELLO)

    card0.beating = False
    silent_since = time.monotonic()
    event = h.expect(client, Cmd.CARD_EVENT)
    assert time.monotonic() - silent_since >= h.expiry_s - h.interval_s
    assert event.route == ROUTE0
    body = proto.unpack(event.body)
    assert body["device_id"] == 0
    assert body["epoch"] == 1
    assert body["state"] == "lost"
    assert body["code"] == ACL_ERROR_RT_LOST_HEARTBEAT
    assert body["card"]["state"] == "lost"
    assert "heartbeat" in body["card"]["lost_reason"]
    assert h.state(0) is CardState.LOST
    assert h.state(1) is CardState.READY

    # every task submitted to the lost card ends with 507010, one row per task id
    client.send(
        Cmd.SUBMIT,
        ROUTE0,
        [{"k": "record", "t": 11, "s": 0}, {"k": "exec", "t": 12, "s": 1}, {"no": "id"}],
    )
    refused = h.expect(client, Cmd.COMPLETE)
    assert refused.route == ROUTE0
    rows = proto.unpack(refused.body)
    assert [(r[0], r[1]) for r in rows] == [
        (11, ACL_ERROR_RT_LOST_HEARTBEAT),
        (12, ACL_ERROR_RT_LOST_HEARTBEAT),
    ]
    assert all(isinstance(r[2], float) and r[2] <= r[3] for r in rows)
    client.send(Cmd.REQUEST, ROUTE0, {"rid": 5, "op": "malloc", "size": 64})
    assert proto.unpack(h.expect(client, Cmd.REPLY).body) == {
        "rid": 5,
        "code": ACL_ERROR_RT_LOST_HEARTBEAT,
    }
    # work for routes that never existed is refused the same way
    for route in (pack_route(0, 7), pack_route(5, 1)):
        client.send(Cmd.SUBMIT, route, [{"k": "record", "t": 20, "s": 0}])
        late = h.expect(client, Cmd.COMPLETE)
        assert late.route == route
        assert [r[:2] for r in proto.unpack(late.body)] == [[20, ACL_ERROR_RT_LOST_HEARTBEAT]]
    assert card0.find(Cmd.SUBMIT) == [] and card0.find(Cmd.REQUEST) == []

    # the lost card's late traffic: heartbeats get a DISCONNECT, completions are dropped
    card0.send(Cmd.HEARTBEAT, b"", {})
    h.expect(card0, Cmd.DISCONNECT)
    card0.send(Cmd.COMPLETE, b"client-A", [[1, 0, 0.0, 0.0]])

    # the other card keeps working; the bystander heard of the loss once, and nothing else
    roundtrip(h, client, card1, ROUTE1, 30)
    assert client.inbox == []
    told = [proto.unpack(m.body) for m in bystander.inbox]
    assert [(b["device_id"], b["state"], b["code"]) for b in told] == [
        (0, "lost", ACL_ERROR_RT_LOST_HEARTBEAT)
    ]
    assert h.alive(), h.errors


def test_unexpected_ready_gets_a_disconnect(harness):
    h = harness
    card0, card1, client, _ = up(h)
    impostor = h.card(0, epoch=9)
    h.ready(impostor, 0, epoch=9)
    impostor.beating = False
    h.expect(impostor, Cmd.DISCONNECT)
    roundtrip(h, client, card0, ROUTE0, 1)
    roundtrip(h, client, card1, ROUTE1, 2)
    assert h.state(0) is CardState.READY
    assert h.broker.registry.cards[0].identity == b"card0.1"


def test_garbage_is_logged_and_dropped(harness):
    h = harness
    card0, card1, client, _ = up(h)
    body = pack([{"k": "record", "t": 1, "s": 0}])

    # -- from a client
    for frames in (
        [b"x"],
        [b""],
        [b"", CLIENT_HEADER],
        [b"", CLIENT_HEADER, Cmd.SUBMIT, ROUTE0],
        [b"", CLIENT_HEADER, Cmd.SUBMIT, ROUTE0, body, b"extra"],
        [b"x", CLIENT_HEADER, Cmd.SUBMIT, ROUTE0, body],  # no delimiter
        [b"", WORKER_HEADER, Cmd.SUBMIT, ROUTE0, body],  # a worker's header
        [b"", b"GET / HTTP/1.1", Cmd.HELLO, BROKER_ROUTE, b""],
        [b"", CLIENT_HEADER, b"\x7f", ROUTE0, body],  # unknown command
        [b"", CLIENT_HEADER, b"", ROUTE0, body],
        [b"", CLIENT_HEADER, Cmd.SUBMIT, b"\x00\x00\x00", body],  # short route
        [b"", CLIENT_HEADER, Cmd.SUBMIT, ROUTE0 + b"\x00", body],  # long route
        [b"", CLIENT_HEADER, Cmd.HELLO, b"", b""],
        [b"", CLIENT_HEADER, Cmd.REQUEST, BROKER_ROUTE, b"\xc1\xc1"],  # garbage msgpack
        [b"", CLIENT_HEADER, Cmd.REQUEST, BROKER_ROUTE, pack([1, 2])],  # not a map
        [b"", CLIENT_HEADER, Cmd.REQUEST, BROKER_ROUTE, pack({"op": "restart"})],  # no rid
        [b"", CLIENT_HEADER, Cmd.REQUEST, pack_route(0, 9), b"\x92\x01"],  # refused, garbage
        [b"", CLIENT_HEADER, Cmd.SUBMIT, pack_route(3, 1), b"\xc1"],  # refused, garbage
        [b"", CLIENT_HEADER, Cmd.SUBMIT, pack_route(3, 1), pack({"t": 1})],  # not a list
        [b"", CLIENT_HEADER, Cmd.SUBMIT, BROKER_ROUTE, body],  # work for the broker itself
        [b"", CLIENT_HEADER, Cmd.COMPLETE, ROUTE0, pack([[1, 0, 0.0, 0.0]])],  # wrong way
        [b"", CLIENT_HEADER, Cmd.CARD_EVENT, ROUTE0, pack({})],
        [b"", CLIENT_HEADER, Cmd.REPLY, ROUTE0, pack({"rid": 1})],
    ):
        client.send_raw(frames)

    # -- from cards (known and unknown)
    stranger = h.card(7)
    for card in (card0, stranger):
        for frames in (
            [b"x"],
            [b"", WORKER_HEADER],
            [b"", WORKER_HEADER, Cmd.HEARTBEAT, b""],
            [b"", WORKER_HEADER, Cmd.HEARTBEAT, b"", b"", b"extra"],
            [b"x", WORKER_HEADER, Cmd.HEARTBEAT, b"", b""],
            [b"", CLIENT_HEADER, Cmd.HEARTBEAT, b"", b""],
            [b"", WORKER_HEADER, b"\x7f", b"", b""],
            [b"", WORKER_HEADER, Cmd.READY, b"", b"\xc1"],  # garbage msgpack
            [b"", WORKER_HEADER, Cmd.READY, b"", pack([1])],  # not a map
            [b"", WORKER_HEADER, Cmd.READY, b"", pack({"device_id": [0], "epoch": 1})],
            [b"", WORKER_HEADER, Cmd.READY, b"", pack({"device_id": {}, "epoch": []})],
            [b"", WORKER_HEADER, Cmd.HEARTBEAT, b"", b"\xc1\xc1"],
            [b"", WORKER_HEADER, Cmd.SUBMIT, b"client-A", body],  # wrong way
            [b"", WORKER_HEADER, Cmd.COMPLETE, b"", pack([[1, 0, 0.0, 0.0]])],  # no client
        ):
            card.send_raw(frames)
    stranger.send(Cmd.COMPLETE, b"client-A", [[99, 0, 0.0, 0.0]])  # not a known card: dropped

    # -- everything still routes, in both directions, and only the expected answers came back
    roundtrip(h, client, card0, ROUTE0, 40)
    roundtrip(h, client, card1, ROUTE1, 41)
    client.send(Cmd.STATUS, BROKER_ROUTE, {})
    status = proto.unpack(h.expect(client, Cmd.STATUS).body)
    assert [c["state"] for c in status["cards"]] == ["ready", "ready"]
    assert h.alive(), h.errors
    # the refused-but-garbage SUBMIT/REQUEST bodies got no answer; the garbage HELLO/REPLY none
    assert [m.cmd for m in client.inbox] == [], client.inbox
    # the stranger was told to go away (its READY / HEARTBEAT came from an unknown identity)
    h.pump_for(lambda: stranger.find(Cmd.DISCONNECT))


def test_ready_with_malformed_fields_for_a_starting_card_is_refused(harness):
    """The registry refuses it (instead of raising into the broker loop) and the broker
    disconnects the sender; the real card can still announce itself afterwards."""
    h = harness
    card0 = h.card(0)
    card0.send(Cmd.READY, b"", {"device_id": 0, "epoch": 1, "hbm_bytes": "lots", "soc_name": None})
    h.expect(card0, Cmd.DISCONNECT)
    assert h.state(0) is CardState.STARTING
    card0.send(Cmd.READY, b"", {"device_id": [0], "epoch": 1})
    h.expect(card0, Cmd.DISCONNECT)
    assert h.alive(), h.errors
    card1 = h.card(1)
    client = h.client(b"client-A")
    h.ready(card0, 0)
    h.ready(card1, 1)
    client.send(Cmd.HELLO, BROKER_ROUTE, {})
    farm = proto.unpack(h.expect(client, Cmd.HELLO).body)
    assert [c["state"] for c in farm["cards"]] == ["ready", "ready"]
    assert [c["shm_name"] for c in farm["cards"]] == ["npufarm-bt-card0-e1", "npufarm-bt-card1-e1"]
    roundtrip(h, client, card0, ROUTE0, 1)


def test_restart_request_with_unhashable_device_id_is_dropped(harness):
    h = harness
    card0, card1, client, _ = up(h)
    client.send(Cmd.REQUEST, BROKER_ROUTE, {"rid": 1, "op": "restart", "device_id": [0]})
    client.send(Cmd.STATUS, BROKER_ROUTE, {})
    h.pump_for(lambda: not h.alive() or client.find(Cmd.STATUS) or client.find(Cmd.REPLY))
    assert h.alive(), h.errors


def test_a_stale_sentinel_event_never_loses_the_restarted_card():
    """One poll round can report a dead card's sentinel *and* the client request that restarts
    it; handled in that order, the new process's sentinel reuses the old fd number, and the stale
    event must not take the new card down. A dead process is still lost."""
    import types

    lost: list[tuple[int, str]] = []
    forgotten: list[int] = []

    def cards_with(process) -> types.SimpleNamespace:
        supervisor = types.SimpleNamespace(
            sentinels={7: 0}, processes={0: process}, forget=forgotten.append
        )
        return types.SimpleNamespace(
            supervisor=supervisor, lose=lambda device_id, reason: lost.append((device_id, reason))
        )

    alive = types.SimpleNamespace(is_alive=lambda: True, exitcode=None)
    CardControl.on_sentinel(cards_with(alive), 7)
    assert lost == [] and forgotten == []
    dead = types.SimpleNamespace(is_alive=lambda: False, exitcode=-9)
    CardControl.on_sentinel(cards_with(dead), 7)
    assert lost == [(0, "process exited (exit code -9)")] and forgotten == [0]


# --------------------------------------------------------------------------- issue 9


def test_a_restart_that_never_becomes_ready_is_answered_with_507010(harness):
    """A card that hangs (or dies) while it restarts: the pending restart gets 507010 once the
    start timeout passes, not the client's 30 s request timeout."""
    h = harness
    card0, card1, client, _ = up(h)
    started: list[int] = []
    h.broker.cards.request_start = started.append  # no process: the new epoch never says READY
    h.broker.cards.start_timeout_s = 0.3
    card0.beating = False
    h.pump_for(lambda: h.state(0) is CardState.LOST)
    client.send(Cmd.REQUEST, BROKER_ROUTE, {"rid": 5, "op": "restart", "device_id": 0})
    h.pump_for(lambda: started == [0])
    assert h.state(0) is CardState.STARTING and client.find(Cmd.REPLY) == []
    h.broker.registry.cards[0].spawned_s = time.monotonic()  # "spawned" now
    sent_s = time.monotonic()
    reply = proto.unpack(h.expect(client, Cmd.REPLY).body)
    assert time.monotonic() - sent_s >= 0.3
    assert (reply["rid"], reply["code"]) == (5, ACL_ERROR_RT_LOST_HEARTBEAT)
    assert reply["card"]["state"] == "lost" and "did not start" in reply["card"]["lost_reason"]
    assert reply["card"]["pid"] is None
    assert h.alive(), h.errors


def test_a_starting_card_gets_the_rules_injected_meanwhile(harness):
    h = harness
    card0, card1 = h.card(0), h.card(1)
    client = h.client(b"client-A")
    h.broker.faults.spawn_rules = {0: (), 1: ()}  # both were spawned with an empty plan
    h.ready(card1, 1)
    h.pump_for(lambda: h.state(1) is CardState.READY)
    rule = {"kind": "slow", "factor": 3.0, "card": 0}
    client.send(Cmd.REQUEST, BROKER_ROUTE, {"rid": 1, "op": "inject", "rule": rule})
    assert proto.unpack(h.expect(client, Cmd.REPLY).body) == {"rid": 1, "code": 0, "rule": 0}
    assert card0.find(Cmd.REQUEST) == []  # still starting: nothing to tell yet
    h.ready(card0, 0)
    told = proto.unpack(h.expect(card0, Cmd.REQUEST).body)
    assert (told["op"], told["rule_id"], told["rule"]) == ("inject", 0, rule)
    assert card1.find(Cmd.REQUEST) == []  # not its rule
    active = h.broker.describe()["faults"]["active"]
    assert [(a["rule_id"], a["kind"], a["card"], a["factor"]) for a in active] == [
        (0, "slow", 0, 3.0)
    ]


def test_garbage_floods_are_counted_and_logged_once_a_second(harness, caplog):
    h = harness
    card0, card1, client, _ = up(h)
    caplog.set_level("WARNING", logger="farm.broker_io")
    started = time.monotonic()
    for index in range(2000):
        client.send_raw([b"", b"junk", bytes([index % 256])])
    client.send(Cmd.STATUS, BROKER_ROUTE, {})
    h.pump_for(lambda: client.find(Cmd.STATUS))
    status = proto.unpack(h.expect(client, Cmd.STATUS).body)
    assert status["malformed"] == 2000
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 2 + int(time.monotonic() - started), lines
    roundtrip(h, client, card0, ROUTE0, 1)


def test_a_full_pipe_to_a_live_card_queues_its_work_in_order(monkeypatch):
    """A live card that reads slowly: the broker's sends to it meet the high-water mark; the
    work waits in the broker and reaches the card in order, none failed with 507010."""
    import farm.broker_io

    monkeypatch.setattr(farm.broker_io, "PIPE_HWM", 4)
    h = BrokerHarness()
    card0 = h.card(0, rcvhwm=4)
    try:
        card1, client = h.card(1), h.client(b"client-A")
        h.ready(card0, 0)
        h.ready(card1, 1)
        client.send(Cmd.HELLO, BROKER_ROUTE, {})
        h.expect(client, Cmd.HELLO)
        h.peers.remove(card0)  # card 0 stops reading (it still beats, below)
        pad = "x" * 4096
        count = 600
        for task_id in range(1, count + 1):
            client.send(Cmd.SUBMIT, ROUTE0, [{"k": "record", "t": task_id, "s": 0, "pad": pad}])

        def backlog() -> int:
            card0.send(Cmd.HEARTBEAT, b"", {})
            return h.broker.describe()["card_backlog"]

        h.pump_for(backlog)
        h.peers.append(card0)
        h.pump_for(lambda: len(card0.find(Cmd.SUBMIT)) == count, 20.0)
        ids = [proto.unpack(m.body)[0]["t"] for m in card0.find(Cmd.SUBMIT)]
        assert ids == list(range(1, count + 1))
        assert client.find(Cmd.COMPLETE) == []  # nothing refused
        assert h.state(0) is CardState.READY
        h.pump_for(lambda: h.broker.describe()["card_backlog"] == 0)  # (its last pop)
    finally:
        if card0 not in h.peers:
            h.peers.append(card0)
        h.close()


# --------------------------------------------------------------------------- issue 10: dispatch


def test_a_cards_hello_is_not_its_ready(harness):
    """READY has its own byte: a card that sends the client's HELLO with a READY body is not
    registered (counted malformed), and the broker answers it nothing; its READY still counts."""
    h = harness
    card0 = h.card(0)
    body = {"device_id": 0, "epoch": 1, "pid": os.getpid(), "shm_name": "x", "hbm_bytes": 1}
    card0.send(Cmd.HELLO, b"", body)
    h.pump_for(lambda: h.broker.malformed.count == 1)
    assert h.state(0) is CardState.STARTING and card0.inbox == []
    h.ready(card0, 0)
    h.pump_for(lambda: h.state(0) is CardState.READY)
    assert h.alive(), h.errors


def test_only_the_tables_commands_and_ops_are_dispatched(harness):
    """A client command outside the broker's table is counted malformed and unanswered; an op
    outside the admin table is refused with 100000, even when it names a method of the broker
    or of one of its parts."""
    h = harness
    card0, card1, client, _ = up(h)
    before = h.broker.malformed.count
    for cmd in (Cmd.READY, Cmd.COMPLETE, Cmd.CARD_EVENT, Cmd.REPLY, Cmd.SUBMIT):
        client.send(cmd, BROKER_ROUTE, {"rid": 1})
    h.pump_for(lambda: h.broker.malformed.count == before + 5)
    for rid, op in enumerate(["on_request", "restart_lost", "__init__", "_op_restart", None], 20):
        client.send(Cmd.REQUEST, BROKER_ROUTE, {"rid": rid, "op": op})
        reply = proto.unpack(h.expect(client, Cmd.REPLY).body)
        assert (reply["rid"], reply["code"]) == (rid, ACL_ERROR_INVALID_PARAM), reply
        assert "unknown broker op" in reply["error"]
    assert client.find(Cmd.REPLY) == [] and h.state(0) is CardState.READY
    assert set(h.broker.admin.ops) == {"restart", "trace", "inject", "recover"}
    assert h.alive(), h.errors
