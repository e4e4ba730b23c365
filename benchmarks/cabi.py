"""C ABI benchmark: a C program linked with libascendcl against the pyACL path, same farm, same run.

``python -m benchmarks.cabi [--quick] [--rounds N] [--out FILE] [--markdown] [--sdk DIR]``
builds the toolkit tree (:func:`cabi.build.sdk_tree`, reused when current), compiles
``benchmarks/cabi_bench.c`` against it, starts one 1-card farm (:class:`FarmProcess`, zero
``time_scale``) and runs, round after round, the C program (``set_env.sh`` sourced), its pyACL
twin ``python -m benchmarks.cabi_pyside`` and the warm raw copy of :mod:`benchmarks.raw`: C,
Python, raw, C, Python, raw, ... Each side is a fresh process making the same calls:

* ``memcpy_4KiB_h2d`` - one 4 KiB ``aclrtMemcpy`` host -> device, p50 µs per round;
* ``exec_sync`` - ``aclmdlExecuteAsync`` + ``aclrtSynchronizeStream`` on ``zero.toml``, p50 µs;
* ``memcpy_16MiB_{h2d,d2h}`` - best GB/s of the round's samples (4 copies each, as the raw copy).

Every entry's ``measured`` and ``baseline`` are medians over the rounds (``*_min`` / ``*_max``
and ``*_rounds`` beside them) and ``ratio`` is the ratio of those medians (issue 12;
:mod:`benchmarks.rounds`). Targets
(issue 11): C latency <= 1.2x the Python path's, C memcpy >= 0.8 of the warm raw copy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import raw
from benchmarks.core_farm import MIB, REPO, ZERO_MODEL, BenchError, FarmProcess
from benchmarks.core_report import MEMCPY_RATIO_TARGET
from benchmarks.rounds import Target, at_least, at_most, emit, rounds_entry
from cabi.build import sdk_tree

__all__ = ["C_LATENCY_RATIO_TARGET", "Plan", "compile_bench", "main", "markdown_table", "run"]

log = logging.getLogger(__name__)

C_SOURCE = Path(__file__).resolve().with_name("cabi_bench.c")
C_LATENCY_RATIO_TARGET = 1.20  # of the Python path's latency
SIDES = ("c", "python")
_SIDE_TIMEOUT_S = 300.0
_SOURCED = 'source "$1/set_env.sh" && shift && exec "$@"'


@dataclass(frozen=True)
class Plan:
    """Rounds and per-round iterations; ``--quick`` is a smoke test, not a measurement."""

    rounds: int
    copy_iters: int
    exec_iters: int
    warmup: int
    repeats: int
    big_bytes: int = 16 * MIB

    @classmethod
    def for_mode(cls, quick: bool, rounds: int | None = None) -> Plan:
        plan = cls(2, 200, 100, 20, 2) if quick else cls(5, 2000, 1000, 100, 5)
        if rounds is not None:
            if rounds < 1:
                raise ValueError("rounds must be >= 1")
            plan = replace(plan, rounds=rounds)
        return plan

    def side_args(self) -> list[str]:
        """The argv tail both sides take: MODEL COPY_ITERS EXEC_ITERS WARMUP REPEATS BIG_BYTES."""
        counts = (self.copy_iters, self.exec_iters, self.warmup, self.repeats, self.big_bytes)
        return [str(ZERO_MODEL), *map(str, counts)]


# --------------------------------------------------------------------------------------------
# the two sides
# --------------------------------------------------------------------------------------------


def compile_bench(root: Path, out_dir: Path) -> Path:
    """``cc`` the C side against the tree's headers and its link-time stub, as the samples
    link (no run path: ``set_env.sh`` points the loader at the real library)."""
    binary = out_dir / "cabi_bench"
    cmd = [
        os.environ.get("CC") or "cc",
        "-O2",
        "-std=c99",
        "-Wall",
        "-Werror",
        f"-I{root / 'runtime' / 'include'}",
        str(C_SOURCE),
        f"-L{root / 'runtime' / 'lib64' / 'stub'}",
        "-lascendcl",
        "-o",
        str(binary),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"compiling {C_SOURCE.name} failed:\n{done.stderr}")
    return binary


def _side_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
    env["NPUFARM_ADDRESS"] = endpoint
    return env


def _run_side(name: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one side to completion and parse the JSON object it prints."""
    done = subprocess.run(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_SIDE_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise BenchError(f"{name} side exited with {done.returncode}:\n{done.stderr[-3000:]}")
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise BenchError(f"{name} side printed no JSON: {done.stdout[-500:]!r}") from exc


def side_commands(plan: Plan, root: Path, binary: Path) -> dict[str, list[str]]:
    """The command of each side: the C program under ``set_env.sh``, and its pyACL twin."""
    tail = plan.side_args()
    return {
        "c": ["bash", "-c", _SOURCED, "bash", str(root), str(binary), *tail],
        "python": [sys.executable, "-m", "benchmarks.cabi_pyside", *tail],
    }


# --------------------------------------------------------------------------------------------
# reducing a round, then the rounds
# --------------------------------------------------------------------------------------------


def _p50_us(samples: list[float]) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1e6, 50)), 2)


