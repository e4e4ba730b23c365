"""Fault plans as data: the fault kinds, their hook points, rules, plans and their validation.

A :class:`FaultPlan` is a seed plus :class:`FaultRule` s. Each kind is evaluated at one hook point
(:data:`HOOKS`); :class:`core.faults.FaultInjector` evaluates a plan at run time, and
:mod:`core.faults` re-exports everything public here.

Triggers: ``at_s`` (armed from then on), ``after_tasks`` (armed from that 0-based call index of
the rule's hook on — every call counts, whatever its target) and ``probability`` (per armed,
matching call). ``duration_s`` makes a rule transient: it is in effect for that long from
``at_s`` (or from its first fire) and never fires again afterwards; without it a rule is sticky.
``count`` caps the number of fires (crash and disconnect default to 1).

``node`` (optional) names the node of a cluster a rule is for; a rule without it is for every
node. A node is known by several names (:func:`node_matches`): its farm's ``name`` and its host
name (what a farm checks against itself: :meth:`FaultPlan.for_node`), and, under Ray, the Ray
node id (or a prefix of it of at least :data:`NODE_ID_PREFIX` characters) and the Ray node name
(``ray start --node-name``, by default the node's IP). :func:`route_rules` deals rules to the
nodes they name, refusing a rule that names no node; the rule a farm receives has no ``node``.

Plan file shape (``configs/faults/*.toml``)::

    seed = 7
    [[fault]]
    kind = "error"          # hang slow error crash disconnect heartbeat_loss drop corrupt ecc oom
    card = 2                # targets (optional): card, stream, model, api
    api = "execute"
    probability = 0.01      # triggers (optional): at_s, after_tasks, probability
    code = 507015           # kind parameters: code, factor (slow), pattern (corrupt),
                            # message (drop: "task" | "completion")
    node = "node2"          # only on this node of a cluster (optional)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config_model import MAX_CARDS
from core.errors import (
    ACL_ERROR_RT_AICORE_EXCEPTION,
    ACL_ERROR_RT_AICORE_TIMEOUT,
    ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ConfigError,
)
from core.validate import (
    check_keys,
    check_table,
    hint,
    read_toml,
    to_float,
    to_int,
    to_str,
    type_error,
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
    "MESSAGES",
    "rule_hook",
    "FaultRule",
    "FaultPlan",
    "check_kinds",
    "NODE_ID_PREFIX",
    "node_matches",
    "route_rules",
]

logger = logging.getLogger(__name__)

HOOK_NAMES = ("card.execute", "card.heartbeat", "card.malloc", "broker.route", "broker.complete")
HOOK_INDEX: dict[str, int] = {hook: index for index, hook in enumerate(HOOK_NAMES)}
#: kind → the hook point where it is evaluated.
HOOKS: dict[str, str] = {
    "hang": "card.execute",
    "slow": "card.execute",
    "error": "card.execute",
    "crash": "card.execute",
    "disconnect": "card.heartbeat",
    "heartbeat_loss": "card.heartbeat",
    "drop": "broker.route",
    "corrupt": "card.execute",
    "ecc": "card.execute",
    "oom": "card.malloc",
}
KINDS = tuple(HOOKS)  # hang slow error crash disconnect heartbeat_loss drop corrupt ecc oom
#: kind → the ACL code an event reports when the rule sets none (0: no code of its own).
DEFAULT_CODES: dict[str, int] = {
    "hang": ACL_ERROR_RT_AICORE_TIMEOUT,  # when the card's watchdog ends the hung task
    "slow": 0,
    "error": ACL_ERROR_RT_AICORE_EXCEPTION,
    "crash": ACL_ERROR_RT_LOST_HEARTBEAT,
    "disconnect": ACL_ERROR_RT_LOST_HEARTBEAT,
    "heartbeat_loss": ACL_ERROR_RT_LOST_HEARTBEAT,
    "drop": 0,  # the task just never completes
    "corrupt": 0,
    "ecc": ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR,
    "oom": ACL_ERROR_RT_MEMORY_ALLOCATION,
}
APIS = ("execute", "memcpy_async", "memset_async", "record_event", "stream_wait_event", "malloc")
#: ``core.protocol.TaskKind`` value → the ``api`` name a rule targets.
API_BY_TASK_KIND: dict[str, str] = {
    "exec": "execute",
    "copy": "memcpy_async",
    "memset": "memset_async",
    "record": "record_event",
    "wait": "stream_wait_event",
}
PATTERNS = ("bitflip", "nan", "zero", "stale")
MESSAGES = ("task", "completion")  # what a ``drop`` rule drops
_CODED_KINDS = ("error", "ecc", "oom", "hang")
_ONCE_KINDS = ("crash", "disconnect")
_NO_TARGET_HOOKS = ("card.heartbeat", "card.malloc")  # no stream / model at these hooks
_MAX_CODE = 2**31 - 1
_MAX_SEED = 2**64 - 1


def rule_hook(kind: str, message: str = "task") -> str:
    """Where a rule is evaluated: :data:`HOOKS`, except a ``drop`` of completions."""
    return "broker.complete" if kind == "drop" and message == "completion" else HOOKS[kind]


# --------------------------------------------------------------------------------------------
# validation (core.validate's helpers, so messages read the same as the config's)


_RULE_TYPES = {
    **dict.fromkeys(("kind", "model", "api", "pattern", "message", "name", "node"), to_str),
    **dict.fromkeys(("card", "stream", "after_tasks", "count", "code"), to_int),
    **dict.fromkeys(("at_s", "probability", "duration_s", "factor"), to_float),
}


def _normalize_rule(values: Mapping[str, Any], label: str, text: bool = False) -> dict[str, Any]:
    """Type-convert and cross-check rule fields; raises :class:`ConfigError` naming the field.

    The checks run in a fixed order (kind and message, targets, triggers, kind parameters), so a
    rule with several problems always reports the same first one.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = None if value is None else _RULE_TYPES[key](f"{label}.{key}", value, text)

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{label}.{key}: {problem}")

    kind, hook = _check_kind(out, fail)
    _check_targets(out, kind, hook, fail)
    _check_triggers(out, kind, fail)
    _check_parameters(out, kind, fail)
    return out


