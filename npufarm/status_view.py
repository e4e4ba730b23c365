"""What ``npufarm status`` shows: the farm's own description (its STATUS reply), rendered as is.

Why a module of its own: status is what a user reads to decide whether a fault is the farm's or
theirs, so it must show what is true *now* and nothing stale. Each line here renders one field
of the broker's ``describe()`` and nothing is inferred: the card table (a card's loss text only
while it is lost or failed; a pid the broker does not know shows as ``-``), the task ledger, the
fault rules active now (``faults.active``; older farms: the rules of ``faults.plan``), the fault
events so far, what was reclaimed from clients that died (``reclaimed``) and the malformed
messages counted (``malformed``); the ledger line ends with the items of SUBMITs the cards
refused as malformed (``ledger.malformed``, never counted as tasks). Fields a farm does not
report are left out, not invented.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

__all__ = ["active_rules", "status_lines", "status_view"]

logger = logging.getLogger(__name__)

_DOWN_STATES = ("lost", "failed")  # the states a loss text belongs to
_RULE_HEAD = ("rule_id", "kind", "card", "fired")


def _mib(value: Any) -> str:
    return f"{int(value or 0) / (1 << 20):,.0f}"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def active_rules(faults: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The fault rules active now, each ``{"rule_id", "kind", "card", ...}``: the farm's
    ``faults.active`` when it reports one, else the rules of its plan; None when neither."""
    if isinstance(faults.get("active"), list):
        return [dict(r) for r in faults["active"] if isinstance(r, Mapping)]
    plan = faults.get("plan")
    if not isinstance(plan, Mapping) or not isinstance(plan.get("fault"), list):
        return None
    rules = plan["fault"]
    ids = plan.get("rule_ids") or list(range(len(rules)))
    return [{"rule_id": i, **r} for i, r in zip(ids, rules) if isinstance(r, Mapping)]


def _rule_text(rule: Mapping[str, Any]) -> str:
    """``#2 slow card 1: factor=3, api=execute`` (the rule's other fields as key=value)."""
    card = rule.get("card")
    where = "all cards" if card is None else ("broker" if card == -1 else f"card {card}")
    rest = ", ".join(f"{k}={v}" for k, v in rule.items() if k not in _RULE_HEAD)
    fired = rule.get("fired")
    fired = "" if fired is None else f" (fired {fired} time{'s' * (fired != 1)})"
    return (
        f"#{_dash(rule.get('rule_id'))} {rule.get('kind', '?')} {where}"
        + (f": {rest}" if rest else "")
        + fired
    )


def _counts_text(counts: Any, unit_keys: tuple[str, ...] = ("bytes",)) -> str:
    """``{"clients": 1, "hbm_bytes": 209715200}`` → ``clients 1, hbm 200 MiB``; a plain
    number as it is."""
    if not isinstance(counts, Mapping):
        return str(counts)
    parts = []
    for key, value in counts.items():
        if isinstance(value, Mapping):
            parts.append(f"{key} ({_counts_text(value)})")
        elif any(key.endswith(u) for u in unit_keys) and isinstance(value, int | float):
            parts.append(f"{key.removesuffix('_bytes')} {_mib(value)} MiB")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts) or "none"


_RECLAIM_KEYS = (
    "clients",
    "by_cause",
    "card_clients",
    "hbm_bytes",
    "models",
    "streams",
    "cards",
    "silence_limit_s",
)


