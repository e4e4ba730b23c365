"""The broker believes only what a card can vouch for (issue 9, fuzz findings): fault events
from identities that are not a registered card, or about another card, never reach the fault
log; a SUBMIT header that claims tasks no card will answer never stays in flight; a flood of
unexpected READYs is counted, not logged line by line.

A real Broker in a thread against scripted cards and clients (see ``broker_harness.py``).
"""

from __future__ import annotations

import logging

import pytest

from core import protocol as proto
from core.protocol import BROKER_DEVICE, Cmd, pack, pack_route
from farm.metrics import FarmMetrics
from tests.integration.broker_harness import ROUTE0, BrokerHarness, up

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def harness():
    h = BrokerHarness()
    try:
        yield h
    finally:
        h.close()


BROKER_ROUTE = pack_route(BROKER_DEVICE, 0)


def _event(device_id: int, kind: object = "error", **extra) -> dict:
    event = {
        "t_s": 0.5,
        "card": device_id,
        "epoch": 1,
        "hook": "task",
        "call": 1,
        "kind": kind,
        "code": 507011,
        "rule": 0,
        "detail": {},
    }
    event.update(extra)
    return event


def _status(h: BrokerHarness, client) -> dict:
    client.send(Cmd.STATUS, BROKER_ROUTE, {})
    return proto.unpack(h.expect(client, Cmd.STATUS).body)


def test_card_events_count_only_from_the_card_they_are_about(harness, tmp_path):
    h = harness
    h.broker.faults.log_path = str(tmp_path / "faults.jsonl")
    card0, _, client, _ = up(h)
    impostor = h.card(0, epoch=7)  # never READY: an unregistered identity
    impostor.send(Cmd.CARD_EVENT, b"", {"faults": [_event(0, "crash")]})
    bad = [
        _event(1, "crash"),  # about another card
        _event(0, [1]),  # unhashable kind
        _event(0, "no-such-kind"),
        _event(0, "crash", card=True),
        _event(0, "crash", t_s=float("nan")),
        _event(0, "crash", rule="0"),
        _event(0, "crash", epoch=2),  # another epoch's
        {"kind": "crash"},  # no card
        "crash",
    ]
    card0.send(Cmd.CARD_EVENT, b"", {"faults": [*bad, _event(0, "error")]})
    card0.send(Cmd.CARD_EVENT, b"", {"faults": "crash"})
    card0.send(Cmd.CARD_EVENT, b"", [1, 2])
    status = h.pump_for(lambda: (s := _status(h, client))["malformed"] >= 4 and s)
    assert status["faults"]["counts"] == {"error": 1}
    assert status["malformed"] == 4  # the impostor's message, the bad events, 2 bad bodies
    assert h.broker.supervisor.fired == {(0, 0): 1}
    logged = (tmp_path / "faults.jsonl").read_text().splitlines()
    assert len(logged) == 1 and '"kind": "error"' in logged[0]
    assert h.alive(), h.errors


def _ledger_settles(h, client, expected: dict) -> dict:
    def settled():
        ledger = _status(h, client)["ledger"]
        return ledger if all(ledger[k] == v for k, v in expected.items()) else None

    return h.pump_for(settled)


def test_header_counted_tasks_the_card_refuses_are_malformed_not_in_flight(harness):
    h = harness
    metrics = h.broker.telemetry.metrics = FarmMetrics(0, "bt")  # closed by the broker's shutdown
    card0, _, client, _ = up(h)
    client.send(Cmd.SUBMIT, ROUTE0, b"\xdc\xff\xff")  # a header claiming 65,535 tasks
    client.send(Cmd.SUBMIT, ROUTE0, pack([5]))
    client.send(Cmd.SUBMIT, ROUTE0, pack([{"k": "record", "t": 1, "s": 0}, "junk"]))
    h.pump_for(lambda: len(card0.find(Cmd.SUBMIT)) == 3)
    # the card answers what it can and reports the rest (as device/card.py does)
    card0.send(Cmd.CARD_EVENT, b"", {"refused": 65535})
    card0.send(Cmd.CARD_EVENT, b"", {"refused": 1})
    card0.send(Cmd.COMPLETE, client.identity, [[1, 0, 1.0, 2.0]])
    card0.send(Cmd.CARD_EVENT, b"", {"refused": 1})
    ledger = _ledger_settles(h, client, {"in_flight": 0, "submitted": 1})
    assert ledger["completed"] == 1 and ledger["malformed"] == 65537
    assert ledger["failed"] == {} and ledger["dropped"] == 0
    refused = metrics.registry.get_sample_value("npufarm_malformed_tasks_total", {"card": "0"})
    assert refused == 65537


def test_refusal_reports_from_others_never_uncount_real_work(harness):
    h = harness
    card0, card1, client, _ = up(h)
    client.send(Cmd.SUBMIT, ROUTE0, pack([{"k": "record", "t": 1, "s": 0}] * 3))
    h.pump_for(lambda: card0.find(Cmd.SUBMIT))
    impostor = h.card(0, epoch=7)
    impostor.send(Cmd.CARD_EVENT, b"", {"refused": 3})
    card1.send(Cmd.CARD_EVENT, b"", {"refused": 3})  # card 1 has nothing in flight
    card0.send(Cmd.CARD_EVENT, b"", {"refused": -2})
    card0.send(Cmd.CARD_EVENT, b"", {"refused": True})
    status = h.pump_for(lambda: (s := _status(h, client))["malformed"] >= 3 and s)
    assert status["ledger"]["in_flight"] == 3 and status["ledger"]["submitted"] == 3
    assert status["ledger"]["malformed"] == 0


def test_unexpected_ready_floods_are_counted_not_logged_per_frame(harness, caplog):
    h = harness
    _, _, client, _ = up(h)
    caplog.set_level(logging.WARNING)
    impostor = h.card(0, epoch=9)
    for _ in range(300):
        h.ready(impostor, 0, epoch=9)
    impostor.beating = False
    status = h.pump_for(lambda: (s := _status(h, client))["malformed"] >= 300 and s)
    assert status["malformed"] == 300
    lines = [r for r in caplog.records if "READY" in r.getMessage()]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]
    assert h.broker.registry.cards[0].identity == b"card0.1"


def test_completions_for_a_gone_client_are_counted_and_dropped_quietly(harness, caplog):
    """A card ends a departed client's tasks with a code (device/card.py drop_client): the
    ledger counts them failed; the forward to the gone client fails, counted, not logged per
    row."""
    h = harness
    card0, _, client, _ = up(h)
    caplog.set_level(logging.WARNING)
    client.send(Cmd.SUBMIT, ROUTE0, pack([{"k": "record", "t": t, "s": 0} for t in range(200)]))
    h.pump_for(lambda: card0.find(Cmd.SUBMIT))
    client.send(Cmd.DISCONNECT, BROKER_ROUTE, b"")
    h.expect(card0, Cmd.DISCONNECT)
    client.socket.close(0)
    h.peers.remove(client)
    for t in range(200):
        card0.send(Cmd.COMPLETE, b"client-A", [[t, 107023, 1.0, 1.0]])
    other = h.client(b"client-B")
    ledger = _ledger_settles(h, other, {"in_flight": 0})
    assert ledger["submitted"] == 200 and ledger["failed"] == {"107023": 200}
    assert 1 <= h.broker.replies_dropped.count <= 200  # (zmq notices the gone peer async)
    lines = [r for r in caplog.records if "client-A" in r.getMessage()]
    assert len(lines) <= 2, [r.getMessage() for r in lines]