_Fail = Callable[[str, str], ConfigError]


def _check_kind(out: Mapping[str, Any], fail: _Fail) -> tuple[str, str]:
    """The rule's kind and message; returns ``(kind, hook)``."""
    kind = out.get("kind")
    if kind not in KINDS:
        options = ", ".join(KINDS)
        raise fail("kind", f"must be one of {options}, got {kind!r}{hint(kind, KINDS)}")
    message = out.get("message", "task")
    if message not in MESSAGES:
        raise fail("message", f"must be one of {', '.join(MESSAGES)}, got {message!r}")
    if kind != "drop" and message != "task":
        raise fail("message", f"only kind 'drop' takes a message, not {kind!r}")
    return kind, rule_hook(kind, message)


def _check_targets(out: Mapping[str, Any], kind: str, hook: str, fail: _Fail) -> None:
    """card, stream, model and api: in range and meaningful at the rule's hook."""
    get = out.get
    if get("card") is not None and not 0 <= out["card"] < MAX_CARDS:
        raise fail("card", f"must be in 0..{MAX_CARDS - 1}, got {out['card']}")
    if hook == "broker.complete":  # a completion row names its task and stream, nothing else
        for key in ("model", "api"):
            if get(key) is not None:
                raise fail(key, f"a dropped completion cannot target a {key} (card, stream only)")
    for key in ("stream", "model"):
        if get(key) is not None and hook in _NO_TARGET_HOOKS:
            raise fail(key, f"kind {kind!r} (hook {hook}) cannot target a {key}")
    if get("stream") is not None and out["stream"] < 0:
        raise fail("stream", f"must be >= 0, got {out['stream']}")
    if get("model") is not None and not out["model"]:
        raise fail("model", "must not be empty")
    if get("node") is not None and not out["node"].strip():
        raise fail("node", "must not be empty (omit it for every node)")
    api = get("api")
    if api is not None:
        if api not in APIS:
            raise fail("api", f"must be one of {', '.join(APIS)}, got {api!r}{hint(api, APIS)}")
        if hook == "card.heartbeat":
            raise fail("api", f"kind {kind!r} (hook {hook}) cannot target an api")
        if (hook == "card.malloc") != (api == "malloc"):
            allowed = "'malloc'" if hook == "card.malloc" else "a task api, not 'malloc'"
            raise fail("api", f"kind {kind!r} (hook {hook}) needs {allowed}, got {api!r}")


