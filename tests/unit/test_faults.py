"""Unit tests for core.faults: plan parsing and validation, filtering, the injector's triggers,
determinism, targets, runtime inject/recover, the fault log and corruption patterns."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import ConfigError
from core.faults import (
    API_BY_TASK_KIND,
    APIS,
    BROKER,
    DEFAULT_CODES,
    HOOK_INDEX,
    HOOKS,
    KINDS,
    FaultEvent,
    FaultInjector,
    FaultPlan,
    FaultRule,
    corrupt_bytes,
    read_fault_log,
    slow_factor,
)

__all__: list[str] = []

FAULTS_DIR = Path(__file__).resolve().parents[2] / "configs" / "faults"
EXEC = "card.execute"
BEAT = "card.heartbeat"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def plan_of(*rules: FaultRule, seed: int = 0) -> FaultPlan:
    return FaultPlan(seed, rules)


def kinds_fired(injector: FaultInjector, hook: str, now_s: float, **target: Any) -> list[str]:
    return [f.kind for f in injector.evaluate(hook, now_s, **target)]


def fire_pattern(injector: FaultInjector, calls: int, hook: str = EXEC, **target: Any) -> list[int]:
    """Call indexes (among ``calls`` calls at t=1) at which something fired."""
    return [i for i in range(calls) if injector.evaluate(hook, 1.0, **target)]


# ------------------------------------------------------------------------------ constants


def test_every_kind_has_a_hook_and_a_default_code() -> None:
    assert KINDS == (
        "hang",
        "slow",
        "error",
        "crash",
        "disconnect",
        "heartbeat_loss",
        "drop",
        "corrupt",
        "ecc",
        "oom",
    )
    assert set(HOOKS) == set(KINDS) == set(DEFAULT_CODES)
    # every hook has kinds: one per kind, plus the drop of completions
    assert set(HOOKS.values()) | {"broker.complete"} == set(HOOK_INDEX)
    assert DEFAULT_CODES["error"] == 507015 and DEFAULT_CODES["ecc"] == 507054
    assert DEFAULT_CODES["oom"] == 207001 and DEFAULT_CODES["hang"] == 507014
    assert DEFAULT_CODES["crash"] == DEFAULT_CODES["disconnect"] == 507010
    assert DEFAULT_CODES["drop"] == DEFAULT_CODES["slow"] == DEFAULT_CODES["corrupt"] == 0
    assert set(API_BY_TASK_KIND.values()) == set(APIS) - {"malloc"}


# ------------------------------------------------------------------------------ plan files


def test_plan_from_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "plan.toml",
        """
        seed = 42
        [[fault]]
        kind = "slow"
        card = 1
        factor = 2.5
        duration_s = 3
        [[fault]]
        kind = "corrupt"
        stream = 4
        model = "matmul"
        api = "execute"
        pattern = "zero"
        at_s = 1
        after_tasks = 10
        probability = 0.5
        count = 2
        name = "z"
        """,
    )
    plan = FaultPlan.from_toml(path)
    assert plan.seed == 42 and plan.rule_ids == (0, 1)
    slow, corrupt = plan.rules
    assert slow == FaultRule("slow", card=1, factor=2.5, duration_s=3.0)
    assert isinstance(slow.duration_s, float) and not slow.sticky
    assert corrupt.pattern == "zero" and corrupt.at_s == 1.0 and corrupt.count == 2
    assert corrupt.hook == EXEC and corrupt.sticky and corrupt.effective_code == 0


def test_empty_plan_and_defaults(tmp_path: Path) -> None:
    assert FaultPlan.from_toml(write(tmp_path / "empty.toml", "")) == FaultPlan()
    crash = FaultRule("crash")
    assert crash.count == 1 and crash.effective_code == 507010
    assert FaultRule("disconnect").count == 1 and FaultRule("hang").count is None
    assert FaultRule("error", code=507011).effective_code == 507011


@pytest.mark.parametrize("name", ["straggler", "disconnect", "errors-1pct", "hang", "mixed"])
def test_example_plans_are_valid_for_four_cards(name: str) -> None:
    plan = FaultPlan.from_toml(FAULTS_DIR / f"{name}.toml")
    plan.check_card_count(4)
    assert plan.rules
    text = (FAULTS_DIR / f"{name}.toml").read_text()
    assert text.startswith("#")


def test_example_plan_contents() -> None:
    (slow,) = FaultPlan.from_toml(FAULTS_DIR / "straggler.toml").rules
    assert (slow.kind, slow.card, slow.factor, slow.sticky) == ("slow", 1, 4.0, True)
    (drop,) = FaultPlan.from_toml(FAULTS_DIR / "disconnect.toml").rules
    assert (drop.kind, drop.card, drop.at_s, drop.count) == ("disconnect", 3, 5.0, 1)
    errors = FaultPlan.from_toml(FAULTS_DIR / "errors-1pct.toml")
    (error,) = errors.rules
    assert errors.seed == 7 and (error.probability, error.code, error.api) == (
        0.01,
        507015,
        "execute",
    )
    (hang,) = FaultPlan.from_toml(FAULTS_DIR / "hang.toml").rules
    assert (hang.card, hang.after_tasks, hang.count) == (0, 9, 1)
    mixed = FaultPlan.from_toml(FAULTS_DIR / "mixed.toml")
    assert mixed.seed == 11
    assert [r.kind for r in mixed.rules] == ["error", "slow", "corrupt"]
    assert mixed.rules[0].probability == 0.02 and mixed.rules[2].pattern == "nan"


def test_plan_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml: fault plan not found"):
        FaultPlan.from_toml(missing)
    bad = write(tmp_path / "bad.toml", "seed = = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        FaultPlan.from_toml(bad)
    unreadable = tmp_path / "dir.toml"
    unreadable.mkdir()
    with pytest.raises(ConfigError, match="dir.toml: cannot read"):
        FaultPlan.from_toml(unreadable)
    field_error = write(tmp_path / "f.toml", "[[fault]]\nkind = 'slow'\n[[fault]]\nkind = 'x'\n")
    with pytest.raises(ConfigError, match=r"f.toml: fault\[0\].factor"):
        FaultPlan.from_toml(field_error)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({}, "missing 'kind'"),
        ({"kind": "slwo"}, "kind: must be one of .* \\(did you mean 'slow'\\?\\)"),
        ({"kind": 3}, "kind: expected a string"),
        ({"kind": "error", "probabilty": 0.1}, "unknown key 'probabilty' .*'probability'"),
        ({"kind": "error", "probability": 1.5}, "probability: must be in \\[0, 1\\]"),
        ({"kind": "error", "probability": -0.1}, "probability: must be in"),
        ({"kind": "error", "probability": "x"}, "probability: expected a number"),
        ({"kind": "error", "probability": float("nan")}, "probability: must be a finite"),
        ({"kind": "slow"}, "factor: kind 'slow' needs a duration multiplier > 1"),
        ({"kind": "slow", "factor": 0.5}, "factor: kind 'slow' needs"),
        ({"kind": "error", "factor": 2.0}, "factor: only kind 'slow'"),
        ({"kind": "corrupt", "pattern": "nans"}, "pattern: must be one of .*'nan'"),
        ({"kind": "error", "pattern": "nan"}, "pattern: only kind 'corrupt'"),
        ({"kind": "error", "code": "507015"}, "code: expected an integer"),
        ({"kind": "error", "code": 0}, "code: must be an ACL error code"),
        ({"kind": "slow", "factor": 2, "code": 1}, "code: only kinds"),
        ({"kind": "crash", "code": 507015}, "code: only kinds"),
        ({"kind": "error", "at_s": -1}, "at_s: must be >= 0"),
        ({"kind": "error", "after_tasks": -1}, "after_tasks: must be >= 0"),
        ({"kind": "error", "after_tasks": 1.5}, "after_tasks: expected an integer"),
        ({"kind": "error", "duration_s": 0}, "duration_s: must be > 0"),
        ({"kind": "error", "count": 0}, "count: must be >= 1"),
        ({"kind": "error", "card": 256}, "card: must be in 0..255"),
        ({"kind": "error", "card": True}, "card: expected an integer"),
        ({"kind": "error", "stream": -2}, "stream: must be >= 0"),
        ({"kind": "heartbeat_loss", "stream": 1}, "stream: kind 'heartbeat_loss' .*cannot target"),
        ({"kind": "oom", "model": "m"}, "model: kind 'oom' .*cannot target"),
        ({"kind": "error", "model": ""}, "model: must not be empty"),
        ({"kind": "error", "api": "exec"}, "api: must be one of .*'execute'"),
        ({"kind": "error", "api": "malloc"}, "api: kind 'error' .*needs a task api"),
        ({"kind": "oom", "api": "execute"}, "api: kind 'oom' .*needs 'malloc'"),
        ({"kind": "disconnect", "api": "execute"}, "api: kind 'disconnect' .*cannot target"),
        ({"kind": "error", "name": 5}, "name: expected a string"),
    ],
)
def test_rule_validation_names_the_field(rule: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=f"plan.toml: fault\\[0\\].*{expected}"):
        FaultPlan.from_dict({"fault": [rule]}, source="plan.toml: ")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"faults": []}, "unknown key 'faults' .*'fault'"),
        ({"seed": -1}, "seed: must be in 0"),
        ({"seed": "7"}, "seed: expected an integer"),
        ({"fault": {"kind": "error"}}, "fault: expected an array of tables"),
        ({"fault": ["error"]}, "fault\\[0\\]: expected a table"),
        ({"fault": [{"kind": "error"}], "rule_ids": [1, 1]}, "rule_ids: need 1 distinct"),
        ({"rule_ids": 3}, "rule_ids: expected a list"),
    ],
)
def test_plan_validation(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        FaultPlan.from_dict(data)


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="FaultRule.probability"):
        FaultRule("error", probability=2.0)
    with pytest.raises(ConfigError, match="FaultPlan.rules\\[0\\]: expected a FaultRule"):
        FaultPlan(0, ({"kind": "error"},))  # type: ignore[arg-type]
    assert FaultPlan(0, [FaultRule("error")]).rules == (FaultRule("error"),)  # type: ignore[arg-type]


def test_round_trip_and_json() -> None:
    plan = FaultPlan(
        9,
        (
            FaultRule("error", card=0, api="execute", probability=0.25, code=507011),
            FaultRule("corrupt", stream=3, pattern="stale", duration_s=2.0, name="c"),
            FaultRule("oom", api="malloc", after_tasks=5),
            FaultRule("drop", card=2, at_s=1.5, count=3),
        ),
    )
    data = json.loads(json.dumps(plan.to_dict()))
    assert FaultPlan.from_dict(data) == plan
    assert data["fault"][2] == {"kind": "oom", "api": "malloc", "after_tasks": 5}
    assert "rule_ids" not in data
    for rule in plan.rules:
        assert FaultRule.from_dict(rule.to_dict()) == rule
    card2 = plan.for_card(2)
    assert FaultPlan.from_dict(json.loads(json.dumps(card2.to_dict()))) == card2


def test_from_args_parses_cli_words() -> None:
    rule = FaultRule.from_args(["kind=slow", "card=1", "factor=4", "duration_s=2.5"])
    assert rule == FaultRule("slow", card=1, factor=4.0, duration_s=2.5)
    assert FaultRule.from_args(["kind=error", "code=0x7bcd7"]).code == 0x7BCD7
    with pytest.raises(ConfigError, match="expected key=value"):
        FaultRule.from_args(["kind"])
    with pytest.raises(ConfigError, match="inject.card: expected an integer"):
        FaultRule.from_args(["kind=error", "card=one"], label="inject")


# ------------------------------------------------------------------------------ plan editing


def test_for_card_and_for_broker_keep_rule_ids() -> None:
    plan = plan_of(
        FaultRule("error"),  # 0: every card
        FaultRule("slow", card=1, factor=2),  # 1
        FaultRule("drop", card=1),  # 2: broker
        FaultRule("heartbeat_loss", card=3),  # 3
        FaultRule("oom"),  # 4
    )
    assert plan.for_card(1).rule_ids == (0, 1, 4)
    assert plan.for_card(3).rule_ids == (0, 3, 4)
    assert plan.for_card(0).rules == (FaultRule("error"), FaultRule("oom"))
    assert plan.for_broker().rule_ids == (2,)
    injector = FaultInjector(plan.for_card(1), card=1)
    assert [f.event.rule for f in injector.evaluate(EXEC, 0.0)] == [0, 1]
    assert [f.rule_index for f in injector.evaluate("card.malloc", 0.0)] == [4]


def test_with_rule_without_and_card_count() -> None:
    plan = plan_of(FaultRule("error"), FaultRule("slow", card=5, factor=2))
    bigger = plan.with_rule(FaultRule("crash", card=0))
    assert bigger.rule_ids == (0, 1, 2) and plan.rule_ids == (0, 1)
    smaller = bigger.without({"slow"})
    assert smaller.rule_ids == (0, 2) and smaller.with_rule(FaultRule("oom")).rule_ids[-1] == 3
    assert bigger.without().rules == ()
    with pytest.raises(ConfigError, match="did you mean 'slow'"):
        plan.without({"slwo"})
    plan.check_card_count(6)
    with pytest.raises(ConfigError, match=r"fault\[1\].card: card 5 is out of range"):
        plan.check_card_count(4)


# ------------------------------------------------------------------------------ triggers


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


# ------------------------------------------------------------------------------ determinism


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


# ------------------------------------------------------------------------------ targets


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


# ------------------------------------------------------------------------------ the fault log


def test_event_json_line_and_replay_key(tmp_path: Path) -> None:
    injector = FaultInjector(plan_of(FaultRule("corrupt", pattern="nan", name="n")), 3, epoch=2)
    (fired,) = injector.evaluate(EXEC, 1.23456789, stream=5, api="execute")
    line = fired.event.to_json_line()
    data = json.loads(line)
    assert list(data) == ["call", "card", "code", "detail", "epoch", "hook", "kind", "rule", "t_s"]
    assert data == {
        "t_s": 1.234568,
        "card": 3,
        "epoch": 2,
        "hook": EXEC,
        "call": 0,
        "kind": "corrupt",
        "code": 0,
        "rule": 0,
        "detail": {"pattern": "nan", "stream": 5, "api": "execute", "name": "n"},
    }
    back = FaultEvent.from_json_line(line)
    assert back.replay_key() == fired.event.replay_key()
    later = FaultEvent(**{**back.__dict__, "t_s": 99.0})
    assert later.replay_key() == back.replay_key() and hash(later) != 0
    log = tmp_path / "faults.jsonl"
    log.write_text(line + "\n\n" + line + "\n")
    assert [e.replay_key() for e in read_fault_log(log)] == [back.replay_key()] * 2
    log.write_text("{}\n")
    with pytest.raises(ConfigError, match="faults.jsonl:1: bad fault log line"):
        read_fault_log(log)


# ------------------------------------------------------------------------------ corruption


def test_corrupt_bitflip_flips_one_bit() -> None:
    data = np.arange(64, dtype=np.uint8)
    view = data.copy()
    corrupt_bytes(view, np.dtype(np.float32), "bitflip", np.random.default_rng(1))
    diff = np.unpackbits(view ^ data)
    assert diff.sum() == 1


def test_corrupt_nan_zero_stale() -> None:
    floats = np.ones(8, dtype=np.float16)
    corrupt_bytes(floats.view(np.uint8), floats.dtype, "nan", np.random.default_rng(0))
    assert np.isnan(floats).all()
    odd = np.zeros(10, dtype=np.uint8)  # two float32 + a 2-byte tail
    corrupt_bytes(odd, np.dtype(np.float32), "nan", np.random.default_rng(0))
    assert np.isnan(odd[:8].view(np.float32)).all() and (odd[8:] == 0xFF).all()
    ints = np.arange(6, dtype=np.int32)
    corrupt_bytes(ints.view(np.uint8), ints.dtype, "nan", np.random.default_rng(0))
    assert (ints == -1).all()
    grid = np.full((4, 4), 7, dtype=np.uint8)
    corrupt_bytes(grid, np.dtype(np.uint8), "zero", np.random.default_rng(0))
    assert not grid.any()
    stale = np.full(16, 3, dtype=np.uint8)
    corrupt_bytes(stale, np.dtype(np.uint8), "stale", np.random.default_rng(0))
    assert (stale == 3).all()
    corrupt_bytes(np.zeros(0, np.uint8), np.dtype(np.float32), "bitflip", np.random.default_rng(0))


def test_corrupt_bytes_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown corrupt pattern"):
        corrupt_bytes(np.zeros(4, np.uint8), np.dtype(np.uint8), "flip", rng)
    with pytest.raises(ValueError, match="writable uint8"):
        corrupt_bytes(np.zeros(4, np.float32), np.dtype(np.float32), "zero", rng)
    frozen = np.zeros(4, np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable uint8"):
        corrupt_bytes(frozen, np.dtype(np.uint8), "zero", rng)
    with pytest.raises(ValueError, match="contiguous"):
        corrupt_bytes(np.zeros(8, np.uint8)[::2], np.dtype(np.uint8), "zero", rng)


def test_corrupt_rng_is_deterministic() -> None:
    views = []
    for _ in range(2):
        injector = FaultInjector(FaultPlan(seed=5), card=1, epoch=0)
        view = np.zeros(256, np.uint8)
        for _ in range(5):
            corrupt_bytes(view, np.dtype(np.float32), "bitflip", injector.corrupt_rng)
        views.append(view)
    assert np.array_equal(*views) and views[0].any()


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
