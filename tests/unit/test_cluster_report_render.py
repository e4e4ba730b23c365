"""``npufarm report`` of a stored ``--ray`` result prints the per-node table (as ``npufarm bench
--ray`` does), from the result's ``per_node`` alone; a single-farm result prints none. And the
cluster bench's fault-plan times: ``at_s`` counted from the bench's start on every node
(:func:`loadtest.ray_nodes.shift_rule`). No Ray here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from loadtest.cluster_report import apply_histograms, cluster_section, node_table, per_node
from loadtest.histograms import LatencyHistogram
from loadtest.ray_nodes import shift_rule
from loadtest.render import render_terminal, report_main
from loadtest.report import build_result
from loadtest.schema import SAMPLE_DTYPE

QS = (50.0, 99.0)
NODE_A, NODE_B = "a1b2c3d4" + "e" * 48, "f9e8d7c6" + "0" * 48


def _samples(card: int, latencies_ms: np.ndarray, errors: int = 0) -> np.ndarray:
    s = np.zeros(latencies_ms.size, SAMPLE_DTYPE)
    s["card"] = card
    s["intended_s"] = s["start_s"] = 10.0 + 0.001 * np.arange(latencies_ms.size)
    s["end_s"] = s["intended_s"] + latencies_ms / 1000.0
    s["code"][:errors] = 507015
    return s


def _result(cluster: bool = True) -> dict:
    """Node A (farm "fa"): cards 0 (1 ms) and 1 (2 ms); node B ("fb"): card 2 (50 ms, 3 of its
    20 requests failed); measured window 10 s .. 11 s."""
    lat = {0: np.full(600, 1.0), 1: np.full(300, 2.0), 2: np.full(20, 50.0)}
    samples = np.concatenate([_samples(c, v, errors=3 if c == 2 else 0) for c, v in lat.items()])
    window = (10.0, 11.0)
    config = {"percentiles": list(QS), "slo_ms": None}
    status = {"name": "ray:auto", "endpoint": "auto", "cards": [{}, {}, {}]}
    phase = {"name": "c4", "mode": "closed", "concurrency": 4}
    result = build_result(
        config, status, [(phase, samples, window, [])], cards=[0, 1, 2], origin_s=9.0
    )
    if not cluster:
        return result
    ok = samples[samples["code"] == 0]
    hists = {
        c: [LatencyHistogram().record_ms((ok["end_s"] - ok["start_s"])[ok["card"] == c] * 1e3)]
        for c in lat
    }
    hists = {c: [h.encode() for h in hs] for c, hs in hists.items()}
    nodes = [
        {"node_id": NODE_A, "node_name": "10.0.0.1", "farm": "fa", "cards": {0: 0, 1: 1}},
        {"node_id": NODE_B, "node_name": "10.0.0.2", "farm": "fb", "cards": {2: 0}},
    ]
    apply_histograms(result["phases"][0], hists, QS)
    result["phases"][0]["per_node"] = per_node(samples, window, hists, nodes, percentiles=QS)
    result["cluster"] = cluster_section("auto", nodes, [])
    return result


def _rows(text: str) -> dict[str, list[str]]:
    """The per-node table's data rows, by node id prefix."""
    section = text[text.index("Per node (Ray)") :]
    return {
        line.split()[1]: line.split()
        for line in section.splitlines()
        if line.split()[1:2] and line.split()[1] in (NODE_A[:8], NODE_B[:8])
    }


def test_report_cli_prints_per_node_table(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_result()))
    assert report_main([str(path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    # phase, node, farm, cards, req, err, thr/s, p50, p99, max
    assert rows[NODE_A[:8]] == [
        "c4",
        NODE_A[:8],
        "fa",
        "0,1",
        "900",
        "0",
        "900.0",
        "1.00",
        "2.00",
        "2.00",
    ]
    assert rows[NODE_B[:8]] == [
        "c4",
        NODE_B[:8],
        "fb",
        "2",
        "20",
        "3",
        "17.0",
        "50.0",
        "50.0",
        "50.0",
    ]
    assert "merge of its cards' histograms" in " ".join(out.split())  # the caption


def test_per_node_table_fits_80_columns():
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    render_terminal(_result(), console)
    text = console.export_text()
    assert "Per node (Ray)" in text and set(_rows(text)) == {NODE_A[:8], NODE_B[:8]}
    assert max(len(line) for line in text.splitlines()) <= 80


def test_single_farm_result_has_no_node_table(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_result(cluster=False)))
    assert node_table(_result(cluster=False)) is None
    assert report_main([str(path), "--no-plots"]) == 0
    assert "Per node" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("at_s", "since_s", "farm_start_s", "want"),
    [
        (1.0, 500.0, 100.0, 401.0),  # farm up 400 s at the bench's start: 1 s into the bench
        (0.0, 500.0, 100.0, 400.0),
        (2.5, 100.0, 100.5, 2.0),  # a farm started after the bench: what is left of the delay
        (1.0, 100.0, 105.0, 0.0),  # never negative
    ],
)
def test_shift_rule_counts_at_s_from_the_bench_start(at_s, since_s, farm_start_s, want):
    rule = {"kind": "slow", "factor": 3.0, "at_s": at_s, "duration_s": 1.0, "card": 1}
    shifted = shift_rule(rule, since_s, farm_start_s)
    assert shifted["at_s"] == pytest.approx(want)
    assert {k: v for k, v in shifted.items() if k != "at_s"} == {
        k: v for k, v in rule.items() if k != "at_s"
    }
    assert rule["at_s"] == at_s  # the caller's rule is not changed


def test_shift_rule_leaves_rules_without_at_s():
    rule = {"kind": "error", "probability": 0.1}
    assert shift_rule(rule, 500.0, 100.0) == rule