def _reclaimed_text(reclaimed: Any) -> str:
    """``2 clients (exited 1, silent 1), HBM 200 MiB, 1 models, 3 streams; card 0: hbm 200 MiB,
    ...; a client silent 2 s is taken as dead`` (the broker's ``reclaimed``; other shapes
    generically)."""
    if not isinstance(reclaimed, Mapping):
        return str(reclaimed)
    parts = []
    if "clients" in reclaimed:
        n = reclaimed["clients"]
        causes = ", ".join(f"{k} {v}" for k, v in (reclaimed.get("by_cause") or {}).items() if v)
        parts.append(f"{n} client{'s' * (n != 1)}" + (f" ({causes})" if causes else ""))
    if "hbm_bytes" in reclaimed:
        parts.append(f"HBM {_mib(reclaimed['hbm_bytes'])} MiB")
    parts += [f"{reclaimed[k]} {k}" for k in ("models", "streams") if k in reclaimed]
    other = {k: v for k, v in reclaimed.items() if k not in _RECLAIM_KEYS}
    text = ", ".join(parts + ([_counts_text(other)] if other else []))
    cards = reclaimed.get("cards")
    if isinstance(cards, Mapping):
        busy = {c: v for c, v in cards.items() if isinstance(v, Mapping) and any(v.values())}
        text += "".join(f"; card {c}: {_counts_text(v)}" for c, v in busy.items())
    limit = reclaimed.get("silence_limit_s")
    if limit is not None:
        text += f"; a client silent {float(limit):g} s is taken as dead"
    return text or "none"


def status_lines(farm: Mapping[str, Any]) -> list[str]:
    """The lines under the card table: ledger, active fault rules, fault events, reclaimed
    resources, malformed messages (each only if the farm reports the field)."""
    lines = []
    ledger = farm.get("ledger")
    if ledger:
        failed = ", ".join(f"{code}×{n}" for code, n in ledger["failed"].items()) or "none"
        malformed = ledger.get("malformed")  # not tasks: taken back out of submitted
        lines.append(
            f"tasks: {ledger['submitted']} submitted, {ledger['completed']} completed, "
            f"failed {failed}, {ledger['dropped']} dropped, {ledger['in_flight']} in flight"
            + ("" if malformed is None else f"; {malformed} malformed items refused by the cards")
        )
    faults = farm.get("faults") or {}
    rules = active_rules(faults)
    if rules is not None:
        lines.append("active fault rules: " + ("none" if not rules else f"{len(rules)}"))
        lines += [f"  {_rule_text(r)}" for r in rules]
    counts = faults.get("counts")
    if counts:
        kinds = ", ".join(f"{k}×{n}" for k, n in sorted(counts.items()))
        lines.append(f"fault events so far: {kinds} (log: {faults.get('log')})")
    if "reclaimed" in farm:
        lines.append(f"reclaimed from dead clients: {_reclaimed_text(farm['reclaimed'])}")
    if "malformed" in farm:
        lines.append(f"malformed messages: {_counts_text(farm['malformed'])}")
    return lines


_COLUMNS = (
    "card",
    "pid",
    "epoch",
    "<state",
    "<soc",
    "HBM MiB",
    "streams",
    "queued",
    "running",
    "done",
    "failed",
)


def _card_row(card: Mapping[str, Any]) -> tuple[str, ...]:
    stats = card.get("stats") or {}
    return (
        str(card["device_id"]),
        _dash(card.get("pid")),
        str(card["epoch"]),
        card["state"],
        card.get("soc_name", ""),
        f"{_mib(stats.get('hbm_used', 0))}/{_mib(card.get('hbm_bytes', 0))}",
        *(str(stats.get(k, 0)) for k in ("streams", "queued", "running", "done", "failed")),
    )


def status_view(farm: Mapping[str, Any]) -> Group:
    """The status of a farm as a rich renderable: the card table (80 columns suffice), why each
    lost or failed card is down, then :func:`status_lines`."""
    table = Table(
        title=f"npufarm {farm['name']} at {farm['endpoint']} (pid {farm['pid']}, "
        f"up {farm['uptime_s']:.0f}s)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        show_edge=False,
        caption="HBM MiB: used/total; tasks: queued, running, done, failed "
        "on the card's current epoch",
        caption_justify="left",
    )
    for column in _COLUMNS:
        left = column.startswith("<")
        table.add_column(column.lstrip("<"), justify="left" if left else "right", no_wrap=True)
    down = []
    for card in farm["cards"]:
        table.add_row(*_card_row(card))
        if card.get("lost_reason") and card["state"] in _DOWN_STATES:
            down.append(f"card {card['device_id']} {card['state']}: {card['lost_reason']}")
    return Group(table, *(Text(line) for line in (*down, *status_lines(farm))))