def _check_triggers(out: dict[str, Any], kind: str, fail: _Fail) -> None:
    """at_s, after_tasks, probability, duration_s and count; defaults count for one-shot kinds."""
    get = out.get
    if get("at_s") is not None and out["at_s"] < 0:
        raise fail("at_s", f"must be >= 0, got {out['at_s']}")
    if get("after_tasks") is not None and out["after_tasks"] < 0:
        raise fail("after_tasks", f"must be >= 0, got {out['after_tasks']}")
    probability = get("probability", 1.0)
    if not 0.0 <= probability <= 1.0:
        raise fail("probability", f"must be in [0, 1], got {probability}")
    if get("duration_s") is not None and out["duration_s"] <= 0:
        raise fail(
            "duration_s", f"must be > 0 (omit it for a sticky fault), got {out['duration_s']}"
        )
    if get("count") is not None and out["count"] < 1:
        raise fail("count", f"must be >= 1, got {out['count']}")
    if get("count") is None and kind in _ONCE_KINDS:
        out["count"] = 1


def _check_parameters(out: Mapping[str, Any], kind: str, fail: _Fail) -> None:
    """code, factor and pattern: valid, and only on the kinds that take them."""
    get = out.get
    code = get("code")
    if code is not None:
        if kind not in _CODED_KINDS:
            raise fail("code", f"only kinds {', '.join(_CODED_KINDS)} take a code, not {kind!r}")
        if not 0 < code <= _MAX_CODE:
            raise fail("code", f"must be an ACL error code in 1..{_MAX_CODE}, got {code}")
    factor = get("factor", 1.0)
    if kind == "slow" and not factor > 1.0:
        raise fail("factor", f"kind 'slow' needs a duration multiplier > 1, got {factor}")
    if kind != "slow" and factor != 1.0:
        raise fail("factor", f"only kind 'slow' takes a factor, not {kind!r}")
    pattern = get("pattern", "bitflip")
    if pattern not in PATTERNS:
        options = ", ".join(PATTERNS)
        raise fail("pattern", f"must be one of {options}, got {pattern!r}{hint(pattern, PATTERNS)}")
    if kind != "corrupt" and pattern != "bitflip":
        raise fail("pattern", f"only kind 'corrupt' takes a pattern, not {kind!r}")


# --------------------------------------------------------------------------------------------
# rules and plans


@dataclass(frozen=True)
class FaultRule:
    """One fault: kind, targets (None = any), triggers, transient/sticky and kind parameters."""

    kind: str
    card: int | None = None  # device id
    stream: int | None = None  # stream id as the client sees it
    model: str | None = None  # ModelSpec.name
    api: str | None = None  # one of APIS
    at_s: float | None = None  # armed from this time on (since farm start)
    after_tasks: int | None = None  # armed from this call index of the hook on
    probability: float = 1.0
    duration_s: float | None = None  # transient; None = sticky
    count: int | None = None  # max fires (crash / disconnect: 1)
    code: int | None = None  # error / ecc / oom / hang; None = DEFAULT_CODES
    factor: float = 1.0  # slow: duration multiplier (> 1)
    pattern: str = "bitflip"  # corrupt: bitflip | nan | zero | stale
    message: str = "task"  # drop: the "task" (never delivered) or its "completion" (never heard)
    name: str = ""
    node: str | None = None  # only on this node of a cluster (see node_matches); None = all

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in _normalize_rule(values, "FaultRule").items():
            object.__setattr__(self, key, value)

    @property
    def hook(self) -> str:
        return rule_hook(self.kind, self.message)

    @property
    def sticky(self) -> bool:
        return self.duration_s is None

    @property
    def effective_code(self) -> int:
        return DEFAULT_CODES[self.kind] if self.code is None else self.code

    def to_dict(self) -> dict[str, Any]:
        """Plain form without the fields left at their defaults (``kind`` always present)."""
        defaults = FaultRule.__dataclass_fields__
        data = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "kind" and value != defaults[f.name].default:
                data[f.name] = value
        return data

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, label: str = "FaultRule", text: bool = False
    ) -> FaultRule:
        """Inverse of :meth:`to_dict`; ``text`` accepts numbers as strings (CLI input)."""
        table = check_table(data, label)
        check_keys(table, tuple(_RULE_TYPES), label)
        if "kind" not in table:
            raise ConfigError(f"{label}: missing 'kind' (one of {', '.join(KINDS)})")
        return cls(**_normalize_rule(table, label, text))

    @classmethod
    def from_args(cls, items: Sequence[str], *, label: str = "fault") -> FaultRule:
        """A rule from ``key=value`` words, e.g. ``["kind=slow", "card=1", "factor=4"]``."""
        table: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{label}: expected key=value, got {item!r}")
            table[key.strip()] = value
        return cls.from_dict(table, label=label, text=True)


