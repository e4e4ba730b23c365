"""loadtest.cluster_report and the Ray bench's pure parts: a cluster result's percentiles come
from merged per-worker histograms, per card, per node and overall (no Ray here)."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.cluster_report import apply_histograms, cluster_section, per_node
from loadtest.histograms import LatencyHistogram
from loadtest.ray_bench import split_budget
from loadtest.report import summarize
from loadtest.schema import SAMPLE_DTYPE

QS = (50.0, 99.0)


def near(ms: float):
    """Equal within the histograms' precision (3 significant digits: 0.1 %)."""
    return pytest.approx(ms, rel=1e-3)


def _samples(card: int, latencies_ms: np.ndarray, t0: float = 100.0) -> np.ndarray:
    s = np.zeros(latencies_ms.size, SAMPLE_DTYPE)
    s["card"] = card
    s["intended_s"] = s["start_s"] = t0 + 0.001 * np.arange(latencies_ms.size)
    s["end_s"] = s["intended_s"] + latencies_ms / 1000.0
    return s


def _cluster():
    """Node A: cards 0 (1 ms) and 1 (2 ms); node B: card 2 (50 ms, few requests); card 0 was
    driven by two workers (two histograms)."""
    lat = {0: np.full(600, 1.0), 1: np.full(300, 2.0), 2: np.full(20, 50.0)}
    samples = np.concatenate([_samples(c, v) for c, v in lat.items()])
    hists = {
        0: [LatencyHistogram().record_ms(lat[0][:200]).encode()]
        + [LatencyHistogram().record_ms(lat[0][200:]).encode()],
        1: [LatencyHistogram().record_ms(lat[1]).encode()],
        2: [LatencyHistogram().record_ms(lat[2]).encode()],
    }
    nodes = [
        {"node_id": "a" * 56, "node_name": "10.0.0.1", "farm": "fa", "cards": {0: 0, 1: 1}},
        {"node_id": "b" * 56, "node_name": "10.0.0.2", "farm": "fb", "cards": {2: 0}},
    ]
    return samples, hists, nodes


def test_apply_histograms_sets_overall_and_per_card_from_merges():
    samples, hists, _ = _cluster()
    phase = summarize(samples, QS, window=(0.0, 1e9))
    apply_histograms(phase, hists, QS)
    assert phase["latency_ms"]["p50"] == near(1.0)  # 600 of 920 at 1 ms
    assert phase["latency_ms"]["p99"] == near(50.0)  # the top 2 % are node B's 50 ms
    assert phase["per_card"]["0"]["latency_ms"]["p99"] == near(1.0)
    assert phase["per_card"]["2"]["latency_ms"]["p50"] == near(50.0)
    # an average of the per-card p99s (1, 2, 50) would say 17.7 ms
    assert phase["latency_ms"]["p99"] != near((1.0 + 2.0 + 50.0) / 3)


def test_per_node_counts_and_latency():
    samples, hists, nodes = _cluster()
    out = per_node(samples, (0.0, 1e9), hists, nodes, percentiles=QS)
    a, b = out["a" * 56], out["b" * 56]
    assert (a["cards"], a["completed"], a["farm"]) == ([0, 1], 900, "fa")
    assert (b["cards"], b["completed"]) == ([2], 20)
    assert a["latency_ms"]["p50"] == near(1.0) and a["latency_ms"]["p99"] == near(2.0)
    assert b["latency_ms"]["max"] == near(50.0)
    assert "per_card" not in a


def test_cluster_section_states_precision():
    _, _, nodes = _cluster()
    section = cluster_section("127.0.0.1:6379", nodes, [{"index": 0}])
    assert section["histograms"]["significant_digits"] == 3
    assert section["nodes"][0]["cards"] == {"0": 0, "1": 1}


def test_split_budget():
    assert split_budget(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(split_budget(7, [2, 0, 1])) == 7 and split_budget(7, [2, 0, 1])[1] == 0
    assert split_budget(0, [1, 2]) == [0, 0]
