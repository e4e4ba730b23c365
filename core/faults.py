"""Fault injection as data: plans, rules, the per-card injector and the fault log (pure logic).

A :class:`FaultPlan` is a seed plus :class:`FaultRule` s. Each kind is evaluated at one hook point
(:data:`HOOKS`): ``card.execute`` (every task a card starts), ``card.heartbeat`` (every heartbeat
tick), ``card.malloc`` (every malloc) and ``broker.route`` (every task the broker routes). A
:class:`FaultInjector` holds the state of one card (or the broker, card ``-1``) for one epoch; the
caller asks it at every hook call which rules fire. Nothing here opens sockets or reads a clock:
every time is ``now_s``, seconds since the farm started.

Rules and plans (kinds, triggers, validation, the plan file) are :mod:`core.fault_plan`,
re-exported here.

Determinism: every hook has a private RNG seeded from ``[seed, card + 1, epoch, hook index]``,
and a draw is taken only for an armed, matching rule with probability < 1, so the draws (and the
call indexes) depend only on the workload. The fault log is JSONL, one :class:`FaultEvent` a line;
two runs with the same plan, seed and workload have equal :meth:`FaultEvent.replay_key` s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config_model import MAX_CARDS
from core.errors import ConfigError
from core.fault_plan import (
    API_BY_TASK_KIND,
    APIS,
    DEFAULT_CODES,
    HOOK_INDEX,
    HOOK_NAMES,
    HOOKS,
    KINDS,
    PATTERNS,
    FaultPlan,
    FaultRule,
    check_kinds,
)

__all__ = [
    "KINDS",
    "HOOKS",
    "HOOK_NAMES",
    "HOOK_INDEX",
    "DEFAULT_CODES",
    "APIS",
    "API_BY_TASK_KIND",
    "PATTERNS",
    "BROKER",
    "FaultRule",
    "FaultPlan",
    "FaultEvent",
    "Fired",
    "FaultInjector",
    "slow_factor",
    "corrupt_bytes",
    "read_fault_log",
]

logger = logging.getLogger(__name__)

BROKER = -1  # the ``card`` of the broker's injector
_CORRUPT_RNG_KEY = len(HOOK_NAMES)  # SeedSequence key of the corruption RNG


# --------------------------------------------------------------------------------------------
# the fault log


@dataclass(frozen=True)
class FaultEvent:
    """One line of the fault log."""

    t_s: float
    card: int
    epoch: int
    hook: str
    call_index: int
    kind: str
    code: int
    rule: int  # the rule's id in the farm's plan
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(t_s=round(self.t_s, 6), call=data.pop("call_index"), detail=dict(self.detail))
        return data

    def to_json_line(self) -> str:
        """One JSONL line (no newline), keys sorted."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultEvent:
        names = [f.name for f in dataclasses.fields(cls)]
        values = {n: data["call" if n == "call_index" else n] for n in names if n != "detail"}
        return cls(**values, detail=dict(data.get("detail", {})))

    @classmethod
    def from_json_line(cls, line: str) -> FaultEvent:
        return cls.from_dict(json.loads(line))

    def replay_key(self) -> tuple[Any, ...]:
        """Everything but ``t_s``: what two runs of the same plan and workload share."""
        fields = (self.card, self.epoch, self.hook, self.call_index, self.kind, self.code)
        return (*fields, self.rule, tuple(sorted(self.detail.items())))


