"""Cards coming and going, as the broker sees them (integration): a lost card is announced
and its work refused with 507010, an unexpected READY is sent away, a stale sentinel event
spares a restarted card, a restart that never becomes READY is answered, and a starting card
gets the rules injected meanwhile.

A real Broker in a thread against scripted cards and clients (see
:mod:`tests.integration.broker_harness`).
"""

from __future__ import annotations

import time
import types

import pytest

from core import protocol as proto
from core.errors import ACL_ERROR_RT_LOST_HEARTBEAT
from core.protocol import Cmd, pack_route
from farm.broker_cards import CardControl
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


def test_card_loss_is_announced_and_its_work_refused(harness):
    """One scenario on purpose: the loss, its announcement and the refusal of later work are
    steps of one story whose order is what is checked (long for that reason)."""
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


def test_a_stale_sentinel_event_never_loses_the_restarted_card():
    """One poll round can report a dead card's sentinel *and* the client request that restarts
    it; handled in that order, the new process's sentinel reuses the old fd number, and the stale
    event must not take the new card down. A dead process is still lost."""
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
