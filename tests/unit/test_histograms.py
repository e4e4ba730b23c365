"""loadtest.histograms: merged HdrHistograms give the percentiles of the union of all values."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.histograms import (
    HIGHEST_US,
    SIGNIFICANT_DIGITS,
    LatencyHistogram,
    merge,
    rank_percentile,
)

QS = (50.0, 90.0, 95.0, 99.0, 99.9)
REL = 10.0**-SIGNIFICANT_DIGITS  # the stated precision: within 0.1 % (or 1 µs)


def _close(got_ms: float, want_ms: float) -> bool:
    return abs(got_ms - want_ms) <= max(want_ms * REL, 0.001) + 1e-9


def test_merge_of_parts_equals_histogram_of_union():
    rng = np.random.default_rng(7)
    parts = [rng.lognormal(mean, 0.6, size) for mean, size in ((0.0, 3000), (2.0, 500), (1.0, 50))]
    merged = merge(LatencyHistogram().record_ms(p).encode() for p in parts)
    whole = LatencyHistogram().record_ms(np.concatenate(parts))
    assert merged.count == whole.count == sum(p.size for p in parts)
    assert merged.figures(QS) == whole.figures(QS)


def test_percentiles_match_raw_samples_within_precision():
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.uniform(0.5, 2.0, 4000), rng.uniform(20.0, 80.0, 40)])
    h = merge(
        [LatencyHistogram().record_ms(values[::2]), LatencyHistogram().record_ms(values[1::2])]
    )
    figures = h.figures(QS)
    for q in QS:
        assert _close(figures[f"p{q:g}"], rank_percentile(values, q)), q
    assert _close(figures["max"], values.max())
    assert figures["mean"] == pytest.approx(values.mean(), rel=REL)


def test_merge_is_not_an_average_of_percentiles():
    """Two workers, one fast (1 ms), one slow (100 ms) with 1 % of the requests: the p99 of the
    union is slow's share boundary, which no average of the parts' p99s gives."""
    fast = np.full(990, 1.0)
    slow = np.full(10, 100.0)
    merged = merge([LatencyHistogram().record_ms(fast), LatencyHistogram().record_ms(slow)])
    p99 = merged.figures((99.0, 99.5))
    assert _close(p99["p99"], 1.0) and _close(p99["p99.5"], 100.0)
    averaged = (1.0 + 100.0) / 2
    assert not _close(p99["p99"], averaged) and not _close(p99["p99.5"], averaged)


def test_encode_roundtrip_empty_and_clamped():
    empty = LatencyHistogram()
    assert merge([empty.encode()]).figures((50,)) == {"p50": None, "max": None, "mean": None}
    big = LatencyHistogram().record_ms([HIGHEST_US / 1000.0 * 2, 1.0])
    back = LatencyHistogram.decode(big.encode())
    assert back.count == 2 and back.clamped == 1
    with pytest.raises(ValueError):
        LatencyHistogram().record_ms([float("nan")])


def test_sub_microsecond_values_count_as_one_microsecond():
    h = LatencyHistogram().record_ms([0.0001, 0.0004])
    assert h.count == 2 and h.figures((50,))["p50"] == pytest.approx(0.001)


def test_rank_percentile_rule():
    values = np.arange(1, 101, dtype=float)  # 1..100
    assert rank_percentile(values, 50) == 50.0
    assert rank_percentile(values, 99.4) == 99.0  # rank floor(99.4 + 0.5) = 99
    assert rank_percentile(values, 99.5) == 100.0
    assert rank_percentile(values, 0) == 1.0
