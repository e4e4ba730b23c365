"""The broker's table of cards: pure state, every decision a function of (state, event, now).

Card states::

    STARTING --READY--> READY --sentinel / heartbeat expiry--> LOST --restart--> STARTING (epoch+1)
                                                                 \\--flapping--> FAILED
    any --shutdown--> STOPPED

The socket loop (``farm.broker``) feeds events in and carries the returned decisions out; tests
drive it with a fake clock.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from core.protocol import pack_route

__all__ = ["CardState", "CardEntry", "Registry", "RECLAIM_KEYS"]

logger = logging.getLogger(__name__)


#: cumulative counters a card reports in its heartbeat stats when it reclaims a client's
#: resources (the broker sums them over the card's epochs, farm-wide and per card)
RECLAIM_KEYS = ("reclaimed_clients", "reclaimed_hbm_bytes", "reclaimed_models", "reclaimed_streams")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CardState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    LOST = "lost"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class CardEntry:
    device_id: int
    epoch: int
    state: CardState = CardState.STARTING
    pid: int = 0  # 0: no process (not spawned yet, or gone)
    spawned_s: float | None = None  # when this epoch's process was started (None: queued)
    identity: bytes | None = None
    shm_name: str = ""
    hbm_bytes: int = 0
    soc_name: str = ""
    last_seen_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    lost_reason: str = ""
    restarts: deque[float] = field(default_factory=deque)
    reclaimed_before: dict[str, int] = field(default_factory=dict)  # earlier epochs' counts

    @property
    def route(self) -> bytes:
        return pack_route(self.device_id, self.epoch)

    def reclaimed(self) -> dict[str, int]:
        """What this card reclaimed from departed clients, over all its epochs."""
        totals = {}
        for key in RECLAIM_KEYS:
            value = self.stats.get(key, 0)
            current = value if _is_int(value) and value >= 0 else 0
            totals[key.removeprefix("reclaimed_")] = self.reclaimed_before.get(key, 0) + current
        return totals

    def describe(self) -> dict[str, Any]:
        down = self.state in (CardState.LOST, CardState.FAILED, CardState.STOPPED)
        return {
            "device_id": self.device_id,
            "epoch": self.epoch,
            "state": self.state.value,
            "pid": None if down or not self.pid else self.pid,
            "shm_name": self.shm_name,
            "hbm_bytes": self.hbm_bytes,
            "soc_name": self.soc_name,
            "lost_reason": self.lost_reason if self.state in _DOWN_WITH_REASON else "",
            "stats": dict(self.stats),
            "reclaimed": self.reclaimed(),
        }


_DOWN_WITH_REASON = (CardState.LOST, CardState.FAILED)


class Registry:
    """Cards by device id, plus the route table the broker's hot path reads."""

    def __init__(self, device_ids: list[int]) -> None:
        self.cards: dict[int, CardEntry] = {d: CardEntry(d, 0) for d in device_ids}
        self.by_identity: dict[bytes, CardEntry] = {}
        self.routes: dict[bytes, bytes] = {}  # route frame -> card identity (READY cards only)

    def all_ready(self) -> bool:
        return all(c.state is CardState.READY for c in self.cards.values())

    def starting(self, device_id: int, pid: int, now: float) -> CardEntry:
        """A (new) process for ``device_id`` was started: next epoch, fresh state."""
        old = self.cards[device_id]
        entry = CardEntry(device_id, old.epoch + 1, pid=pid, last_seen_s=now)
        entry.restarts = old.restarts
        entry.reclaimed_before = dict(zip(RECLAIM_KEYS, old.reclaimed().values()))
        self._unroute(old)
        self.cards[device_id] = entry
        return entry

    def on_ready(self, identity: bytes, body: dict[str, Any], now: float) -> CardEntry | None:
        """A card announced itself. None if it is not the epoch we are waiting for, or if the
        announcement is malformed (the body comes off the wire: any type may be anywhere)."""
        device_id = body.get("device_id")
        if not _is_int(device_id):
            return None
        entry = self.cards.get(device_id)
        if (
            entry is None
            or entry.state is not CardState.STARTING
            or entry.epoch < 1  # never started: nothing can be announcing itself yet
            or not _is_int(body.get("epoch"))
            or body["epoch"] != entry.epoch
        ):
            return None
        shm_name = body.get("shm_name", "")
        hbm_bytes = body.get("hbm_bytes", 0)
        soc_name = body.get("soc_name", "")
        if not (isinstance(shm_name, str) and _is_int(hbm_bytes) and isinstance(soc_name, str)):
            return None
        entry.state = CardState.READY
        entry.identity = identity
        entry.shm_name = shm_name
        entry.hbm_bytes = hbm_bytes
        entry.soc_name = soc_name
        entry.last_seen_s = now
        pid = body.get("pid")
        if not entry.pid and _is_int(pid) and pid > 0:  # READY can overtake the spawner's adopt
            entry.pid = pid  # (shown in the state file; adopt_spawned sets the same pid)
        self.by_identity[identity] = entry
        self.routes[entry.route] = identity
        return entry

    def on_seen(self, identity: bytes, now: float) -> CardEntry | None:
        entry = self.by_identity.get(identity)
        if entry is not None and entry.state is CardState.READY:
            entry.last_seen_s = now
            return entry
        return None

    def expired(self, now: float, expiry_s: float) -> list[CardEntry]:
        """READY cards silent for longer than ``expiry_s``."""
        return [
            c
            for c in self.cards.values()
            if c.state is CardState.READY and now - c.last_seen_s > expiry_s
        ]

    def start_expired(self, now: float, start_timeout_s: float) -> list[CardEntry]:
        """STARTING cards whose process was started longer than ``start_timeout_s`` ago and
        never announced itself (a card that hangs while starting)."""
        return [
            c
            for c in self.cards.values()
            if c.state is CardState.STARTING
            and c.spawned_s is not None
            and now - c.spawned_s > start_timeout_s
        ]

    def mark_lost(self, device_id: int, reason: str, now: float) -> CardEntry | None:
        """Declare a card lost. None if it was not live (already lost, failed or stopped)."""
        entry = self.cards[device_id]
        if entry.state not in (CardState.READY, CardState.STARTING):
            return None
        entry.state = CardState.LOST
        entry.lost_reason = reason
        self._unroute(entry)
        return entry

    def may_restart(self, device_id: int, now: float, restart_max: int, window_s: float) -> bool:
        """Record a restart attempt; False (and FAILED) once the card flaps past the budget."""
        entry = self.cards[device_id]
        if entry.state is CardState.FAILED:
            return False
        while entry.restarts and now - entry.restarts[0] > window_s:
            entry.restarts.popleft()
        if len(entry.restarts) >= restart_max:
            entry.state = CardState.FAILED
            entry.lost_reason = f"restarted {len(entry.restarts)} times within {window_s:g}s"
            return False
        entry.restarts.append(now)
        return True

    def stop_all(self) -> None:
        for entry in self.cards.values():
            self._unroute(entry)
            entry.state = CardState.STOPPED

    def _unroute(self, entry: CardEntry) -> None:
        self.routes.pop(entry.route, None)
        if entry.identity is not None:
            self.by_identity.pop(entry.identity, None)
