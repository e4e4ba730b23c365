"""Fault rules for one node of a cluster: the ``node`` field, matching and routing (pure)."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.fault_plan import FaultPlan, FaultRule, node_matches, route_rules

NODE1 = "a3f0c2d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5"
NODE2 = "77c0ffee00000000000000000000000000000000000000000000beef"
NODES = {
    NODE1: (NODE1, "node1", "farm-a"),
    NODE2: (NODE2, "node2", "farm-b"),
}


def test_node_field_parses_and_roundtrips():
    rule = FaultRule.from_args(["kind=crash", "card=1", "node=node2"])
    assert rule.node == "node2"
    assert FaultRule.from_dict(rule.to_dict()) == rule
    assert "node" not in FaultRule(kind="slow", factor=2).to_dict()
    with pytest.raises(ConfigError, match="node"):
        FaultRule.from_args(["kind=crash", "node= "])


def test_node_matches_names_and_id_prefixes():
    assert node_matches("node2", NODES[NODE2])
    assert node_matches("farm-b", NODES[NODE2])
    assert node_matches(NODE2, NODES[NODE2])
    assert node_matches(NODE2[:8], NODES[NODE2])
    assert not node_matches(NODE2[:7], NODES[NODE2])  # too short to be an id prefix
    assert not node_matches("node2", NODES[NODE1])
    assert not node_matches("node", NODES[NODE1])  # not a prefix match: a name must be equal


def test_route_rules_deals_by_node_and_strips_it():
    everywhere = FaultRule(kind="slow", factor=3.0)
    only2 = FaultRule(kind="crash", card=1, node="node2")
    by_id = FaultRule(kind="error", card=0, node=NODE1[:12])
    routed = route_rules([everywhere, only2, by_id], NODES)
    assert routed[NODE1] == [everywhere, FaultRule(kind="error", card=0)]
    assert routed[NODE2] == [everywhere, FaultRule(kind="crash", card=1)]
    assert all(r.node is None for rules in routed.values() for r in rules)


def test_route_rules_refuses_an_unknown_node():
    with pytest.raises(ConfigError, match="node3.*node1"):
        route_rules([FaultRule(kind="crash", node="node3")], NODES)


def test_plan_for_node_keeps_rule_ids():
    plan = FaultPlan.from_dict(
        {
            "seed": 3,
            "fault": [
                {"kind": "slow", "factor": 2.0},
                {"kind": "crash", "card": 0, "node": "farm-a"},
                {"kind": "crash", "card": 1, "node": "farm-b"},
            ],
        }
    )
    mine = plan.for_node(("farm-b", "host"))
    assert mine.rule_ids == (0, 2) and mine.seed == 3
    assert [r.node for r in mine.rules] == [None, None]
    assert mine.rules[1].card == 1


def test_nodeset_names_and_clock_offset():
    """The names a cluster node answers to (no Ray needed), and the clock offset rule."""
    from loadtest.ray_nodes import NodeSet, boot_id, clock_offset_s

    infos = [
        {"node_id": NODE1, "node_name": "10.0.0.1", "farm": "farm-a"},
        {"node_id": NODE2, "node_name": "10.0.0.1", "farm": None},  # no farm name reported
    ]
    nodes = NodeSet(None, [{"NodeID": NODE1}, {"NodeID": NODE2}], [], infos)
    names = nodes.names()
    assert names == {NODE1: (NODE1, "10.0.0.1", "farm-a"), NODE2: (NODE2, "10.0.0.1")}
    routed = route_rules([FaultRule(kind="hang", node="10.0.0.1")], names)
    assert all(len(rules) == 1 for rules in routed.values())  # one IP, two nodes: both
    here = {"boot_id": boot_id(), "monotonic_s": 50.0}
    assert clock_offset_s(here, 10.0, 12.0) == 0.0
    there = {"boot_id": "other/boot", "monotonic_s": 50.0}
    assert clock_offset_s(there, 10.0, 12.0) == 39.0


def test_a_ray_address_nobody_listens_on_fails_at_once():
    """`npufarm bench --ray HOST:PORT` with a typo must not sit in Ray's minutes of retries."""
    import socket
    import time

    from loadtest.ray_nodes import check_reachable

    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=f"no Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 2.0
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")  # no error
    check_reachable("auto")  # left to Ray