@dataclass(frozen=True)
class FaultPlan:
    """A seed plus rules. ``rule_ids`` (default ``0..n-1``) keep farm-wide rule numbers in the
    fault log when a plan is filtered (:meth:`for_card`) or edited (:meth:`without`)."""

    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    rule_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        seed = _check_seed("FaultPlan.seed", self.seed)
        if not isinstance(self.rules, list | tuple):
            raise type_error("FaultPlan.rules", "a tuple of FaultRule", self.rules)
        for index, rule in enumerate(self.rules):
            if not isinstance(rule, FaultRule):
                raise type_error(f"FaultPlan.rules[{index}]", "a FaultRule", rule)
        ids = tuple(
            to_int(f"FaultPlan.rule_ids[{i}]", v, False) for i, v in enumerate(self.rule_ids)
        ) or tuple(range(len(self.rules)))
        if len(ids) != len(self.rules) or len(set(ids)) != len(ids) or min(ids, default=0) < 0:
            raise ConfigError(
                f"FaultPlan.rule_ids: need {len(self.rules)} distinct ids >= 0, got {list(ids)}"
            )
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "rule_ids", ids)

    @classmethod
    def from_toml(cls, path: str | Path) -> FaultPlan:
        """Load ``seed = N`` and ``[[fault]]`` tables; every problem is a :class:`ConfigError`."""
        source = str(path)
        raw = read_toml(path, source, "fault plan")
        plan = cls.from_dict(raw, source=f"{source}: ")
        logger.debug("loaded fault plan %s: seed %d, %d rules", source, plan.seed, len(plan.rules))
        return plan

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "FaultPlan.") -> FaultPlan:
        """Inverse of :meth:`to_dict`; ``source`` prefixes every error label."""
        table = check_table(data, source.rstrip(":. ") or "FaultPlan")
        check_keys(table, ("seed", "fault", "rule_ids"), source.rstrip(":. ") or "FaultPlan")
        seed = _check_seed(f"{source}seed", table.get("seed", 0))
        entries = table.get("fault", [])
        if not isinstance(entries, list | tuple):
            raise type_error(f"{source}fault", "an array of tables [[fault]]", entries)
        rules = tuple(
            FaultRule.from_dict(entry, label=f"{source}fault[{index}]")
            for index, entry in enumerate(entries)
        )
        ids = table.get("rule_ids", ())
        if not isinstance(ids, list | tuple):
            raise type_error(f"{source}rule_ids", "a list of integers", ids)
        return cls(seed, rules, tuple(ids))

    def to_dict(self) -> dict[str, Any]:
        """``{"seed", "fault": [rule dicts]}`` (+ ``rule_ids`` when not ``0..n-1``)."""
        data: dict[str, Any] = {"seed": self.seed, "fault": [r.to_dict() for r in self.rules]}
        if self.rule_ids != tuple(range(len(self.rules))):
            data["rule_ids"] = list(self.rule_ids)
        return data

    def _select(self, keep: Iterable[bool]) -> FaultPlan:
        pairs = [(i, r) for i, r, k in zip(self.rule_ids, self.rules, keep) if k]
        return FaultPlan(self.seed, tuple(r for _, r in pairs), tuple(i for i, _ in pairs))

    def for_card(self, device_id: int) -> FaultPlan:
        """The rules card ``device_id`` evaluates (its own and untargeted card-hook rules)."""
        return self._select(
            r.hook.startswith("card.") and r.card in (None, device_id) for r in self.rules
        )

    def for_broker(self) -> FaultPlan:
        """The rules the broker evaluates (``broker.*`` hooks, any target card)."""
        return self._select(r.hook.startswith("broker.") for r in self.rules)

    def with_rule(self, rule: FaultRule) -> FaultPlan:
        """This plan plus ``rule`` (runtime injection); its id is ``rule_ids[-1]``."""
        next_id = max(self.rule_ids, default=-1) + 1
        return FaultPlan(self.seed, (*self.rules, rule), (*self.rule_ids, next_id))

    def without(self, kinds: Iterable[str] | None = None) -> FaultPlan:
        """This plan minus the rules of ``kinds`` (None: all of them); ids are kept."""
        wanted = check_kinds(kinds)
        return self._select(wanted is not None and r.kind not in wanted for r in self.rules)

    def for_node(self, names: Iterable[str]) -> FaultPlan:
        """The rules of a node known by ``names`` (its farm name, host name, ...): those without
        a ``node`` and those naming it (:func:`node_matches`), without their ``node`` field;
        rule ids are kept."""
        names = tuple(names)
        keep = [r.node is None or node_matches(r.node, names) for r in self.rules]
        plan = self._select(keep)
        rules = tuple(dataclasses.replace(r, node=None) for r in plan.rules)
        return FaultPlan(plan.seed, rules, plan.rule_ids)

    def check_card_count(self, count: int) -> None:
        """:class:`ConfigError` if a rule targets a card a ``count``-card farm does not have."""
        for rule_id, rule in zip(self.rule_ids, self.rules):
            if rule.card is not None and rule.card >= count:
                raise ConfigError(
                    f"fault[{rule_id}].card: card {rule.card} is out of range for a "
                    f"{count}-card farm (0..{count - 1})"
                )


