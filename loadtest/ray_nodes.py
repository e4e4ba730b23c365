"""The nodes of a Ray cluster running a farm each: one small agent actor per node, which talks to
that node's farm through the admin client (status, fault rules, the fault log), and the clock
and card bookkeeping the cluster bench needs.

::

    driver (npufarm bench/inject --ray)        node k (ray start, env NPUFARM_ADDRESS=farm k)
    ───────────────────────────────────        ─────────────────────────────────────────────
    NodeSet.start(ray)  ══ Ray: one NodeAgent ══▶ NodeAgent (num_cpus=0, pinned to node k by
      names per node: Ray node id, node name,      NodeAffinitySchedulingStrategy, soft=False)
      farm name                                      │ farm.admin: STATUS / inject / recover
    NodeSet.inject(rules) ─ route_rules ──────▶      ▼ (the raylet's environment names the farm)
      (a node= rule only to the nodes it names)   farm k: broker ══▶ cards
      since_s= (bench start, node clock) ───────▶ at_s shifted by (since − farm start)
    NodeSet.fault_events() ◀── fault log read on the node, times on the driver's clock

Ray is imported only by the functions that need it (the ``ray`` extra); the actor classes are
plain classes made remote at run time. Every node with ``NPU`` resources gets an agent; its
farm is the one its raylet's environment names (``NPUFARM_ADDRESS``, else the state file).

Rule times: a farm counts a rule's ``at_s`` from its own start. A bench's fault plan counts it
from the bench's start (``NodeSet.inject(rules, since_s=bench start)``): the agent adds the time
its farm had been up at that instant (:func:`shift_rule`), so ``at_s = 5`` is 5 s into the bench
on every node however long each farm has been running. ``npufarm inject --ray`` keeps the farm's
own clock, as ``npufarm inject`` does.

Clocks: each agent reports ``time.monotonic()``; the offset to the driver's clock is 0 when both
run on the same boot of the same host (``/proc/sys/kernel/random/boot_id``), else estimated
from the request's midpoint (half a round trip of error: a few ms on a LAN).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from core.fault_plan import FaultRule, route_rules
from core.faults import read_fault_log
from core.statefile import resolve_address
from farm import admin

__all__ = [
    "import_ray",
    "connect",
    "check_reachable",
    "CONNECT_TIMEOUT_S",
    "npu_nodes",
    "boot_id",
    "clock_offset_s",
    "shift_rule",
    "NodeAgent",
    "NodeSet",
]

logger = logging.getLogger(__name__)

_AGENT_TIMEOUT_S = 30.0


def import_ray():
    """The ``ray`` module, or a RuntimeError saying how to get it (``npufarm[ray]``)."""
    try:
        import ray  # the optional extra: only the --ray paths import it
    except ImportError as exc:
        raise RuntimeError(
            "--ray needs Ray: pip install 'npufarm[ray]' (or pip install ray)"
        ) from exc
    return ray


CONNECT_TIMEOUT_S = 5.0
"""How long ``HOST:PORT`` may take to accept a TCP connection before :func:`connect` gives up
(``ray.init`` itself retries a dead address for minutes)."""


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """``RuntimeError`` at once when ``HOST:PORT`` does not accept a TCP connection (a typo, a
    head that is not started): Ray's own connect would retry it for minutes. ``auto`` and
    other forms (``ray://``) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RuntimeError(
            f"no Ray cluster at {address}: {exc} (start one with `ray start --head`, or pass "
            "--ray auto on a node of the cluster)"
        ) from None


def connect(address: str):
    """``ray.init`` against a running cluster (``auto`` or ``HOST:PORT``); returns ``ray``."""
    ray = import_ray()
    if not ray.is_initialized():
        check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    return ray


