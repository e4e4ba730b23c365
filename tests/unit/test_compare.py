"""benchmarks.compare and compare_stats: the pure parts (flattening, statistics, flags, the
table), and the CLI on a toy git repo with stand-in modules (real worktrees, no farm)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from benchmarks import compare, compare_stats

REPO = Path(__file__).resolve().parents[2]


def test_flatten_keeps_finite_numbers_under_dotted_keys():
    doc = {
        "quick": True,
        "elapsed_s": 3,
        "farm": {"latency": {"measured": 300.5, "unit": "us", "meets_target": False}},
        "summary": [{"measured": 1.0}],
        "host": {"loadavg": [1.0, 2.0], "python": "3.11"},
        "bad": {"nan": math.nan, "inf": math.inf, "none": None},
    }
    assert compare_stats.flatten_metrics(doc) == {"elapsed_s": 3.0, "farm.latency.measured": 300.5}
    assert list(compare_stats.flatten_metrics({"b": 1, "a": {"z": 2, "y": 3}})) == [
        "b",
        "a.z",
        "a.y",
    ]
    assert compare_stats.flatten_metrics(7) == {"": 7.0}


def test_sample_stats_and_ratio_of_medians():
    stats = compare_stats.sample_stats([3.0, 1.0, 2.0, 10.0])
    assert stats == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert compare_stats.sample_stats([]) is None
    old, new = compare_stats.sample_stats([2.0]), compare_stats.sample_stats([3.0])
    assert compare_stats.ratio_of_medians(new, old) == 1.5
    assert compare_stats.ratio_of_medians(new, None) is None
    assert compare_stats.ratio_of_medians(None, old) is None
    assert compare_stats.ratio_of_medians(new, compare_stats.sample_stats([0.0])) is None


def test_compare_metrics_reports_one_sided_metrics_as_missing():
    old_runs = [{"a": 1.0, "gone": 5.0}, {"a": 3.0, "gone": 7.0}]
    new_runs = [{"a": 4.0, "added": 1.0}, {"a": 4.0}]
    result = compare_stats.compare_metrics(old_runs, new_runs)
    a = result["metrics"]["a"]
    assert a["old"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    assert a["new"]["median"] == 4.0 and a["ratio"] == 2.0
    assert result["metrics"]["gone"]["new"] is None and result["metrics"]["gone"]["ratio"] is None
    assert result["metrics"]["added"]["old"] is None
    assert result["metrics"]["added"]["new"]["n"] == 1  # compared over the runs that have it
    assert result["missing"] == {"old": ["added"], "new": ["gone"]}
    assert list(result["metrics"]) == ["a", "gone", "added"]


def test_compare_metrics_with_a_side_that_never_ran():
    result = compare_stats.compare_metrics([], [{"x": 1.0}])
    assert result["missing"] == {"old": ["x"], "new": []}


def test_select_metrics_by_pattern():
    metrics = {"farm.latency.measured": 1.0, "farm.latency.p50_us": 2.0, "elapsed_s": 3.0}
    assert compare_stats.select_metrics(metrics, []) == metrics
    assert compare_stats.select_metrics(metrics, ["farm.*.measured"]) == {
        "farm.latency.measured": 1.0
    }
    assert set(compare_stats.select_metrics(metrics, ["elapsed_s", "*.p50_us"])) == {
        "elapsed_s",
        "farm.latency.p50_us",
    }


def test_plan_flags_falls_back_when_the_module_lacks_one():
    full = "usage: x [-h] [--quick] [--out OUT] [--markdown]"
    assert compare.plan_flags(full, quick=True) == (["--quick"], True, [])
    assert compare.plan_flags(full, quick=False) == ([], True, [])
    flags, has_out, notes = compare.plan_flags("usage: x [-h] [--out OUT]", quick=True)
    assert flags == [] and has_out and "no --quick" in notes[0]
    flags, has_out, notes = compare.plan_flags("usage: x [-h] [--quick]", quick=True)
    assert flags == ["--quick"] and not has_out and "stdout" in notes[0]
    flags, has_out, notes = compare.plan_flags(None, quick=True)
    assert flags == ["--quick"] and not has_out and notes


def test_markdown_table_is_aligned():
    result = compare_stats.compare_metrics(
        [{"farm.latency.measured": 300.0, "old_only": 0.5}], [{"farm.latency.measured": 330.0}]
    )
    lines = compare_stats.markdown_table(result["metrics"]).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[0].startswith("| metric ") and lines[0].rstrip().endswith("new/old |")
    assert lines[1].startswith("|---") and lines[1].endswith(":|")
    latency = [c.strip() for c in lines[2].strip("|").split("|")]
    assert latency == ["farm.latency.measured", "300", "300", "300", "330", "330", "330", "1.100"]
    assert "missing" in lines[3] and lines[3].rstrip("| ").endswith("-")


def _git(root: Path, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    done = subprocess.run(
        ["git", *identity, "-C", str(root), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


FAKE_OLD = """
import argparse, json, os, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
here = float(os.getcwd() == os.environ["PYTHONPATH"])
doc = {"farm": {"x": {"measured": 2.0}, "gone": 1}, "here": here}
pathlib.Path(args.out).write_text(json.dumps(doc))
"""

FAKE_NEW = """
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
here = float(os.getcwd() == os.environ["PYTHONPATH"])
doc = {"farm": {"x": {"measured": 3.0}, "added": float(args.quick)}, "here": here}
print(json.dumps(doc))
"""


@pytest.fixture
def toy_repo(tmp_path, monkeypatch):
    """A git repo with stand-in ``acl``, ``client`` and ``benchmarks.fake`` packages: an OLD
    commit whose module lacks ``--quick``, a NEW one that lacks ``--out``."""
    root = tmp_path / "repo"
    for package in ("acl", "client", "benchmarks"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    fake = root / "benchmarks" / "fake.py"
    _git(tmp_path, "init", "-q", str(root))
    fake.write_text(FAKE_OLD)
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "old")
    old = _git(root, "rev-parse", "HEAD")
    fake.write_text(FAKE_NEW)
    _git(root, "commit", "-q", "-am", "new")
    monkeypatch.setattr(compare, "REPO", root)
    return root, old


@pytest.mark.timeout(120)
def test_compare_two_refs_of_a_toy_repo(toy_repo, tmp_path, capsys):
    root, old = toy_repo
    out = tmp_path / "cmp.json"
    argv = [old[:8], "HEAD", "--rounds", "2", "--quick", "--module", "benchmarks.fake"]
    assert compare.main([*argv, "--out", str(out), "--log-level", "WARNING"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert result["schema"] == "npufarm.bench.compare/1" and result["rounds"] == 2
    assert result["old"]["commit"] == old and result["old"]["flags"] == []
    assert "no --quick" in result["old"]["notes"][0]
    assert result["new"]["flags"] == ["--quick"] and "stdout" in result["new"]["notes"][0]
    for side in ("old", "new"):
        assert [r["round"] for r in result[side]["runs"]] == [1, 2]
        assert all(r["error"] is None for r in result[side]["runs"])
        assert "/nfcmp-" in result[side]["origins"]["module"]  # the worktree, not the repo
    x = result["metrics"]["farm.x.measured"]
    assert x["old"]["median"] == 2.0 and x["new"]["median"] == 3.0 and x["ratio"] == 1.5
    assert result["metrics"]["here"]["old"]["median"] == 1.0  # cwd == PYTHONPATH == its root
    assert result["missing"] == {"old": ["farm.added"], "new": ["farm.gone"]}
    # the worktrees are gone, from git and from disk
    assert _git(root, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not Path(result["old"]["origins"]["module"]).exists()


@pytest.mark.timeout(60)
def test_failed_runs_are_reported_and_worktrees_removed(toy_repo, capsys):
    """NEW is '.', the toy checkout as it is, whose module now fails: reported, exit code 1."""
    root, old = toy_repo
    (root / "benchmarks" / "fake.py").write_text("raise SystemExit(3)\n")
    argv = [old, ".", "--rounds", "1", "--module", "benchmarks.fake", "--log-level", "CRITICAL"]
    assert compare.main(argv) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["new"]["commit"].endswith("+worktree")
    assert result["new"]["runs"][0]["returncode"] == 3 and result["new"]["runs"][0]["error"]
    assert result["old"]["runs"][0]["error"] is None
    assert result["missing"]["new"] == list(result["metrics"])
    assert _git(root, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_unknown_ref_is_an_error(toy_repo):
    assert compare.main(["no-such-ref", "HEAD", "--log-level", "CRITICAL"]) == 2
