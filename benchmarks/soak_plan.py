"""The chaos soak's seeded schedule: the fault plan the farm starts with, and the runtime actions
(SIGKILLs of clients and cards, ``inject`` and ``recover``) with their times. Pure functions of
``(seed, duration, cards, clients)``.

Why separate: "the same seed gives the same fault log" is checkable only for what the seed
decides. The farm's live fault log also depends on which task reaches which card when (the
workload's timing), so the soak proves determinism where it can be exact: the schedule built
twice is identical, and the plan replayed through :class:`core.faults.FaultInjector` on a fixed
synthetic call sequence gives the same events twice (:func:`replay_keys`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.faults import HOOK_NAMES, FaultInjector, FaultPlan, FaultRule

__all__ = ["Action", "build_plan", "build_schedule", "replay_keys"]
WARMUP_FRACTION = 0.15  # no kills or injections before this share of the run
COOLDOWN_S = 10.0  # nor in the last seconds (the run drains and settles)


@dataclass(frozen=True)
class Action:
    """One runtime action: ``kill_client`` / ``kill_card`` (target = client slot / device id),
    ``inject`` (rule) or ``recover`` (kinds)."""

    t_s: float
    kind: str
    target: int = -1
    rule: dict[str, Any] | None = None
    kinds: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def build_plan(seed: int, cards: int) -> FaultPlan:
    """The mixed plan the farm starts with: rare execution errors and NaN outputs everywhere, a
    straggler, rare malloc OOM, one crash on a seeded card after a seeded task count, and rare
    dropped tasks on another card."""
    rng = np.random.default_rng([seed, 1])
    straggler, crasher, dropper = (int(c) for c in rng.choice(cards, 3, replace=False))
    rules = (
        FaultRule("error", api="execute", probability=0.01, name="exec-errors"),
        FaultRule("corrupt", api="execute", probability=0.01, pattern="nan", name="nan-outputs"),
        FaultRule("slow", card=straggler, factor=3.0, name="straggler"),
        FaultRule("oom", api="malloc", probability=0.01, name="malloc-oom"),
        FaultRule(
            "crash",
            card=crasher,
            api="execute",
            after_tasks=int(rng.integers(100, 400)),
            name="crash-once",
        ),
        FaultRule("drop", card=dropper, probability=0.001, name="lost-tasks"),
    )
    return FaultPlan(seed=seed, rules=rules)


def build_schedule(seed: int, duration_s: float, cards: int, clients: int) -> list[Action]:
    """Runtime actions, sorted by time: roughly one card kill, one client kill and one
    transient link fault per minute (at least one of each), and a ``recover`` of the
    straggler at 70% of the run."""
    rng = np.random.default_rng([seed, 2])
    start_s = duration_s * WARMUP_FRACTION
    end_s = max(start_s + 1.0, duration_s - COOLDOWN_S)
    per_kind = max(1, round(duration_s / 60.0))

    def times(count: int) -> list[float]:
        return [round(float(t), 3) for t in rng.uniform(start_s, end_s, count)]

    actions = [Action(t, "kill_card", int(rng.integers(cards))) for t in times(per_kind)]
    actions += [Action(t, "kill_client", int(rng.integers(clients))) for t in times(per_kind)]
    for t in times(per_kind):
        kind = ("heartbeat_loss", "disconnect")[int(rng.integers(2))]
        rule = {"kind": kind, "card": int(rng.integers(cards)), "duration_s": 1.0, "count": 1}
        actions.append(Action(t, "inject", rule=rule))
    actions.append(Action(round(duration_s * 0.7, 3), "recover", kinds=("slow",)))
    return sorted(actions, key=lambda a: (a.t_s, a.kind, a.target))


def replay_keys(plan: FaultPlan, cards: int, calls: int = 2000) -> list[tuple]:
    """The events ``plan`` fires on a fixed synthetic workload (every hook called ``calls``
    times per card, at fixed times), as :meth:`FaultEvent.replay_key` s."""
    keys: list[tuple] = []
    apis = {"card.execute": "execute", "card.malloc": "malloc", "broker.route": "execute"}
    for card in range(cards):
        injector = FaultInjector(plan.for_card(card), card, epoch=1)
        broker = FaultInjector(plan.for_broker(), -1, epoch=0)
        for index in range(calls):
            now_s = index * 0.01
            for hook in HOOK_NAMES:
                target = broker if hook.startswith("broker.") else injector
                api = apis.get(hook)
                stream = index % 3 if hook in ("card.execute", "broker.route") else None
                fired = target.evaluate(
                    hook,
                    now_s,
                    stream=stream,
                    model=None,
                    api=api,
                    card=card if hook.startswith("broker.") else None,
                )
                keys += [f.event.replay_key() for f in fired]
    return keys
