"""The broker's part in fault experiments: ``broker.route`` and ``broker.complete`` drops, the
fault log, and the
``inject`` / ``recover`` requests of a running farm. A mixin of :class:`farm.broker.Broker`.

Cards report the faults they inject (CARD_EVENT); the broker appends every event to the fault
log (JSONL), counts them for status and metrics, marks them on the trace, and tells the
supervisor how often each rule fired per card, so a rule's ``count`` holds across restarts.
"""

from __future__ import annotations

import json
import logging
import time

from farm import protocol as proto
from farm.errors import ACL_ERROR_INVALID_PARAM, NpuFarmError
from farm.faults import API_BY_TASK_KIND, BROKER, FaultInjector, FaultPlan, FaultRule
from farm.protocol import Cmd
from farm.registry import CardState

__all__ = ["FaultControl"]

logger = logging.getLogger(__name__)


class FaultControl:
    """Fault handling of the broker (state lives on the broker: plan, route_faults, ...)."""

    def _drop_faults(self, device_id: int, client: bytes, route: bytes, body: bytes):
        """broker.route faults: drop the tasks a ``drop`` rule fires on (they never complete,
        as a lost message would leave them). Returns the body to forward, or None."""
        tasks = proto.unpack(body)
        if not isinstance(tasks, list):
            return body
        now_s = time.monotonic() - self.started_s
        kept = []
        for task in tasks:
            stream = task.get("s") if isinstance(task, dict) else None
            api = API_BY_TASK_KIND.get(task.get("k")) if isinstance(task, dict) else None
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

    def _drop_completions(self, device_id: int, rows: list) -> list:
        """broker.complete faults: the completion rows to forward. A dropped row's task ran on
        the card (its outputs are written) but its client never hears of it: a timed sync gets
        507046, as when a completion is lost on the way."""
        now_s = time.monotonic() - self.started_s
        kept = []
        for row in rows:
            stream = row[4] if isinstance(row, list) and len(row) > 4 else None
            fired = self.route_faults.evaluate("broker.complete", now_s, stream=stream,
                                               card=device_id)  # fmt: skip
            self.log_faults([f.event.to_dict() for f in fired])
            if any(f.kind == "drop" for f in fired):
                self.ledger.dropped_tasks(device_id, 1)
            else:
                kept.append(row)
        return kept

    def log_faults(self, events: list[dict]) -> None:
        if self.trace is not None:
            for event in events:
                self.trace.instant(
                    f"fault: {event['kind']}",
                    event.get("card", -1),
                    event.get("t_s", 0.0),
                    event,
                    since_start=True,
                )
        if self.metrics is not None:
            for event in events:
                self.metrics.fault(event.get("card", -1), event["kind"])
        if events and self.fault_log is None:
            self.fault_log = open(self.fault_log_path, "w", encoding="utf-8")  # noqa: SIM115
        for event in events:
            key = (event.get("rule", -1), event.get("card", -1))
            self.supervisor.fired[key] = self.supervisor.fired.get(key, 0) + 1
            self.fault_log.write(json.dumps(event, sort_keys=True) + "\n")
            self.fault_counts[event["kind"]] = self.fault_counts.get(event["kind"], 0) + 1
        if events:
            self.fault_log.flush()

    def inject(self, body: dict) -> dict:
        """``npufarm inject``: add a rule to the running farm (and to cards started later)."""
        try:
            rule = FaultRule.from_dict(body.get("rule"), label="injected fault")
        except NpuFarmError as exc:
            return {"code": ACL_ERROR_INVALID_PARAM, "error": str(exc)}
        self.plan = self.plan.with_rule(rule)
        self.supervisor.plan = self.plan
        rule_id = self.plan.rule_ids[-1]
        if rule.hook == "broker.route":
            if self.route_faults is None:
                self.route_faults = FaultInjector(FaultPlan(seed=self.plan.seed), BROKER)
            self.route_faults.add_rule(rule, rule_id)
        else:
            request = {"op": "inject", "rule": rule.to_dict(), "rule_id": rule_id}
            self._tell_cards(rule.card, request)
        logger.warning("fault injected at runtime: %s", rule.to_dict())
        return {"code": 0, "rule": rule_id}

    def recover(self, body: dict) -> dict:
        """``npufarm recover``: clear injected faults (of ``kinds``, or all)."""
        kinds = body.get("kinds") or None
        self.plan = self.plan.without(kinds)
        self.supervisor.plan = self.plan
        if self.route_faults is not None:
            self.route_faults.clear(kinds)
        self._tell_cards(None, {"op": "recover", "kinds": kinds})
        return {"code": 0}

    def _tell_cards(self, device_id: int | None, request: dict) -> None:
        for entry in self.registry.cards.values():
            if entry.identity is None or entry.state is not CardState.READY:
                continue
            if device_id is None or entry.device_id == device_id:
                self._send_card(entry.identity, Cmd.REQUEST, b"", proto.pack({"rid": 0, **request}))
