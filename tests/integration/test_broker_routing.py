"""The broker's routing (integration): HELLO waits for every card, SUBMIT / REQUEST go to the
card a route names and COMPLETE / REPLY back to the client named in the frame, a client's
DISCONNECT reaches the cards it used, and work for a card that reads slowly queues in order.

A real Broker in a thread against scripted cards and clients (see
:mod:`tests.integration.broker_harness`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import farm.broker_io
from core import protocol as proto
from core.errors import ACL_ERROR_INVALID_PARAM
from core.protocol import Cmd, pack
from farm.registry import CardState
from tests.integration.broker_harness import (
    BROKER_ROUTE,
    ROUTE0,
    ROUTE1,
    BrokerHarness,
    broker_harness,  # noqa: F401 (the "harness" fixture)
    roundtrip,
    up,
)

pytestmark = pytest.mark.timeout(30)


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


def test_a_full_pipe_to_a_live_card_queues_its_work_in_order(monkeypatch):
    """A live card that reads slowly: the broker's sends to it meet the high-water mark; the
    work waits in the broker and reaches the card in order, none failed with 507010."""
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
