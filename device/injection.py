"""Injected faults on one card: what the card does when a fault plan's rule fires.

The decisions come from :class:`core.faults.FaultInjector` (pure, seeded per hook point); this
module turns the fired rules of a call into one effect, in a fixed precedence, and keeps the
fault events the card reports to the broker's fault log.

Precedence on one task: crash > error/ecc (fail with the code, no compute) > hang > slow and
corrupt (which combine). ``corrupt`` applies to the outputs of model executions.

The card's heartbeat keeper thread (device/heartbeat.py) evaluates the heartbeat hook while the
loop may evaluate others, so every call that touches the injector takes one lock; a card without
fault rules never takes it (``enabled`` is checked first).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.faults import (
    API_BY_TASK_KIND,
    FaultInjector,
    FaultPlan,
    FaultRule,
    Fired,
    slow_factor,
)

__all__ = ["TaskFault", "CardFaults"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskFault:
    """The effect of the faults fired on one task."""

    crash: bool = False
    fail_code: int = 0  # error / ecc: the task fails with this code, nothing is computed
    hang_s: float | None = None  # the task completes only after this long (None: no hang)
    hang_code: int = 0  # ...with this code (sticky hang: the device watchdog's code)
    slow_factor: float = 1.0
    corrupt: str | None = None  # pattern


class CardFaults:
    """Fault state of one card epoch; times are seconds since the farm started."""

    def __init__(
        self,
        plan: dict | None,
        device_id: int,
        epoch: int,
        farm_start_s: float,
        op_timeout_s: float,
    ) -> None:
        self.injector = FaultInjector(
            FaultPlan.from_dict(plan) if plan else FaultPlan(), device_id, epoch
        )
        self.farm_start_s = farm_start_s
        self.op_timeout_s = op_timeout_s
        self.events: list[dict[str, Any]] = []  # to report to the broker
        self.enabled = bool(self.injector.rules)
        self._lock = threading.Lock()

    def now_s(self) -> float:
        return time.monotonic() - self.farm_start_s

    def _record(self, fired: list[Fired]) -> None:
        for item in fired:
            self.events.append(item.event.to_dict())
            logger.info("fault injected: %s", item.event.to_json_line())

    def on_task(self, kind: str, stream: int, model: str | None) -> TaskFault | None:
        """Evaluate the ``card.execute`` hook for a task the card is about to start."""
        if not self.enabled:
            return None
        with self._lock:
            fired = self.injector.evaluate(
                "card.execute",
                self.now_s(),
                stream=stream,
                model=model,
                api=API_BY_TASK_KIND.get(kind),
            )
            self._record(fired)
        if not fired:
            return None
        kinds = {f.kind: f for f in fired}
        if "crash" in kinds:
            return TaskFault(crash=True)
        for kind_name in ("error", "ecc"):
            if kind_name in kinds:
                return TaskFault(fail_code=kinds[kind_name].code)
        if "hang" in kinds:
            rule = kinds["hang"].rule
            if rule.duration_s is not None:  # transient: stuck for a while, then completes
                return TaskFault(hang_s=rule.duration_s)
            return TaskFault(hang_s=self.op_timeout_s, hang_code=kinds["hang"].code)
        corrupt = kinds.get("corrupt")
        return TaskFault(
            slow_factor=slow_factor(fired),
            corrupt=corrupt.rule.pattern if corrupt is not None else None,
        )

    def on_malloc(self) -> int:
        """An injected out-of-memory code for this malloc, or 0."""
        if not self.enabled:
            return 0
        with self._lock:
            fired = self.injector.evaluate("card.malloc", self.now_s(), api="malloc")
            self._record(fired)
        return next((f.code for f in fired if f.kind == "oom"), 0)

    def on_heartbeat(self) -> tuple[bool, bool]:
        """(send this heartbeat?, is the link up?) at a heartbeat tick."""
        if not self.enabled:
            return True, True
        with self._lock:
            now_s = self.now_s()
            self._record(self.injector.evaluate("card.heartbeat", now_s))
            return self._heartbeat_state(now_s)

    def _heartbeat_state(self, now_s: float) -> tuple[bool, bool]:
        active = {r.kind for r in self.injector.active("card.heartbeat", now_s)}
        link_up = "disconnect" not in active
        return link_up and "heartbeat_loss" not in active, link_up

    def link_up(self) -> bool:
        if not self.enabled:
            return True
        with self._lock:
            return self._heartbeat_state(self.now_s())[1]

    def inject(self, rule: dict[str, Any], rule_id: int | None = None) -> int:
        parsed = FaultRule.from_dict(rule, label="injected fault")
        with self._lock:
            rule_id = self.injector.add_rule(parsed, rule_id)
            self.enabled = True
        return rule_id

    def recover(self, kinds: list[str] | None) -> int:
        with self._lock:
            removed = self.injector.clear(kinds)
            self.enabled = bool(self.injector.rules)
        return removed

    def take_events(self) -> list[dict[str, Any]]:
        with self._lock:
            events, self.events = self.events, []
        return events
