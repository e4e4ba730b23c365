"""The bench's accuracy figure (loadtest/accuracy.py): the modelled duration per card from the
model file and the cards' reported latency model, the requests' own p50 / p99 against it, why
there is no figure, and the Accuracy table."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from loadtest import accuracy
from loadtest.render import print_bench_summary, render_terminal
from loadtest.schema import as_samples

pytestmark = pytest.mark.timeout(30)

MODEL = """[model]
name = "m5"
kind = "identity"
seed = 0

[[inputs]]
name = "x"
dtype = "float32"
shape = [1, 64]

[[outputs]]
name = "y"
dtype = "float32"
shape = [1, 64]
"""


def model_file(tmp_path, latency: str = "fixed_s = 0.005\n") -> str:
    path = tmp_path / "m.toml"
    path.write_text(MODEL + (f"\n[latency]\n{latency}" if latency else ""))
    return str(path)


def status(*speeds: float, jitter: float = 0.0, scale: float = 1.0, timing: bool = True) -> dict:
    def card(device_id: int, speed: float) -> dict:
        info = {"speed_factor": speed, "jitter_sigma": jitter, "time_scale": scale}
        stats = {"timing": {**info, "lead_us": 400.0}} if timing else {}
        return {"device_id": device_id, "stats": stats}

    return {"cards": [card(i, s) for i, s in enumerate(speeds)], "time_scale": scale}


def samples(latencies_ms: dict[int, list[float]], lag_s: float = 0.0) -> np.ndarray:
    """Completed requests on each card, one every 10 ms from t = 1 s, sent ``lag_s`` late."""
    rows = []
    for card, values in latencies_ms.items():
        for k, ms in enumerate(values):
            intended = 1.0 + 0.01 * k
            start = intended + lag_s
            rows.append((0, card, card, 0, intended, start, start + ms / 1000.0))
    return as_samples(rows)


def test_modelled_duration_per_card(tmp_path):
    path = model_file(tmp_path)
    assert accuracy.modelled_ms_by_card(path, status(1.0, 2.0), [0, 1]) == (
        {"0": pytest.approx(5.0), "1": pytest.approx(2.5)},
        None,
    )
    scaled, _ = accuracy.modelled_ms_by_card(path, status(1.0, scale=2.0), [0])
    assert scaled == {"0": pytest.approx(10.0)}


@pytest.mark.parametrize(
    "latency, farm, why",
    [
        ("", status(1.0), "no modelled latency"),
        ("fixed_s = 0.005\njitter_sigma = 0.1\n", status(1.0), "jittered"),
        ("fixed_s = 0.005\n", status(1.0, jitter=0.2), "jittered"),
        ("fixed_s = 0.005\n", status(1.0, scale=0.0), "time scale 0"),
        ("fixed_s = 0.005\n", status(1.0, timing=False), "does not report"),
    ],
)
def test_no_figure_without_one_fixed_modelled_duration(tmp_path, latency, farm, why):
    modelled, reason = accuracy.modelled_ms_by_card(model_file(tmp_path, latency), farm, [0])
    assert modelled == {} and why in reason


def test_an_unreadable_model_gives_no_figure(tmp_path):
    modelled, reason = accuracy.modelled_ms_by_card(tmp_path / "nope.toml", status(1.0), [0])
    assert modelled == {} and "unreadable" in reason


def test_the_figure_is_the_requests_own_latency_against_the_model():
    values = [5.1] * 97 + [9.0] * 3  # sent half a second late: the lag is not counted
    figure = accuracy.figure(samples({0: values}, lag_s=0.5), (1.0, 2.0), {"0": 5.0})
    assert figure["requests"] == 100
    assert figure["p50_ms"] == pytest.approx(5.1) and figure["p50_ratio"] == pytest.approx(1.02)
    assert figure["p99_ratio"] == pytest.approx(np.percentile(values, 99) / 5.0, abs=1e-4)
    assert figure["p99_ms"] == pytest.approx(9.0) and figure["within"] is False
    assert figure["per_card"]["0"]["p50_ratio"] == figure["p50_ratio"]
    good = accuracy.figure(samples({0: [5.1] * 100}), (1.0, 2.0), {"0": 5.0})
    assert good["within"] is True
    assert accuracy.figure(samples({0: [5.1]}), (1.0, 2.0), {}) is None


def test_cards_of_different_speeds_have_only_per_card_figures():
    figure = accuracy.figure(
        samples({0: [5.0] * 10, 1: [2.5] * 10}), (1.0, 2.0), {"0": 5.0, "1": 2.5}
    )
    assert figure["p50_ratio"] is None and figure["within"] is None
    assert {c: f["p50_ratio"] for c, f in figure["per_card"].items()} == {"0": 1.0, "1": 1.0}


def test_warm_up_and_failed_requests_do_not_count():
    rows = samples({0: [5.0] * 10})
    rows["code"][0] = 507010
    figure = accuracy.figure(rows, (1.015, 2.0), {"0": 5.0})
    assert figure["requests"] == 8


def test_annotate_and_the_table(tmp_path):
    result = {"phases": [{"name": "c1"}, {"name": "c4"}]}
    runs = [
        ({}, samples({0: [5.2] * 50}), (1.0, 2.0), []),
        ({}, samples({0: [6.0] * 50}), (1.0, 2.0), []),
    ]
    accuracy.annotate(result, model_file(tmp_path), status(1.0), [0], runs)
    assert result["accuracy"]["modelled_ms"] == {"0": 5.0}
    assert result["accuracy"]["reason"] is None
    assert result["accuracy"]["completion_lead_us"] == {"0": 400.0}
    assert [p["accuracy"]["within"] for p in result["phases"]] == [True, False]
    out = io.StringIO()
    render_terminal(result, Console(file=out, width=80))
    text = out.getvalue()
    assert "Accuracy" in text and "1.040" in text and "1.200" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_result_without_a_figure_prints_no_accuracy_table(tmp_path, capsys):
    result = {"phases": [{"name": "c1", "accuracy": None}]}
    print_bench_summary(result)
    assert "Accuracy" not in capsys.readouterr().out
