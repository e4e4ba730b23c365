"""Unit tests for core.faults.FaultInjector: triggers (time, call index, duration, count,
probability), determinism per plan/card/epoch and per hook, targets, runtime inject/recover, and
the broker's drop of completions at its own hook."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core.errors import ConfigError
from core.faults import BROKER, FaultEvent, FaultInjector, FaultPlan, FaultRule, slow_factor
from tests.unit.faults_helpers import BEAT, EXEC, plan_of

__all__: list[str] = []


def kinds_fired(injector: FaultInjector, hook: str, now_s: float, **target: Any) -> list[str]:
    return [f.kind for f in injector.evaluate(hook, now_s, **target)]


def fire_pattern(injector: FaultInjector, calls: int, hook: str = EXEC, **target: Any) -> list[int]:
    """Call indexes (among ``calls`` calls at t=1) at which something fired."""
    return [i for i in range(calls) if injector.evaluate(hook, 1.0, **target)]


# -------------------------------------------------------------------------------------- triggers


def test_call_index_counts_every_call_per_hook() -> None:
    injector = FaultInjector(plan_of(FaultRule("error", stream=9)), card=0)
    for _ in range(3):
        assert injector.evaluate(EXEC, 0.0, stream=1) == []
    injector.evaluate(BEAT, 0.0)
    assert injector.call_counts == {
        EXEC: 3,
        BEAT: 1,
        "card.malloc": 0,
        "broker.route": 0,
        "broker.complete": 0,
    }
    (fired,) = injector.evaluate(EXEC, 0.0, stream=9)
    assert fired.event.call_index == 3 and fired.code == 507015


def test_at_s_arms_from_that_time() -> None:
    injector = FaultInjector(plan_of(FaultRule("error", at_s=5.0)), card=0)
    assert kinds_fired(injector, EXEC, 4.999) == []
    assert kinds_fired(injector, EXEC, 5.0) == ["error"]
    assert kinds_fired(injector, EXEC, 100.0) == ["error"]  # sticky


def test_after_tasks_arms_from_that_call_index() -> None:
    injector = FaultInjector(plan_of(FaultRule("hang", after_tasks=9, count=1)), card=0)
    assert fire_pattern(injector, 30) == [9]


def test_after_tasks_and_at_s_together() -> None:
    injector = FaultInjector(plan_of(FaultRule("error", at_s=2.0, after_tasks=2)), card=0)
    assert [bool(injector.evaluate(EXEC, t)) for t in (0, 1, 2, 3)] == [False] * 2 + [True] * 2
    late = FaultInjector(plan_of(FaultRule("error", at_s=2.0, after_tasks=5)), card=0)
    assert [bool(late.evaluate(EXEC, t)) for t in range(7)] == [False] * 5 + [True] * 2


def test_duration_from_at_s() -> None:
    injector = FaultInjector(plan_of(FaultRule("heartbeat_loss", at_s=5.0, duration_s=2.0)), 1)
    fired = [t for t in np.arange(0, 10, 0.25) if injector.evaluate(BEAT, float(t))]
    assert fired == [t for t in np.arange(5.0, 7.0, 0.25)]


def test_duration_from_first_fire() -> None:
    rule = FaultRule("slow", factor=2, after_tasks=3, duration_s=1.0)
    injector = FaultInjector(plan_of(rule), card=0)
    times = [0.0, 0.5, 1.0, 1.2, 1.9, 2.1, 2.25, 2.3, 5.0]  # first fire at 1.2: until 2.2
    assert [bool(injector.evaluate(EXEC, t)) for t in times] == [
        False,
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_count_caps_fires() -> None:
    injector = FaultInjector(plan_of(FaultRule("error", count=3), FaultRule("crash")), card=0)
    results = [kinds_fired(injector, EXEC, 0.0) for _ in range(5)]
    assert results == [["error", "crash"], ["error"], ["error"], [], []]


def test_sticky_fires_on_every_matching_call() -> None:
    injector = FaultInjector(plan_of(FaultRule("heartbeat_loss", at_s=1.0)), card=2)
    assert [bool(injector.evaluate(BEAT, t / 4)) for t in range(12)] == [False] * 4 + [True] * 8
    hang = FaultInjector(plan_of(FaultRule("hang")), card=2)
    assert fire_pattern(hang, 20) == list(range(20))


def test_probability_frequency() -> None:
    injector = FaultInjector(plan_of(FaultRule("error", probability=0.1), seed=3), card=0)
    hits = len(fire_pattern(injector, 10_000))
    assert 800 < hits < 1200
    never = FaultInjector(plan_of(FaultRule("error", probability=0.0)), card=0)
    assert fire_pattern(never, 1000) == []


def test_active_tracks_windows_and_first_fire() -> None:
    plan = plan_of(
        FaultRule("disconnect", at_s=5.0, duration_s=2.0),
        FaultRule("heartbeat_loss", at_s=20.0),
    )
    injector = FaultInjector(plan, card=3)
    assert injector.active(BEAT, 5.5) == []  # not fired yet
    (fired,) = injector.evaluate(BEAT, 5.5)
    assert fired.kind == "disconnect" and fired.event.detail == {"duration_s": 2.0}
    assert injector.evaluate(BEAT, 6.0) == []  # count 1
    assert injector.active(BEAT, 6.9) == [plan.rules[0]]  # but the link stays down
    assert injector.active(BEAT, 7.0) == []
    assert injector.active(EXEC, 6.0) == []
    injector.evaluate(BEAT, 21.0)
    assert injector.active(BEAT, 1e9) == [plan.rules[1]]  # sticky
    assert injector.call_counts[BEAT] == 3  # active() counts no call
    with pytest.raises(ValueError, match="unknown hook"):
        injector.active("card.nope", 0.0)
    with pytest.raises(ValueError, match="unknown hook"):
        injector.evaluate("card.nope", 0.0)


# ----------------------------------------------------------------------------------- determinism


def run_workload(plan: FaultPlan, card: int = 0, epoch: int = 0) -> list[FaultEvent]:
    injector = FaultInjector(plan, card, epoch)
    events: list[FaultEvent] = []
    for i in range(2000):
        stream = i % 3
        api = "execute" if i % 2 else "memcpy_async"
        t_s = i * 0.001
        for fired in injector.evaluate(EXEC, t_s, stream=stream, api=api, model="matmul"):
            events.append(fired.event)
        if i % 10 == 0:
            events.extend(f.event for f in injector.evaluate(BEAT, t_s))
        if i % 7 == 0:
            events.extend(f.event for f in injector.evaluate("card.malloc", t_s, api="malloc"))
    return events


MIXED = plan_of(
    FaultRule("error", api="execute", probability=0.05),
    FaultRule("corrupt", pattern="nan", probability=0.02, stream=1),
    FaultRule("slow", factor=3.0, probability=0.1, duration_s=0.01),
    FaultRule("heartbeat_loss", probability=0.1),
    FaultRule("oom", probability=0.1),
    seed=11,
)


def test_same_plan_card_epoch_fire_identically() -> None:
    first, second = run_workload(MIXED, 1, 2), run_workload(MIXED, 1, 2)
    assert first and first == second
    assert [e.replay_key() for e in first] == [e.replay_key() for e in second]
    assert {e.kind for e in first} == {"error", "corrupt", "slow", "heartbeat_loss", "oom"}


def test_different_epoch_card_or_seed_differ() -> None:
    base = [e.replay_key()[2:] for e in run_workload(MIXED, 1, 2)]
    for other in (
        run_workload(MIXED, 1, 3),
        run_workload(MIXED, 2, 2),
        run_workload(FaultPlan(12, MIXED.rules), 1, 2),
    ):
        assert [e.replay_key()[2:] for e in other] != base


def test_hooks_draw_independently() -> None:
    """Heartbeat traffic does not change which tasks fail (one RNG per hook)."""
    plan = plan_of(
        FaultRule("error", probability=0.3), FaultRule("heartbeat_loss", probability=0.5)
    )
    quiet = FaultInjector(plan, card=0)
    busy = FaultInjector(plan, card=0)
    quiet_hits, busy_hits = [], []
    for i in range(300):
        quiet_hits.append(bool(quiet.evaluate(EXEC, 0.0)))
        for _ in range(i % 4):
            busy.evaluate(BEAT, 0.0)
        busy_hits.append(bool(busy.evaluate(EXEC, 0.0)))
    assert quiet_hits == busy_hits


def test_draws_only_for_matching_calls() -> None:
    """Calls a probability rule does not match consume no draws."""
    plan = plan_of(FaultRule("error", stream=5, probability=0.5))
    only = FaultInjector(plan, card=0)
    mixed = FaultInjector(plan, card=0)
    only_hits = [bool(only.evaluate(EXEC, 0.0, stream=5)) for _ in range(200)]
    mixed_hits = []
    for _ in range(200):
        mixed.evaluate(EXEC, 0.0, stream=1)
        mixed_hits.append(bool(mixed.evaluate(EXEC, 0.0, stream=5)))
    assert only_hits == mixed_hits and 50 < sum(only_hits) < 150


# --------------------------------------------------------------------------------------- targets


def test_targets_filter_calls() -> None:
    plan = plan_of(
        FaultRule("error", card=1),
        FaultRule("ecc", stream=2),
        FaultRule("hang", model="matmul"),
        FaultRule("corrupt", api="memcpy_async", pattern="zero"),
    )
    assert kinds_fired(FaultInjector(plan, 0), EXEC, 0.0) == []
    assert kinds_fired(FaultInjector(plan, 1), EXEC, 0.0) == ["error"]
    injector = FaultInjector(plan, 0)
    assert kinds_fired(injector, EXEC, 0.0, stream=2, api="execute") == ["ecc"]
    assert kinds_fired(injector, EXEC, 0.0, stream=3, model="matmul") == ["hang"]
    assert kinds_fired(injector, EXEC, 0.0, model="add", api="memcpy_async") == ["corrupt"]
    (fired,) = injector.evaluate(EXEC, 0.0, stream=2)
    assert fired.code == 507054 and fired.event.detail == {"stream": 2}


def test_broker_routes_by_target_card() -> None:
    plan = plan_of(FaultRule("drop", card=2, api="execute"), FaultRule("error"))
    broker = FaultInjector(plan.for_broker(), card=BROKER)
    assert broker.evaluate("broker.route", 0.0, card=1, api="execute") == []
    (fired,) = broker.evaluate("broker.route", 0.0, card=2, api="execute")
    assert fired.event.card == 2 and fired.event.rule == 0 and fired.code == 0
    assert fired.event.call_index == 1 and broker.evaluate(EXEC, 0.0) == []


def test_slow_factor_multiplies() -> None:
    plan = plan_of(FaultRule("slow", factor=2.0), FaultRule("error"), FaultRule("slow", factor=1.5))
    fired = FaultInjector(plan, 0).evaluate(EXEC, 0.0)
    assert slow_factor(fired) == pytest.approx(3.0)
    assert slow_factor([]) == 1.0
    assert fired[0].event.detail == {"factor": 2.0}


def test_drop_of_completions_is_evaluated_at_its_own_hook() -> None:
    rule = FaultRule(kind="drop", message="completion", card=1, stream=3)
    assert rule.hook == "broker.complete" and FaultRule(kind="drop").hook == "broker.route"
    assert FaultRule.from_dict(rule.to_dict()) == rule
    for bad, message in (
        ({"kind": "drop", "message": "reply"}, "message: must be one of task, completion"),
        ({"kind": "error", "message": "completion"}, "only kind 'drop' takes a message"),
        ({"kind": "drop", "message": "completion", "api": "execute"}, "cannot target a api"),
        ({"kind": "drop", "message": "completion", "model": "m"}, "cannot target a model"),
    ):
        with pytest.raises(ConfigError, match=message):
            FaultRule.from_dict(bad)
    broker = FaultInjector(FaultPlan(seed=1, rules=(rule,)), BROKER)
    assert broker.has_hook("broker.complete") and not broker.has_hook("broker.route")
    assert broker.evaluate("broker.complete", 0.0, card=1, stream=2) == []
    (fired,) = broker.evaluate("broker.complete", 0.0, card=1, stream=3)
    assert fired.event.hook == "broker.complete" and fired.event.detail["message"] == "completion"


# ------------------------------------------------------------------------------ inject / recover


def test_add_rule_and_clear() -> None:
    injector = FaultInjector(plan_of(FaultRule("error", card=0)), card=0)
    assert injector.add_rule(FaultRule("slow", factor=2.0)) == 1
    assert injector.add_rule(FaultRule("hang"), rule_id=7) == 7
    assert injector.add_rule(FaultRule("ecc")) == 8
    with pytest.raises(ValueError, match="already in use"):
        injector.add_rule(FaultRule("ecc"), rule_id=7)
    assert sorted(injector.rules) == [0, 1, 7, 8]
    assert [f.rule_index for f in injector.evaluate(EXEC, 0.0)] == [0, 1, 7, 8]
    assert injector.clear({"hang", "ecc"}) == 2
    assert kinds_fired(injector, EXEC, 0.0) == ["error", "slow"]
    assert injector.active(EXEC, 0.0) == [FaultRule("error", card=0), FaultRule("slow", factor=2)]
    assert injector.clear() == 2 and injector.clear() == 0
    assert injector.evaluate(EXEC, 0.0) == [] and injector.active(EXEC, 0.0) == []
    with pytest.raises(ConfigError, match="unknown fault kind"):
        injector.clear({"hnag"})
