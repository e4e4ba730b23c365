"""The live view of ``npufarm bench`` while a terminal watches (:mod:`loadtest.loadgen`): a rich
progress bar per phase and a per-card table of successes, errors and the p50 / p99 latency of the
last 4096 requests, updated from the sample batches as the parent collects them (4 times a
second at most). A no-op when disabled (a pipe, a CI log), so the collector calls it anyway.
"""

from __future__ import annotations

import math
import time

import numpy as np
from rich.console import Group
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

from loadtest.schema import latency_ms

__all__ = ["LiveView"]


class LiveView:
    """Rich progress bar + per-card table while a terminal watches (no-op otherwise)."""

    def __init__(self, enabled: bool, cards: list[int]) -> None:
        self.enabled, self.cards, self.live, self.next_s = enabled, cards, None, 0.0
        if enabled:
            self.progress = Progress()
            self.live = Live(self.progress, refresh_per_second=4)
            self.live.start()

    def phase(self, name: str, t0: float, total_s: float | None) -> None:
        if self.live is not None:
            self.finish()
            self.t0, self.total = t0, total_s
            self.task = self.progress.add_task(name, total=total_s)
            self.counts = {c: [0, 0, np.empty(0)] for c in self.cards}

    def add(self, batch: np.ndarray) -> None:
        if self.live is None:
            return
        for card, entry in self.counts.items():
            rows = batch[batch["card"] == card]
            ok = rows["code"] == 0
            entry[0], entry[1] = entry[0] + int(ok.sum()), entry[1] + int((~ok).sum())
            entry[2] = np.concatenate([entry[2], latency_ms(rows[ok])])[-4096:]
        if (now := time.monotonic()) >= self.next_s:
            self.next_s = now + 0.25
            self.progress.update(self.task, completed=max(0.0, now - self.t0))
            self.live.update(self._render())

    def _render(self):
        table = Table("card", "ok", "errors", "p50 ms", "p99 ms (last 4096)")
        for card, (ok, errors, lat) in self.counts.items():
            p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (math.nan, math.nan)
            table.add_row(str(card), str(ok), str(errors), f"{p50:.2f}", f"{p99:.2f}")
        return Group(self.progress, table)

    def finish(self) -> None:
        """Mark the current phase's bar complete."""
        if getattr(self, "task", None) is not None:
            total = self.total or 1.0
            self.progress.update(self.task, total=total, completed=total)
            self.live.update(self._render())

    def close(self) -> None:
        if self.live is not None:
            self.finish()
            self.live.stop()