def _check_seed(label: str, value: object) -> int:
    seed = to_int(label, value, False)
    if not 0 <= seed <= _MAX_SEED:
        raise ConfigError(f"{label}: must be in 0..{_MAX_SEED}, got {seed}")
    return seed


def check_kinds(kinds: Iterable[str] | None) -> set[str] | None:
    """``kinds`` as a set (None: all kinds, kept None); an unknown kind is a ConfigError."""
    if kinds is None:
        return None
    wanted = set(kinds)
    for kind in sorted(wanted):
        if kind not in KINDS:
            raise ConfigError(f"kind: unknown fault kind {kind!r}{hint(kind, KINDS)}")
    return wanted


NODE_ID_PREFIX = 8  # a Ray node id may be abbreviated to this many leading characters


def node_matches(node: str, names: Iterable[str]) -> bool:
    """Whether a rule's ``node`` names a node known by ``names``: equal to one of them, or (for
    a Ray node id among them) a prefix of at least :data:`NODE_ID_PREFIX` characters."""
    node = node.strip()
    for name in names:
        if not name:
            continue
        if node == name or (len(node) >= NODE_ID_PREFIX and name.startswith(node)):
            return True
    return False


def route_rules(
    rules: Iterable[FaultRule], nodes: Mapping[str, Iterable[str]]
) -> dict[str, list[FaultRule]]:
    """Deal ``rules`` to ``nodes`` (node key -> the names it is known by): a rule without a
    ``node`` goes to every node, one with it to the nodes it matches, without its ``node`` (what
    that node's farm is given). A rule that matches no node is a :class:`ConfigError`, naming
    the nodes there are."""
    nodes = {key: tuple(names) for key, names in nodes.items()}
    routed: dict[str, list[FaultRule]] = {key: [] for key in nodes}
    for rule in rules:
        targets = [
            k for k, names in nodes.items() if rule.node is None or node_matches(rule.node, names)
        ]
        if not targets:
            known = "; ".join(", ".join(n for n in names if n) for names in nodes.values())
            raise ConfigError(f"fault.node: {rule.node!r} names no node of the cluster ({known})")
        for key in targets:
            routed[key].append(dataclasses.replace(rule, node=None))
    return routed
