"""The farm's task ledger: every task routed to a card ends in exactly one counter.

``submitted = completed + sum(failed) + dropped + in flight`` at every moment; after a run has
drained, in flight is 0. A card lost with tasks in flight fails them with 507010 here, exactly
as the client fails them when it hears of the loss, so the two ledgers agree.

The broker counts a SUBMIT from its msgpack array header (it never decodes the hot path's
bodies), so a header can claim tasks no card will ever complete (``[5]``, or a bare header of
65,535). The card answers every task with an int ``t`` (completed, or failed with a code) and
reports how many of a batch it could not answer at all; those are taken back out of submitted
and in flight and counted as ``malformed``: they never were tasks.
"""

from __future__ import annotations

from typing import Any

from core.errors import ACL_ERROR_RT_LOST_HEARTBEAT, ACL_SUCCESS

__all__ = ["FarmLedger"]


class FarmLedger:
    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.dropped = 0
        self.malformed = 0  # header-counted items the card refused (no task id, undecodable)
        self.failed: dict[int, int] = {}
        self.in_flight: dict[int, int] = {}  # device id -> tasks routed, not yet ended

    def routed(self, device_id: int, count: int) -> None:
        self.submitted += count
        self.in_flight[device_id] = self.in_flight.get(device_id, 0) + count

    def ended(self, device_id: int, codes: list[int]) -> None:
        for code in codes:
            if code == ACL_SUCCESS:
                self.completed += 1
            else:
                self.failed[code] = self.failed.get(code, 0) + 1
        self.in_flight[device_id] = self.in_flight.get(device_id, 0) - len(codes)

    def refused(self, count: int, code: int = ACL_ERROR_RT_LOST_HEARTBEAT) -> None:
        """Work the broker answered itself (lost card, old epoch)."""
        self.submitted += count
        self.failed[code] = self.failed.get(code, 0) + count

    def dropped_tasks(self, device_id: int, count: int) -> None:
        """Routed tasks an injected ``drop`` fault threw away: they never end on the card."""
        self.dropped += count
        self.in_flight[device_id] = self.in_flight.get(device_id, 0) - count

    def malformed_tasks(self, device_id: int, count: int) -> int:
        """Items of routed batches the card reports it could never answer: uncount them (at
        most what is in flight on that card, so a late or lying report cannot go negative)."""
        count = max(0, min(count, self.in_flight.get(device_id, 0)))
        if count:
            self.submitted -= count
            self.in_flight[device_id] -= count
            self.malformed += count
        return count

    def card_lost(self, device_id: int) -> int:
        """Fail what was in flight on a lost card with 507010; return how many."""
        lost = max(0, self.in_flight.pop(device_id, 0))
        if lost:
            self.failed[ACL_ERROR_RT_LOST_HEARTBEAT] = (
                self.failed.get(ACL_ERROR_RT_LOST_HEARTBEAT, 0) + lost
            )
        return lost

    def as_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": {str(code): n for code, n in sorted(self.failed.items())},
            "dropped": self.dropped,
            "malformed": self.malformed,
            "in_flight": sum(self.in_flight.values()),
        }
