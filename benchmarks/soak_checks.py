"""The chaos soak's verdicts: pure functions from what was recorded to a list of violations.

Why pure and separate: a checker that cannot fail proves nothing. Each one here takes plain
data (the farm's ledger and loss lines, the fault log, the clients' journals, resource samples)
and is unit-tested with synthetic data that contains the violation it must find
(tests/unit/test_soak_checks.py).

Settled exactly once, with SIGKILLed clients: a killed client's ledger dies with it, so each
client journals, per iteration, the tasks it is about to submit (``intent``) and the tasks it did
submit (``sub``). For a killed session the farm saw between ``sub`` and ``intent`` of its tasks;
for a finished session exactly its ledger's ``submitted``. The farm ledger must fall inside the
sum of those bounds (equality when nothing was killed) and balance with nothing in flight.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.farm_probe import ledger_problems

__all__ = [
    "Session",
    "GrowthBounds",
    "check_ledgers",
    "check_losses",
    "check_wrong_outputs",
    "check_hbm_reclaimed",
    "check_growth",
    "check_same",
]

LOSS_KINDS = ("crash", "disconnect", "heartbeat_loss")


@dataclass
class Session:
    """One acl.init .. acl.finalize of a soak client, as its journal tells it."""

    client: int
    sid: int
    finished: bool = False  # acl.finalize ran and its ledger was journaled
    ledger: dict[str, Any] | None = None  # the client library's ledger at finalize
    intent: int = 0  # tasks it was about to submit (upper bound of what it sent)
    sub: int = 0  # tasks it did submit (lower bound)
    iterations: int = 0
    codes: Counter = field(default_factory=Counter)
    wrong: list[tuple[int, int]] = field(default_factory=list)  # (card, epoch) of bad outputs


def _failed_total(ledger: Mapping[str, Any]) -> int:
    return sum(int(n) for n in (ledger.get("failed") or {}).values())


def check_ledgers(farm: Mapping[str, Any], sessions: Iterable[Session]) -> list[str]:
    """Every task settled exactly once, farm and client ledgers agreeing."""
    problems = list(ledger_problems(farm))
    finished_submitted = finished_completed = 0
    killed_lower = killed_upper = 0
    for s in sessions:
        if s.finished and s.ledger is not None:
            led = s.ledger
            settled = led["completed"] + _failed_total(led) + led.get("abandoned", 0)
            if led["submitted"] != settled:
                problems.append(
                    f"client {s.client} session {s.sid}: submitted {led['submitted']} != "
                    f"completed + failed + abandoned {settled}"
                )
            if led["submitted"] != s.sub:
                problems.append(
                    f"client {s.client} session {s.sid}: library ledger says "
                    f"{led['submitted']} submitted, the client's journal {s.sub}"
                )
            finished_submitted += led["submitted"]
            finished_completed += led["completed"]
        else:
            killed_lower += s.sub
            killed_upper += s.intent
    lower, upper = finished_submitted + killed_lower, finished_submitted + killed_upper
    if not lower <= farm["submitted"] <= upper:
        problems.append(
            f"farm ledger submitted {farm['submitted']}, clients account for "
            f"{lower}..{upper} (finished sessions {finished_submitted}, killed "
            f"{killed_lower}..{killed_upper})"
        )
    if not finished_completed <= farm["completed"] <= finished_completed + killed_upper:
        problems.append(
            f"farm ledger completed {farm['completed']}, finished clients saw "
            f"{finished_completed} (+ at most {killed_upper} from killed ones)"
        )
    return problems


def check_losses(
    losses: Iterable[tuple[int, int, str]],
    fault_events: Iterable[Mapping[str, Any]],
    kills: Iterable[Mapping[str, Any]],
) -> tuple[list[str], list[dict[str, Any]]]:
    """Every loss the farm declared has a cause: a loss-kind fault event or a SIGKILL of that
    card's process, for the same (card, epoch); every SIGKILLed card and crash fault was
    declared lost. Returns (violations, the losses with their causes)."""
    causes: dict[tuple[int, int], list[str]] = {}
    for event in fault_events:
        if event.get("kind") in LOSS_KINDS:
            key = (int(event.get("card", -1)), int(event.get("epoch", -1)))
            causes.setdefault(key, []).append(f"fault {event['kind']}")
    for kill in kills:
        causes.setdefault((kill["card"], kill["epoch"]), []).append("SIGKILL")
    problems, explained = [], []
    declared = set()
    for card, epoch, reason in losses:
        declared.add((card, epoch))
        cause = causes.get((card, epoch))
        explained.append({"card": card, "epoch": epoch, "reason": reason, "cause": cause})
        if not cause:
            problems.append(f"card {card} epoch {epoch} declared lost ({reason}) with no cause")
    for kill in kills:
        if (kill["card"], kill["epoch"]) not in declared:
            problems.append(f"card {kill['card']} epoch {kill['epoch']} SIGKILLed, never lost")
    for event in fault_events:
        key = (int(event.get("card", -1)), int(event.get("epoch", -1)))
        if event.get("kind") == "crash" and key not in declared:
            problems.append(f"card {key[0]} epoch {key[1]} crashed by a fault, never lost")
    return problems, explained


def check_wrong_outputs(
    sessions: Iterable[Session], fault_events: Iterable[Mapping[str, Any]]
) -> list[str]:
    """No silent wrong data: per (card, epoch), outputs that verified wrong with a success code
    are at most the ``corrupt`` faults fired there."""
    corrupt = Counter(
        (int(e.get("card", -1)), int(e.get("epoch", -1)))
        for e in fault_events
        if e.get("kind") == "corrupt"
    )
    wrong = Counter(key for s in sessions for key in s.wrong)
    return [
        f"card {card} epoch {epoch}: {n} outputs wrong with code 0, "
        f"{corrupt[(card, epoch)]} corrupt faults fired there"
        for (card, epoch), n in sorted(wrong.items())
        if n > corrupt[(card, epoch)]
    ]


def check_hbm_reclaimed(
    samples: list[tuple[float, int]], deadline_s: float
) -> tuple[list[str], float | None]:
    """``samples``: (seconds since the last client was gone, HBM bytes used over all cards).
    HBM must reach 0 within ``deadline_s``. Returns (violations, when it reached 0)."""
    for t_s, used in samples:
        if used == 0:
            if t_s > deadline_s:
                return [f"HBM returned to 0 only after {t_s:.2f}s (bound {deadline_s:.2f}s)"], t_s
            return [], t_s
    last = samples[-1] if samples else (0.0, None)
    return [
        f"HBM used {last[1]} bytes {last[0]:.2f}s after the last client left "
        f"(bound {deadline_s:.2f}s)"
    ], None


@dataclass(frozen=True)
class GrowthBounds:
    """How much a resource may grow from the warmed-up start sample to the end sample."""

    shm_segments: int = 0  # /dev/shm npufarm segments (absolute growth)
    fds: int = 8  # per process
    threads: int = 2  # per process
    rss_ratio: float = 1.5  # per process: end <= max(start * ratio, start + rss_slack)
    rss_slack_bytes: int = 64 << 20

    def to_dict(self) -> dict[str, Any]:
        return {
            "shm_segments": f"+{self.shm_segments}",
            "fds_per_process": f"+{self.fds}",
            "threads_per_process": f"+{self.threads}",
            "rss_per_process": f"max(x{self.rss_ratio}, +{self.rss_slack_bytes >> 20} MiB)",
        }


def check_growth(
    start: Mapping[str, Any], end: Mapping[str, Any], bounds: GrowthBounds
) -> list[str]:
    """``start`` / ``end``: ``{"shm_segments": n, "procs": {name: {fds, threads, rss}}}``;
    processes are named by role (``broker``, ``card3``), so a restarted card is compared
    with the card it replaced."""
    problems = []
    if end["shm_segments"] > start["shm_segments"] + bounds.shm_segments:
        problems.append(f"/dev/shm segments grew {start['shm_segments']} -> {end['shm_segments']}")
    for name, was in start["procs"].items():
        now = end["procs"].get(name)
        if now is None:
            continue
        if now["fds"] > was["fds"] + bounds.fds:
            problems.append(f"{name}: fds grew {was['fds']} -> {now['fds']}")
        if now["threads"] > was["threads"] + bounds.threads:
            problems.append(f"{name}: threads grew {was['threads']} -> {now['threads']}")
        limit = max(was["rss"] * bounds.rss_ratio, was["rss"] + bounds.rss_slack_bytes)
        if now["rss"] > limit:
            problems.append(
                f"{name}: RSS grew {was['rss'] >> 20} -> {now['rss'] >> 20} MiB "
                f"(bound {int(limit) >> 20} MiB)"
            )
    return problems


def check_same(label: str, first: Any, second: Any) -> list[str]:
    """Two runs of something seeded must be equal."""
    return [] if first == second else [f"{label}: the same seed gave different results"]