def read_fault_log(path: str | Path) -> list[FaultEvent]:
    """The events of a JSONL fault log; a bad line is a :class:`ConfigError` naming it."""
    events: list[FaultEvent] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read fault log: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                events.append(FaultEvent.from_json_line(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: bad fault log line: {exc}") from None
    return events


# --------------------------------------------------------------------------------------------
# the injector


@dataclass(frozen=True)
class Fired:
    """A rule that fires at this call, and its log event."""

    rule_index: int  # the rule's id (== event.rule)
    rule: FaultRule
    event: FaultEvent

    @property
    def kind(self) -> str:
        return self.rule.kind

    @property
    def code(self) -> int:
        return self.event.code


@dataclass
class _RuleState:
    rule_id: int
    rule: FaultRule
    fired: int = 0
    first_s: float | None = None  # time of the first fire

    def window_start(self) -> float | None:
        return self.rule.at_s if self.rule.at_s is not None else self.first_s

    def expired(self, now_s: float) -> bool:
        start = self.window_start()
        duration_s = self.rule.duration_s
        return duration_s is not None and start is not None and now_s >= start + duration_s


class FaultInjector:
    """The fault state of one card (or the broker, card=-1) for one epoch."""

    def __init__(self, plan: FaultPlan, card: int, epoch: int = 0) -> None:
        if not isinstance(plan, FaultPlan):
            raise TypeError(f"plan: expected a FaultPlan, got {type(plan).__name__}")
        if not BROKER <= card < MAX_CARDS or epoch < 0:
            raise ValueError(f"card must be in -1..{MAX_CARDS - 1} and epoch >= 0")
        self.card = card
        self.epoch = epoch
        self.seed = plan.seed
        self._states = [_RuleState(i, r) for i, r in zip(plan.rule_ids, plan.rules)]
        self._next_id = max(plan.rule_ids, default=-1) + 1
        key = [plan.seed, card + 1, epoch]
        self._rngs = {hook: np.random.default_rng([*key, i]) for hook, i in HOOK_INDEX.items()}
        #: for :func:`corrupt_bytes`; separate so corruption does not shift the hooks' draws
        self.corrupt_rng = np.random.default_rng([*key, _CORRUPT_RNG_KEY])
        self.call_counts: dict[str, int] = dict.fromkeys(HOOK_NAMES, 0)

    @property
    def rules(self) -> dict[int, FaultRule]:
        """The live rules by id."""
        return {s.rule_id: s.rule for s in self._states}

    def evaluate(
        self,
        hook: str,
        now_s: float,
        *,
        stream: int | None = None,
        model: str | None = None,
        api: str | None = None,
        card: int | None = None,
    ) -> list[Fired]:
        """Count one call of ``hook`` and return the rules that fire now, in rule order.

        ``card`` is the target card at ``broker.route`` (default: this injector's card); a rule
        with a target the call does not have (e.g. ``stream`` when ``stream`` is None) does not
        match.
        """
        if hook not in HOOK_INDEX:
            raise ValueError(f"unknown hook {hook!r}; known: {', '.join(HOOK_NAMES)}")
        index = self.call_counts[hook]
        self.call_counts[hook] = index + 1
        target = self.card if card is None else card
        fired: list[Fired] = []
        for state in self._states:
            rule = state.rule
            if (
                rule.hook != hook
                or (rule.card is not None and rule.card != target)
                or (rule.stream is not None and rule.stream != stream)
                or (rule.model is not None and rule.model != model)
                or (rule.api is not None and rule.api != api)
                or (rule.at_s is not None and now_s < rule.at_s)
                or (rule.after_tasks is not None and index < rule.after_tasks)
                or (rule.count is not None and state.fired >= rule.count)
                or state.expired(now_s)
            ):
                continue
            if rule.probability < 1.0 and self._rngs[hook].random() >= rule.probability:
                continue
            state.fired += 1
            if state.first_s is None:
                state.first_s = now_s
            detail = _detail(rule, stream, model, api)
            event = FaultEvent(
                now_s,
                target,
                self.epoch,
                hook,
                index,
                rule.kind,
                rule.effective_code,
                state.rule_id,
                detail,
            )
            logger.debug("fault fired: %s", event.to_json_line())
            fired.append(Fired(state.rule_id, rule, event))
        return fired

    def has_hook(self, hook: str) -> bool:
        """Whether any rule of this injector is evaluated at ``hook`` (cheap; no call counted)."""
        return any(state.rule.hook == hook for state in self._states)

    def active(self, hook: str, now_s: float) -> list[FaultRule]:
        """Rules of ``hook`` in effect at ``now_s`` (no call is counted): fired at least once and
        sticky or inside their window. ``count`` limits fires, not the effect (a disconnect with
        ``count = 1, duration_s = 2`` keeps the link down for 2 s)."""
        if hook not in HOOK_INDEX:
            raise ValueError(f"unknown hook {hook!r}; known: {', '.join(HOOK_NAMES)}")
        return [
            s.rule
            for s in self._states
            if s.rule.hook == hook and s.fired > 0 and not s.expired(now_s)
        ]

    def add_rule(self, rule: FaultRule, rule_id: int | None = None) -> int:
        """Inject ``rule`` at runtime; returns its id (``rule_id``, e.g. the farm plan's, or the
        next free one)."""
        if not isinstance(rule, FaultRule):
            raise TypeError(f"rule: expected a FaultRule, got {type(rule).__name__}")
        if rule_id is None:
            rule_id = self._next_id
        if rule_id < 0 or rule_id in self.rules:
            raise ValueError(f"rule id {rule_id} is negative or already in use")
        self._states.append(_RuleState(rule_id, rule))
        self._next_id = max(self._next_id, rule_id + 1)
        logger.info(
            "card %d epoch %d: fault rule %d added: %s",
            self.card,
            self.epoch,
            rule_id,
            rule.to_dict(),
        )
        return rule_id

    def clear(self, kinds: Iterable[str] | None = None) -> int:
        """Remove the rules of ``kinds`` (None: all); their effect ends. Returns how many."""
        wanted = check_kinds(kinds)
        keep = [s for s in self._states if wanted is not None and s.rule.kind not in wanted]
        removed = len(self._states) - len(keep)
        self._states = keep
        if removed:
            logger.info("card %d epoch %d: %d fault rules cleared", self.card, self.epoch, removed)
        return removed


def _detail(rule: FaultRule, stream: int | None, model: str | None, api: str | None) -> dict:
    detail: dict[str, Any] = {}
    if rule.kind == "slow":
        detail["factor"] = rule.factor
    if rule.kind == "corrupt":
        detail["pattern"] = rule.pattern
    if rule.kind == "drop" and rule.message != "task":
        detail["message"] = rule.message
    if rule.duration_s is not None:
        detail["duration_s"] = rule.duration_s
    for key, value in (("stream", stream), ("model", model), ("api", api)):
        if value is not None:
            detail[key] = value
    if rule.name:
        detail["name"] = rule.name
    return detail


# --------------------------------------------------------------------------------------------
# applying faults


def slow_factor(fired: Iterable[Fired]) -> float:
    """The duration multiplier of a call: the product of the fired ``slow`` rules' factors."""
    return math.prod(f.rule.factor for f in fired if f.rule.kind == "slow")


def corrupt_bytes(
    view: np.ndarray, dtype: np.dtype, pattern: str, rng: np.random.Generator
) -> None:
    """Corrupt an output buffer in place.

    ``view`` is the output's bytes (uint8, writable), ``dtype`` its element type. ``bitflip``
    flips one random bit of one random byte; ``nan`` fills NaN for float dtypes (0xFF bytes
    otherwise, and for a tail shorter than an element); ``zero`` zeroes it; ``stale`` is a no-op
    here — the card applies it by not writing the task's outputs at all, leaving the old bytes.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown corrupt pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    if view.dtype != np.uint8 or not view.flags.writeable:
        raise ValueError(f"view must be a writable uint8 array, got {view.dtype}")
    if not view.flags.c_contiguous:
        raise ValueError("view must be contiguous (a copy would be corrupted, not the buffer)")
    flat = view.reshape(-1)
    if flat.size == 0 or pattern == "stale":
        return
    if pattern == "bitflip":
        byte = int(rng.integers(flat.size))
        flat[byte] ^= np.uint8(1 << int(rng.integers(8)))
    elif pattern == "zero":
        flat[:] = 0
    else:
        dtype = np.dtype(dtype)
        whole = flat.size - flat.size % dtype.itemsize if dtype.kind in "fc" else 0
        if whole:
            flat[:whole].view(dtype)[:] = np.nan
        flat[whole:] = 0xFF
