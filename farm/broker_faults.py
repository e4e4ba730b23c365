"""The broker's part in fault experiments: ``broker.route`` and ``broker.complete`` drops, the
fault log, the rules in force, and the ``inject`` / ``recover`` requests of a running farm:
:class:`FaultControl`, a part :class:`farm.broker.Broker` is composed of.

Cards report the faults they inject (CARD_EVENT); the broker appends every event to the fault
log (JSONL), counts them for status and metrics, marks them on the trace, and tells the
supervisor how often each rule fired per card, so a rule's ``count`` holds across restarts.

An injected ``disconnect`` is a card loss: a link drop loses the messages in flight (tasks and
completions), so the broker declares the card lost one heartbeat expiry after the drop, as it
would for a longer one (a transient drop is never a silent loss of work). ``recover`` removes
the rules; the admin op then restarts the cards that are down, so the farm is healthy again
(clients of the old epoch still get 507010 until their own reset: the epoch changed).

A rule with a ``node`` (a cluster's fault plan) is this farm's when it names the farm's
``name`` or its host name (:meth:`core.fault_plan.FaultPlan.for_node`): the plan keeps only
this node's rules, and ``inject`` refuses a rule for another node.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import time
from typing import Any

from core import protocol as proto
from core.errors import ConfigError
from core.fault_plan import check_kinds, node_matches
from core.faults import API_BY_TASK_KIND, BROKER, KINDS, FaultInjector, FaultPlan, FaultRule
from core.protocol import Cmd
from farm.broker_io import Counted, Outbox, Telemetry
from farm.ledger import FarmLedger
from farm.registry import CardState, Registry
from farm.supervisor import Supervisor

__all__ = ["FaultControl"]

logger = logging.getLogger(__name__)


class FaultControl:
    """The broker's fault state: the plan in force, its own injector, the fault log and the
    counts; it reads the registry, tells the supervisor (per-rule fire counts, the plan new
    cards start with) and sends rules to cards through the outbox."""

    def __init__(
        self,
        plan: FaultPlan,
        *,
        started_s: float,
        expiry_s: float,
        registry: Registry,
        supervisor: Supervisor,
        ledger: FarmLedger,
        outbox: Outbox,
        telemetry: Telemetry,
        malformed: Counted,
        log_path: str,
    ) -> None:
        self.started_s = started_s
        self.expiry_s = expiry_s
        self.registry = registry
        self.supervisor = supervisor
        self.ledger = ledger
        self.outbox = outbox
        self.telemetry = telemetry
        self.malformed = malformed
        self.node_names = (supervisor.config.name, socket.gethostname())
        plan = plan.for_node(self.node_names)
        self.plan = plan
        supervisor.plan = plan
        broker_plan = plan.for_broker()
        self.route_faults = FaultInjector(broker_plan, BROKER) if broker_plan.rules else None
        self.counts: dict[str, int] = {}
        self.rule_first_s: dict[int, float] = {}  # rule id -> first fire (s since farm start)
        self.log_path = log_path
        self.log = None  # opened (truncated) at the first fault event
        self.spawn_rules: dict[int, tuple[int, ...]] = {}  # device -> rule ids given at spawn
        self.link_loss: dict[int, tuple[int, float]] = {}  # device -> (epoch, loss deadline)

    def describe(self) -> dict[str, Any]:
        return {
            "log": self.log_path,
            "counts": dict(self.counts),
            "plan": self.plan.to_dict(),
            "active": self.active_rules(),
        }

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def spawned(self, device_id: int) -> None:
        """A card's process is about to start with the plan of now."""
        self.spawn_rules[device_id] = self.supervisor.card_plan(device_id).rule_ids

    def drop_tasks(self, device_id: int, client: bytes, route: bytes, body: bytes):
        """broker.route faults: drop the tasks a ``drop`` rule fires on (they never complete,
        as a lost message would leave them). Returns the body to forward, or None."""
        tasks = proto.unpack(body)
        if not isinstance(tasks, list):
            return body
        now_s = time.monotonic() - self.started_s
        kept = []
        for task in tasks:
            task = task if isinstance(task, dict) else {}
            stream = task.get("s") if _is_int(task.get("s")) else None
            kind = task.get("k")
            api = API_BY_TASK_KIND.get(kind) if isinstance(kind, str) else None
            fired = self.route_faults.evaluate(
                "broker.route", now_s, stream=stream, api=api, card=device_id
            )
            self.log_faults([f.event.to_dict() for f in fired])
            if any(f.kind == "drop" for f in fired):
                self.ledger.routed(device_id, 1)
                self.ledger.dropped_tasks(device_id, 1)
            else:
                kept.append(task)
        if not kept:
            return None
        return body if len(kept) == len(tasks) else proto.pack(kept)

    def drop_completions(self, device_id: int, rows: list) -> list:
        """broker.complete faults: the completion rows to forward. A dropped row's task ran on
        the card (its outputs are written) but its client never hears of it: a timed sync gets
        507046, as when a completion is lost on the way."""
        now_s = time.monotonic() - self.started_s
        kept = []
        for row in rows:
            stream = row[4] if isinstance(row, list) and len(row) > 4 else None
            stream = stream if _is_int(stream) else None
            fired = self.route_faults.evaluate(
                "broker.complete", now_s, stream=stream, card=device_id
            )
            self.log_faults([f.event.to_dict() for f in fired])
            if any(f.kind == "drop" for f in fired):
                self.ledger.dropped_tasks(device_id, 1)
            else:
                kept.append(row)
        return kept

    def log_faults(self, events: list[dict]) -> None:
        trace, metrics = self.telemetry.trace, self.telemetry.metrics
        if trace is not None:
            for event in events:
                trace.instant(
                    f"fault: {event['kind']}",
                    event.get("card", -1),
                    event.get("t_s", 0.0),
                    event,
                    since_start=True,
                )
        if metrics is not None:
            for event in events:
                metrics.fault(event.get("card", -1), event["kind"])
        if events and self.log is None:
            self.log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
        for event in events:
            rule_id = event.get("rule", -1)
            t_s = event.get("t_s", 0.0)
            if rule_id not in self.rule_first_s or t_s < self.rule_first_s[rule_id]:
                self.rule_first_s[rule_id] = t_s
            key = (rule_id, event.get("card", -1))
            self.supervisor.fired[key] = self.supervisor.fired.get(key, 0) + 1
            self.log.write(json.dumps(event, sort_keys=True, default=repr) + "\n")
            self.counts[event["kind"]] = self.counts.get(event["kind"], 0) + 1
        if events:
            self.log.flush()

    def on_card_event(self, identity: bytes, body: Any, now: float) -> None:
        """A card's CARD_EVENT: ``faults`` it injected and/or ``refused``, the items of a
        SUBMIT it could never answer. Believed only from the identity of a card's current epoch
        (a crash report may arrive just after the loss of the card that sent it)."""
        entry = self.registry.by_identity.get(identity) or self._lost_sender(identity)
        if entry is None or not isinstance(body, dict):
            self.malformed.add(f"CARD_EVENT from {identity!r} dropped (not a card's)", now)
            return
        refused = body.get("refused")
        if refused is not None:
            if not (_is_int(refused) and refused > 0):
                self.malformed.add(f"card {entry.device_id}: bad refused {refused!r}", now)
            elif entry.state is CardState.READY:
                taken = self.ledger.malformed_tasks(entry.device_id, refused)
                if taken and self.telemetry.metrics is not None:
                    self.telemetry.metrics.tasks_refused(entry.device_id, taken)
        faults = body.get("faults")
        if faults is not None:
            if isinstance(faults, list):
                self.on_fault_events(entry, faults, now)
            else:
                self.malformed.add(f"card {entry.device_id}: faults not a list", now)

    def _lost_sender(self, identity: bytes):
        for entry in self.registry.cards.values():
            if entry.identity == identity and entry.state is CardState.LOST:
                return entry
        return None

    def on_fault_events(self, entry, events: list, now: float) -> None:
        """The faults a card injected: only well-formed events about that card are logged and
        counted; the rest are dropped as malformed."""
        valid = [e for e in events if _valid_event(e, entry.device_id, entry.epoch)]
        if len(valid) != len(events):
            bad = len(events) - len(valid)
            self.malformed.add(f"card {entry.device_id}: {bad} bad fault events", now)
        self.log_faults(valid)
        if entry.state is CardState.READY and any(e["kind"] == "disconnect" for e in valid):
            deadline = now + self.expiry_s
            self.link_loss.setdefault(entry.device_id, (entry.epoch, deadline))

    def inject(self, body: dict) -> dict:
        """``npufarm inject``: add a rule to the running farm (and to cards started later)."""
        rule = FaultRule.from_dict(body.get("rule"), label="injected fault")
        if rule.node is not None:
            if not node_matches(rule.node, self.node_names):
                names = ", ".join(self.node_names)
                raise ConfigError(f"injected fault.node: {rule.node!r} is not this node ({names})")
            rule = dataclasses.replace(rule, node=None)
        if rule.card is not None and rule.card not in self.registry.cards:
            last = max(self.registry.cards)
            raise ConfigError(f"injected fault.card: no card {rule.card} in this farm (0..{last})")
        self.plan = self.plan.with_rule(rule)
        self.supervisor.plan = self.plan
        rule_id = self.plan.rule_ids[-1]
        if rule.hook.startswith("broker."):
            if self.route_faults is None:
                self.route_faults = FaultInjector(FaultPlan(seed=self.plan.seed), BROKER)
            self.route_faults.add_rule(rule, rule_id)
        else:  # READY cards now; STARTING ones when they are READY (sync_card_rules)
            request = {"op": "inject", "rule": rule.to_dict(), "rule_id": rule_id}
            self._tell_cards(rule.card, request)
        logger.warning("fault injected at runtime: %s", rule.to_dict())
        return {"code": 0, "rule": rule_id}

    def recover(self, body: dict) -> int:
        """``npufarm recover``: clear injected faults (of ``kinds``, or all); the cards a flap
        left FAILED are LOST again, for the caller to restart. Returns how many rules went."""
        kinds = body.get("kinds")
        if kinds is not None and not (
            isinstance(kinds, list | tuple) and all(isinstance(k, str) for k in kinds)
        ):
            raise ConfigError(f"kinds: expected a list of fault kinds, got {kinds!r}")
        kinds = list(kinds) if kinds else None
        check_kinds(kinds)
        before = len(self.plan.rules)
        self.plan = self.plan.without(kinds)
        self.supervisor.plan = self.plan
        if self.route_faults is not None:
            self.route_faults.clear(kinds)
        self._tell_cards(None, {"op": "recover", "kinds": kinds})
        for entry in self.registry.cards.values():
            if entry.state is CardState.FAILED:  # flapped under the faults just removed
                entry.state = CardState.LOST
                entry.restarts.clear()
        return before - len(self.plan.rules)

    def sync_card_rules(self, entry) -> None:
        """A card just READY got the plan of its spawn time; bring it to the plan of now (rules
        injected or recovered while it was starting)."""
        given = self.spawn_rules.pop(entry.device_id, None)
        plan = self.supervisor.card_plan(entry.device_id)
        if given is None or tuple(given) == plan.rule_ids:
            return
        if set(given) - set(plan.rule_ids):
            self._tell_cards(entry.device_id, {"op": "recover", "kinds": None})
            missing = plan.rule_ids
        else:
            missing = tuple(i for i in plan.rule_ids if i not in set(given))
        for rule, rule_id in zip(plan.rules, plan.rule_ids):
            if rule_id in missing:
                request = {"op": "inject", "rule": rule.to_dict(), "rule_id": rule_id}
                self._tell_cards(entry.device_id, request)

    def active_rules(self) -> list[dict[str, Any]]:
        """The rules in force now (plan + injected, minus recovered, expired or used up)."""
        now_s = time.monotonic() - self.started_s
        active = []
        for rule_id, rule in zip(self.plan.rule_ids, self.plan.rules):
            start = rule.at_s if rule.at_s is not None else self.rule_first_s.get(rule_id)
            ended = start is not None and now_s >= start + (rule.duration_s or math.inf)
            if ended:
                continue
            fired = {card: n for (rid, card), n in self.supervisor.fired.items() if rid == rule_id}
            if rule.count is not None:
                if rule.hook.startswith("broker."):
                    used_up = sum(fired.values()) >= rule.count
                else:
                    targets = [rule.card] if rule.card is not None else list(self.registry.cards)
                    used_up = all(fired.get(card, 0) >= rule.count for card in targets)
                if used_up:
                    continue
            active.append(
                {
                    "rule_id": rule_id,
                    **rule.to_dict(),
                    "card": rule.card,
                    "hook": rule.hook,
                    "fired": sum(fired.values()),
                }
            )
        return active

    def _tell_cards(self, device_id: int | None, request: dict) -> None:
        for entry in self.registry.cards.values():
            if entry.identity is None or entry.state is not CardState.READY:
                continue
            if device_id is None or entry.device_id == device_id:
                body = proto.pack({"rid": 0, **request})
                self.outbox.send_card(entry.identity, Cmd.REQUEST, b"", body)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_event(event: Any, device_id: int, epoch: int) -> bool:
    """A fault event as a card's injector writes it, about the card (and epoch) that sent it."""
    if not isinstance(event, dict):
        return False
    kind, t_s = event.get("kind"), event.get("t_s", 0.0)
    return (
        isinstance(kind, str)
        and kind in KINDS
        and _is_int(event.get("card"))
        and event["card"] == device_id
        and event.get("epoch", epoch) == epoch
        and _is_int(event.get("rule", -1))
        and all(_is_int(event.get(key, 0)) for key in ("epoch", "call", "code"))
        and isinstance(event.get("hook", ""), str)
        and isinstance(event.get("detail", {}), dict)
        and isinstance(t_s, int | float)
        and not isinstance(t_s, bool)
        and math.isfinite(t_s)
    )
