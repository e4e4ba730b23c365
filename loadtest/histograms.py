"""Mergeable latency histograms (HdrHistogram) for results gathered on many processes or nodes.

A percentile of a union is not a function of the parts' percentiles (an average of two p99s is
not the p99 of both), but a histogram of the union is the sum of the parts' histograms. So each
worker records its requests' latencies in an HdrHistogram per (phase, card); the histograms
travel as compact strings (:meth:`LatencyHistogram.encode`: HdrHistogram's compressed base64
form) and are merged (added) per card, per node and overall, where the percentiles are read.

Precision: values are recorded in whole microseconds from :data:`LOWEST_US` to
:data:`HIGHEST_US` (1 hour) with :data:`SIGNIFICANT_DIGITS` = 3 significant decimal digits: any
value read back (a percentile, the max) is within 0.1 % of a recorded value (and at most 1 µs
from it for values under 1 ms), and a merged histogram is exactly the histogram of all the
values (counts add). A percentile ``q`` of ``n`` values is a *rank* value, HdrHistogram's rule:
the smallest recorded value ``v`` with at least ``r = max(1, floor(q/100 * n + 0.5))`` values
``<= v`` (reported as the highest value equivalent to ``v`` at this precision), not an
interpolation between two values as numpy's default (:func:`rank_percentile` computes the same
rank on raw values, to check against). Values above 1 hour are clamped to it (and counted in
``clamped``).

::

    worker / Ray actor (per phase, card)           driver
    ────────────────────────────────────           ──────────────────────────────────────
    LatencyHistogram.record_ms(...)  ──encode()──▶  decode() → merge() per card, node, all
                                     str over Ray     → figures(): p50…p99.9, max, mean (ms)

Pure (numpy and hdrh only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.schema import DEFAULT_PERCENTILES, percentile_key

__all__ = [
    "LOWEST_US",
    "HIGHEST_US",
    "SIGNIFICANT_DIGITS",
    "PRECISION",
    "LatencyHistogram",
    "merge",
    "rank_percentile",
]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # 1 hour
SIGNIFICANT_DIGITS = 3
#: What a result states about the histograms its percentiles come from.
PRECISION: dict[str, Any] = {
    "kind": "HdrHistogram",
    "unit": "us",
    "significant_digits": SIGNIFICANT_DIGITS,
    "lowest_us": LOWEST_US,
    "highest_us": HIGHEST_US,
    "percentile": "rank max(1, floor(q/100*n + 0.5)), no interpolation",
}


class LatencyHistogram:
    """An HdrHistogram of latencies (recorded in µs, read in ms)."""

    def __init__(self, hdr: HdrHistogram | None = None, clamped: int = 0) -> None:
        self.hdr = hdr or HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.clamped = clamped

    @property
    def count(self) -> int:
        return int(self.hdr.get_total_count())

    def record_ms(self, values_ms: Iterable[float] | np.ndarray) -> LatencyHistogram:
        """Record latencies given in ms (rounded to whole µs, clamped to the range)."""
        us = np.rint(np.asarray(values_ms, dtype=float) * 1000.0)
        if us.size and not np.isfinite(us).all():
            raise ValueError("latency values must be finite")
        over = us > HIGHEST_US
        self.clamped += int(over.sum())
        us = np.clip(us, LOWEST_US, HIGHEST_US).astype(np.int64)
        values, counts = np.unique(us, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            self.hdr.record_value(value, count)
        return self

    def add(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s counts into this one (in place); returns self."""
        if other.count:
            self.hdr.add(other.hdr)
        self.clamped += other.clamped
        return self

    def encode(self) -> str:
        """A compact text form (HdrHistogram's compressed base64 + the clamped count)."""
        return f"{self.clamped}:{self.hdr.encode().decode('ascii')}"

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        clamped, _, body = text.partition(":")
        return cls(HdrHistogram.decode(body.encode("ascii")), int(clamped))

    def percentile_ms(self, q: float) -> float | None:
        if not self.count:
            return None
        return self.hdr.get_value_at_percentile(q) / 1000.0

    def figures(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, Any]:
        """``{"p50": ms, ..., "max": ms, "mean": ms}`` as in a bench summary (None when empty)."""
        keys = [percentile_key(q) for q in percentiles]
        if not self.count:
            return {**dict.fromkeys(keys), "max": None, "mean": None}
        found = self.hdr.get_percentile_to_value_dict(list(percentiles))  # one pass over counts
        out = {key: round(found[q] / 1000.0, 4) for key, q in zip(keys, percentiles)}
        top = self.hdr.get_highest_equivalent_value(self.hdr.get_max_value())
        mean = self.hdr.get_mean_value() / 1000.0
        return {**out, "max": round(top / 1000.0, 4), "mean": round(mean, 4)}


def merge(parts: Iterable[LatencyHistogram | str]) -> LatencyHistogram:
    """One histogram of every value of ``parts`` (histograms or their encoded forms)."""
    total = LatencyHistogram()
    for part in parts:
        total.add(LatencyHistogram.decode(part) if isinstance(part, str) else part)
    return total


def rank_percentile(values: np.ndarray, q: float) -> float:
    """The ``q`` percentile of raw ``values`` by the rank rule of :class:`LatencyHistogram`
    (the ``max(1, floor(q/100 * n + 0.5))``-th smallest value): what its percentiles equal
    within the stated precision."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if not ordered.size:
        raise ValueError("no values")
    rank = max(1, int(q * ordered.size / 100.0 + 0.5))
    return float(ordered[min(rank, ordered.size) - 1])
