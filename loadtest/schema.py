"""What every part of the load tester agrees on about a sample and a result: the schema tag,
the sample row (:data:`SAMPLE_DTYPE`), the default percentiles and their keys, latency from the
intended send time, and the fault-rule fields a fault window shows (:data:`PARAMS`).

It is its own module so that the summaries (:mod:`loadtest.report`), the output files
(:mod:`loadtest.files`), the plots and the worker processes share one definition without
importing each other: ``report`` re-exports the file writers, so ``files`` importing ``report``
back would be a cycle. Pure and numpy-only; the semantics are in :mod:`loadtest.report`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "SCHEMA",
    "SAMPLE_DTYPE",
    "DEFAULT_PERCENTILES",
    "PARAMS",
    "as_samples",
    "percentile_key",
    "latency_ms",
]

SCHEMA = "npufarm.bench/1"
#: One request: ``phase, slot, card, code, intended_s, start_s, end_s`` (host monotonic times).
SAMPLE_DTYPE = np.dtype(
    [
        ("phase", "i4"),
        ("slot", "i4"),
        ("card", "i4"),
        ("code", "i8"),
        ("intended_s", "f8"),
        ("start_s", "f8"),
        ("end_s", "f8"),
    ]
)
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
PARAMS = ("factor", "duration_s")  # the rule fields a fault window shows beside its kind


def as_samples(rows: Iterable[Any] | np.ndarray) -> np.ndarray:
    """A :data:`SAMPLE_DTYPE` array from such an array, tuples in field order, or dicts."""
    if isinstance(rows, np.ndarray):
        return rows.astype(SAMPLE_DTYPE, copy=False)
    rows = list(rows)
    if rows and isinstance(rows[0], Mapping):
        rows = [tuple(r.get(name, 0) for name in SAMPLE_DTYPE.names) for r in rows]
    return np.array(rows, dtype=SAMPLE_DTYPE)


def percentile_key(q: float) -> str:
    """``50 -> "p50"``, ``99.9 -> "p99.9"``."""
    return f"p{q:g}"


def latency_ms(samples: np.ndarray) -> np.ndarray:
    """Per-request latency from the intended send time, in ms."""
    return (samples["end_s"] - samples["intended_s"]) * 1000.0
