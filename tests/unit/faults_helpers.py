"""Helpers shared by the core.faults unit tests (test_faults_*.py): the two hooks they call
most and a plan built from rules."""

from __future__ import annotations

from core.faults import FaultPlan, FaultRule

__all__ = ["BEAT", "EXEC", "plan_of"]

EXEC = "card.execute"
BEAT = "card.heartbeat"


def plan_of(*rules: FaultRule, seed: int = 0) -> FaultPlan:
    return FaultPlan(seed, rules)
