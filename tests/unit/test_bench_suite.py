"""benchmarks.suite: the goals read from a run's documents and the README block (pure), and one
``--quick --parts fidelity`` run end to end in a subprocess (real farms, real ``npufarm bench``):
its files, its figures traced to the runs' result.json, the README block replaced. No timing
asserts: the figures are whatever the box gives."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import suite, suite_report

REPO = Path(__file__).resolve().parents[2]


def _core(latency: float, routing: float, pipelined: float) -> dict:
    def entry(metric: str, ratio: float) -> dict:
        return {
            "metric": metric,
            "ratio": ratio,
            "ratio_min": ratio - 0.1,
            "ratio_max": ratio + 0.1,
        }

    return {
        "plan": {"rounds": 5},
        "summary": [
            entry("latency per async task p50", latency),
            entry("routing 8 cards, 16 in flight", routing),
            entry("pipelined bursts of 64, 8 cards x 2 streams", pipelined),
        ],
    }


def _fidelity(p50: float, p99: float) -> dict:
    node = {"median": None, "min": None, "max": None}
    return {
        "cases": {
            "1card": {"p50_ratio": {**node, "median": p50}, "p99_ratio": {**node, "median": p99}},
        }
    }


def _by_figure(rows: list[dict]) -> dict[str, dict]:
    return {row["figure"]: row for row in rows}


def test_goals_are_judged_on_the_medians_both_ways():
    rows = _by_figure(
        suite_report.goals({"core": _core(1.19, 0.79, 0.5), "fidelity": _fidelity(0.95, 1.11)})
    )
    assert rows["latency p50 / raw 3-hop RTT"]["met"] is True
    assert rows["routing 8 cards x 16 in flight / raw echo"]["met"] is False
    assert rows["pipelined 8 cards / batched raw echo"]["met"] is True
    one = "1 card, 1 in flight (closed loop)"
    assert rows[f"{one}: p50 / modelled"]["met"] is True  # 0.95 is inside ±5 %
    assert rows[f"{one}: p99 / modelled"]["met"] is False
    assert rows["latency p50 / raw 3-hop RTT"]["min"] == pytest.approx(1.09)


def test_a_missing_part_is_never_met():
    rows = suite_report.goals({})
    assert rows and all(row["met"] is None and row["why_none"] for row in rows)
    text = suite_report.goals_table(rows)
    assert "yes" not in text and "missing" in text


def test_fast_paths_too_fast_are_not_faithful_either():
    rows = _by_figure(suite_report.goals({"fidelity": _fidelity(0.90, 1.0)}))
    assert rows["1 card, 1 in flight (closed loop): p50 / modelled"]["met"] is False


def test_the_readme_block_is_replaced_between_its_markers_only():
    begin, end = suite_report.README_BEGIN, suite_report.README_END
    text = f"intro\n{begin}\nold table\n{end}\nafter\n"
    new = suite_report.replace_block(text, "new table\n")
    assert new == f"intro\n{begin}\nnew table\n{end}\nafter\n"
    assert suite_report.replace_block(new, "new table") == new
    for broken in ("no markers", f"{end}\n{begin}\n", f"{begin}\n{begin}\n{end}"):
        with pytest.raises(ValueError):
            suite_report.replace_block(broken, "x")


def test_unknown_parts_are_refused():
    with pytest.raises(ValueError):
        suite._part_argv(suite.Plan(), "nope", Path("/tmp"))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "--parts", "core,bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "bogus" in done.stderr


def test_a_quick_fidelity_run_end_to_end(tmp_path):
    begin, end = suite_report.README_BEGIN, suite_report.README_END
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{begin}\nstale\n{end}\n", encoding="utf-8")
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "--quick", "--parts", "fidelity"]
        + [
            "--rounds",
            "2",
            "--out-dir",
            str(out),
            "--readme",
            str(readme),
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads((out / "suite.json").read_text())
    assert document["plan"]["parts"] == ["fidelity"] and len(document["steps"]) == 4
    fidelity = json.loads((out / "fidelity.json").read_text())
    for case in ("1card", "8cards"):
        runs = [
            json.loads((out / "fidelity" / f"{case}-{k}" / "result.json").read_text())
            for k in (1, 2)
        ]
        ratios = [r["phases"][0]["accuracy"]["p99_ratio"] for r in runs]
        assert fidelity["cases"][case]["p99_ratio"]["rounds"] == ratios
        assert fidelity["cases"][case]["p99_ratio"]["median"] == pytest.approx(
            statistics.median(ratios), abs=1e-3
        )
        assert (
            runs[0]["accuracy"]["modelled_ms"] and min(ratios) > 0.9
        )  # a 5 ms model, honoured or late
    rows = _by_figure(document["goals"])
    assert rows["1 card, 1 in flight (closed loop): p99 / modelled"]["met"] in (True, False)
    text = readme.read_text()
    assert "stale" not in text and (out / "suite.md").read_text().strip() in text
    assert text.startswith("# x\n") and text.rstrip().endswith(end)
    # --render runs nothing and writes the same block from the run's files
    (out / "suite.md").unlink()
    readme.write_text(f"# x\n{begin}\nstale\n{end}\n", encoding="utf-8")
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "--render", "--out-dir", str(out)]
        + ["--readme", str(readme)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert readme.read_text() == text and not list(out.glob("fidelity/*-3"))
