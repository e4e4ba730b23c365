"""Unit tests for core.faults plans: the kind/hook/code tables, plan files and the example
plans, rule and plan validation, round trips and CLI words, and per-card / broker plan editing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from core.faults import (
    API_BY_TASK_KIND,
    APIS,
    DEFAULT_CODES,
    HOOK_INDEX,
    HOOKS,
    KINDS,
    FaultInjector,
    FaultPlan,
    FaultRule,
)
from tests.unit.faults_helpers import EXEC, plan_of

__all__: list[str] = []


FAULTS_DIR = Path(__file__).resolve().parents[2] / "configs" / "faults"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------- constants


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


# ------------------------------------------------------------------------------------ plan files


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


# ---------------------------------------------------------------------------------- plan editing


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
