"""The broker against malformed input (integration): garbage from clients and cards is
counted, logged at most once a second and dropped; READYs with bad fields, HELLOs from cards
and commands or ops outside the dispatch tables are refused; routing goes on throughout.

A real Broker in a thread against scripted cards and clients (see
:mod:`tests.integration.broker_harness`).
"""

from __future__ import annotations

import os
import time

import pytest

from core import protocol as proto
from core.errors import ACL_ERROR_INVALID_PARAM
from core.protocol import CLIENT_HEADER, WORKER_HEADER, Cmd, pack, pack_route
from farm.registry import CardState
from tests.integration.broker_harness import (
    BROKER_ROUTE,
    ROUTE0,
    ROUTE1,
    broker_harness,  # noqa: F401 (the "harness" fixture)
    roundtrip,
    up,
)

pytestmark = pytest.mark.timeout(30)


def test_garbage_is_logged_and_dropped(harness):
    """A catalogue of malformed frames sent to one broker in turn, each followed by proof it
    still routes (long for that reason: one broker must survive them all)."""
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