def npu_nodes(ray) -> list[dict[str, Any]]:
    """The alive nodes offering ``NPU`` resources (node name, then id)."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("NPU", 0) > 0]
    return sorted(nodes, key=lambda n: (n.get("NodeName", ""), n["NodeID"]))


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return f"{socket.gethostname()}/{handle.read().strip()}"
    except OSError:
        return f"{socket.gethostname()}/?"


def clock_offset_s(remote: Mapping[str, Any], before_s: float, after_s: float) -> float:
    """Remote monotonic minus the driver's: 0 on the same boot of the same host, else the
    remote reading against the midpoint of the request (``before_s``/``after_s``)."""
    if remote.get("boot_id") == boot_id():
        return 0.0
    return float(remote["monotonic_s"]) - (before_s + after_s) / 2.0


def shift_rule(rule: Mapping[str, Any], since_s: float, farm_start_s: float) -> dict[str, Any]:
    """``rule`` (a dict) with its ``at_s`` counted from ``since_s`` instead of the farm's start
    (both on one monotonic clock); a rule without ``at_s`` is unchanged. A farm started after
    ``since_s`` gets the remaining delay (never a negative ``at_s``)."""
    out = dict(rule)
    if out.get("at_s") is not None:
        out["at_s"] = round(max(0.0, float(out["at_s"]) + since_s - farm_start_s), 6)
    return out


def _farm_start_s(address: str) -> tuple[dict[str, Any], float]:
    """A farm's status and its start on this host's monotonic clock (its uptime at the
    midpoint of the request)."""
    before = time.monotonic()
    status = admin.query_status(address)
    return status, (before + time.monotonic()) / 2 - status["uptime_s"]


class NodeAgent:
    """Runs on one node (made a Ray actor by :class:`NodeSet`): that node's farm, by admin."""

    def __init__(self) -> None:
        self.address = os.environ.get("NPUFARM_ADDRESS", "").strip() or resolve_address()

    def describe(self) -> dict[str, Any]:
        """The node as the agent sees it, its farm's status, and the agent's clock."""
        status = admin.query_status(self.address) if self.address else {}
        return {
            "address": self.address,
            "farm": status.get("name"),
            "hostname": socket.gethostname(),
            "boot_id": boot_id(),
            "monotonic_s": time.monotonic(),
            "uptime_s": status.get("uptime_s"),
            "status": status,
        }

    def status(self) -> dict[str, Any]:
        return admin.query_status(self.address)

    def inject(self, rule: dict[str, Any], since_s: float | None = None) -> dict[str, Any]:
        """Add ``rule`` to this node's farm; with ``since_s`` (this node's monotonic clock) its
        ``at_s`` counts from then (:func:`shift_rule`). The reply carries the rule as sent."""
        if since_s is not None and rule.get("at_s") is not None:
            rule = shift_rule(rule, since_s, _farm_start_s(self.address)[1])
        return {**admin.inject(self.address, rule), "sent": rule}

    def recover(self, kinds: list[str] | None = None) -> dict[str, Any]:
        return admin.recover(self.address, kinds)

    def fault_events(self) -> dict[str, Any]:
        """The farm's fault log (read here, on the node) and the farm's start on this node's
        monotonic clock."""
        status, farm_start_s = _farm_start_s(self.address)
        faults = status.get("faults") or {}
        path = faults.get("log") or ""
        events = []
        if faults.get("counts") and os.path.isfile(path):
            events = [e.to_dict() for e in read_fault_log(path)]
        return {"farm_start_s": farm_start_s, "events": events}


class NodeSet:
    """One :class:`NodeAgent` per NPU node of the cluster, with the names each node answers to
    (Ray node id, Ray node name, farm name) and its clock offset."""

    def __init__(self, ray, nodes: list[dict[str, Any]], agents: list, infos: list[dict]) -> None:
        self.ray, self.nodes, self.agents, self.infos = ray, nodes, agents, infos
        self.ids = [n["NodeID"] for n in nodes]

    @classmethod
    def start(cls, ray) -> NodeSet:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = npu_nodes(ray)
        if not nodes:
            raise RuntimeError("the Ray cluster has no node with NPU resources")
        remote = ray.remote(num_cpus=0)(NodeAgent)
        agents = [
            remote.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                name=None,
            ).remote()
            for n in nodes
        ]
        infos = []
        for node, agent in zip(nodes, agents):
            before = time.monotonic()
            info = ray.get(agent.describe.remote(), timeout=_AGENT_TIMEOUT_S)
            info["offset_s"] = clock_offset_s(info, before, time.monotonic())
            info["node_id"], info["node_name"] = node["NodeID"], node.get("NodeName")
            infos.append(info)
        # a stable order: node name (the IP unless set), then farm name, then id
        order = sorted(
            range(len(nodes)),
            key=lambda k: (infos[k]["node_name"] or "", infos[k]["farm"] or "", nodes[k]["NodeID"]),
        )
        return cls(
            ray, [nodes[k] for k in order], [agents[k] for k in order], [infos[k] for k in order]
        )

    def names(self) -> dict[str, tuple[str, ...]]:
        """Node id -> the names a rule's ``node`` may use for it."""
        return {
            info["node_id"]: tuple(
                n for n in (info["node_id"], info["node_name"], info["farm"]) if n
            )
            for info in self.infos
        }

    def route(self, rules: Iterable[FaultRule]) -> dict[str, list[FaultRule]]:
        """Node id -> its rules (:func:`core.fault_plan.route_rules`: ConfigError for a
        ``node`` no node answers to)."""
        return route_rules(rules, self.names())

    def inject(
        self, rules: Iterable[FaultRule], since_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Route ``rules`` and add each to the farms of the nodes it is for; one ``{"node_id",
        "rule", "reply"}`` per farm rule. With ``since_s`` (the driver's monotonic clock) each
        ``at_s`` counts from then on every node, not from each farm's start."""
        routed = self.route(rules)
        calls = []
        for agent, node_id, info in zip(self.agents, self.ids, self.infos):
            since = None if since_s is None else since_s + info["offset_s"]
            for rule in routed[node_id]:
                calls.append((node_id, rule.to_dict(), agent.inject.remote(rule.to_dict(), since)))
        replies = self.ray.get([c[2] for c in calls], timeout=_AGENT_TIMEOUT_S)
        return [
            {"node_id": node_id, "rule": rule, "reply": reply}
            for (node_id, rule, _), reply in zip(calls, replies)
        ]

    def call(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every agent, in node order."""
        refs = [getattr(a, method).remote(*args) for a in self.agents]
        return self.ray.get(refs, timeout=_AGENT_TIMEOUT_S)

    def close(self) -> None:
        for agent in self.agents:
            self.ray.kill(agent)
        self.agents = []