def _best_gbps(samples: list[float], nbytes: int) -> float:
    return round(nbytes / min(samples) / 1e9, 2)


def reduce_side(out: dict[str, Any]) -> dict[str, float]:
    """One side's round: p50 µs of each latency loop, best GB/s of each big-copy loop."""
    copied = out["big_bytes"] * out["inner"]
    return {
        "memcpy_4KiB_h2d": _p50_us(out["memcpy_small_h2d_s"]),
        "exec_sync": _p50_us(out["exec_sync_s"]),
        "memcpy_16MiB_h2d": _best_gbps(out["memcpy_big_h2d_s"], copied),
        "memcpy_16MiB_d2h": _best_gbps(out["memcpy_big_d2h_s"], copied),
        "samples": len(out["memcpy_small_h2d_s"]) + len(out["exec_sync_s"]),
    }


def _entry(
    label: str,
    unit: str,
    measured: list[float],
    baseline: list[float] | None,
    target: Target | None = None,
) -> dict[str, Any]:
    """Medians of the rounds, their min/max and the ratio of medians
    (:func:`benchmarks.rounds.rounds_entry`), labelled for the table."""
    return rounds_entry(measured, baseline, unit=unit, target=target, label=label)


def build_entries(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Every metric over the rounds: C latency against Python, memcpy against the raw copy."""

    def col(side: str, key: str) -> list[float]:
        return [r[side][key] for r in rounds]

    out = {
        "memcpy_4KiB_h2d": _entry(
            "C aclrtMemcpy 4 KiB H2D p50 (baseline: Python)",
            "us",
            col("c", "memcpy_4KiB_h2d"),
            col("python", "memcpy_4KiB_h2d"),
            at_most(C_LATENCY_RATIO_TARGET),
        ),
        "exec_sync": _entry(
            "C aclmdlExecuteAsync + aclrtSynchronizeStream p50 (baseline: Python)",
            "us",
            col("c", "exec_sync"),
            col("python", "exec_sync"),
            at_most(C_LATENCY_RATIO_TARGET),
        ),
    }
    for kind, arrow in (("h2d", "H2D"), ("d2h", "D2H")):
        key = f"memcpy_16MiB_{kind}"
        raw_col = col("raw", kind)
        out[f"c_{key}"] = _entry(
            f"C aclrtMemcpy 16 MiB {arrow} (baseline: raw copy)",
            "GB/s",
            col("c", key),
            raw_col,
            at_least(MEMCPY_RATIO_TARGET),
        )
        out[f"python_{key}"] = _entry(
            f"Python acl.rt.memcpy 16 MiB {arrow} (baseline: raw copy)",
            "GB/s",
            col("python", key),
            raw_col,
        )
    return out


def _raw_round(plan: Plan) -> dict[str, float]:
    copy = raw.raw_copy_rate(plan.big_bytes, plan.repeats)
    return {"h2d": copy["host_to_shm_gbps_best"], "d2h": copy["shm_to_host_gbps_best"]}


def run(quick: bool = False, rounds: int | None = None, sdk: str | None = None) -> dict[str, Any]:
    """Build, compile, start the farm, run the interleaved rounds; return the JSON-able result."""
    started = time.perf_counter()
    plan = Plan.for_mode(quick, rounds)
    result: dict[str, Any] = {
        "quick": quick,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "plan": asdict(plan),
    }
    root = sdk_tree(sdk, announce=lambda r: log.info("building the toolkit tree in %s", r))
    result["sdk"] = str(root)
    per_round: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nfcabi-") as work:
        commands = side_commands(plan, root, compile_bench(root, Path(work)))
        with FarmProcess(1, hbm="256MiB") as farm:
            env = _side_env(farm.endpoint)
            for n in range(plan.rounds):
                one: dict[str, Any] = {}
                for side in SIDES:
                    t = time.perf_counter()
                    one[side] = reduce_side(_run_side(side, commands[side], env))
                    one[side]["process_s"] = round(time.perf_counter() - t, 3)
                one["raw"] = _raw_round(plan)
                log.info("round %d/%d: %s", n + 1, plan.rounds, one)
                per_round.append(one)
        result["farm"] = {"cards": 1, "hbm": farm.hbm, "time_scale": 0.0}
        result["farm"].update(leftover_shm=len(farm.leftover_shm), killed=farm.killed)
    result["rounds"] = per_round
    result["cabi"] = build_entries(per_round)
    result["summary"] = summarize(result)
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    return result


# --------------------------------------------------------------------------------------------
# summary and CLI
# --------------------------------------------------------------------------------------------


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows as ``core_report.summarize`` makes them, plus the rounds' min/max."""
    return [
        {
            "metric": item["label"],
            "unit": item["unit"],
            "measured": item["measured"],
            "measured_min": item["measured_min"],
            "measured_max": item["measured_max"],
            "baseline": item["baseline"],
            "baseline_min": item["baseline_min"],
            "baseline_max": item["baseline_max"],
            "ratio": item["ratio"],
            "target": item["target"],
            "met": item["meets_target"],
        }
        for item in result["cabi"].values()
    ]


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if unit == "us" else f"{value:.2f}"


def _range(low: float | None, high: float | None, unit: str) -> str:
    return "-" if low is None else f"{_num(low, unit)}–{_num(high, unit)}"


def markdown_table(summary: list[dict[str, Any]], rounds: int) -> str:
    """The rows as a markdown table: medians of ``rounds`` rounds, min–max, unmet in bold."""
    lines = [
        f"| metric | unit | median of {rounds} | min–max | baseline median | min–max | "
        "ratio of medians | target | met |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in summary:
        unit, met = r["unit"], r["met"]
        lines.append(
            f"| {r['metric']} | {unit} | {_num(r['measured'], unit)} | "
            f"{_range(r['measured_min'], r['measured_max'], unit)} | "
            f"{_num(r['baseline'], unit)} | {_range(r['baseline_min'], r['baseline_max'], unit)} | "
            f"{_num(r['ratio'], 'ratio')} | {r['target'] or '-'} | "
            f"{'-' if met is None else ('yes' if met else '**no**')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cabi",
        description="The C path (libascendcl) against the Python path (pyACL), one farm; JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds, few iterations (smoke)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 2)")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the table on stdout instead of the JSON (JSON still goes to --out)",
    )
    parser.add_argument("--sdk", help="toolkit tree prefix (default: npufarm sdk's own place)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    result = run(quick=args.quick, rounds=args.rounds, sdk=args.sdk)
    emit(result, markdown_table(result["summary"], len(result["rounds"])), args.out, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
