"""Every benchmark that judges the farm's timing, in one run: ``python -m benchmarks.suite``.

::

    python -m benchmarks.suite [--quick] [--out-dir DIR] [--parts core,fidelity,...]
                               [--readme README.md]

    suite ─▶ fidelity  npufarm bench, 5 ms model (configs/models/matmul-5ms.toml), a fresh
      │                embedded 8-card farm per run: 1 card / 1 in flight, then 8 cards at
      │                70 % (1,120 req/s), alternating, --rounds times
      │                                          ─▶ fidelity/<case>-<k>/result.json, fidelity.json
      ├─▶ tail     python -m benchmarks.tail (where the p99 goes, one run per case)  ─▶ tail.json
      ├─▶ core     python -m benchmarks.core (overhead vs raw, interleaved rounds)   ─▶ core.json
      ├─▶ onnx     python -m benchmarks.onnx (tiny CNN, the 12-step chain)           ─▶ onnx.json
      │            ... --compute-only --chain-steps HEAVY                      ─▶ onnx-heavy.json
      └─▶ scale    python -m benchmarks.scale (cards, clients, 256 cards) ─▶ scale/scale.json, PNGs
    then: suite.json (goals: benchmarks.suite_report.goals) and suite.md; with --readme, the
    block between the README's benchmarks.suite markers becomes suite.md.

Each part is its own process, run from this checkout (``python -m`` with cwd at the repository
root), its stderr kept in ``<part>.log``; a part that fails is reported (its log's tail in
``suite.json``) and the others still run. The parts run one after another, never at once: each
needs the box's two cores to itself. A full run takes ~12-15 min on the 2-core box; ``--quick``
(each part's quick mode, 1 round, 2 s windows) ~3 min is a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.rounds import spread
from benchmarks.suite_report import FIDELITY_CASES, goals, markdown, replace_block

__all__ = ["PARTS", "Plan", "load_docs", "run", "main"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PARTS = ("fidelity", "tail", "core", "onnx", "scale")
MODEL_5MS = REPO / "configs" / "models" / "matmul-5ms.toml"
_CASE_ARGS = {
    "1card": ["--cards", "0", "--concurrency", "1", "--workers", "1"],
    "8cards": [
        *("--cards", "all", "--request-rate", "1120", "--arrival", "constant"),
        *("--streams-per-card", "1", "--workers", "2"),
    ],
}
_FIDELITY_FIGURES = ("p50_ms", "p99_ms", "p50_ratio", "p99_ratio")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one suite run does. ``rounds``: fidelity runs per case (the core benchmark has its
    own 5 rounds, 2 quick); ``*_s``: measured / warm-up seconds of each fidelity and tail run."""

    quick: bool = False
    parts: tuple[str, ...] = PARTS
    rounds: int = 5
    fidelity_s: float = 10.0
    warmup_s: float = 1.0
    tail_s: float = 10.0
    heavy_steps: int = 36
    big_cards: int | None = None

    @classmethod
    def for_mode(cls, quick: bool, **changes: Any) -> Plan:
        base = (
            cls(quick=True, rounds=1, fidelity_s=2.0, warmup_s=0.5, tail_s=2.0) if quick else cls()
        )
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def _run_part(name: str, argv: list[str], out_dir: Path, timeout_s: float) -> dict[str, Any]:
    """``python -m <argv>`` from the repository root, stderr to ``<name>.log``; its outcome."""
    started = time.perf_counter()
    log_path = out_dir / f"{name}.log"
    load = round(os.getloadavg()[0], 2)
    with log_path.open("ab") as err:
        try:
            done = subprocess.run(
                [sys.executable, "-m", *argv],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=timeout_s,
                check=False,
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    outcome: dict[str, Any] = {
        "argv": argv,
        "returncode": code,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "loadavg_1m_at_start": load,
        "error": None,
    }
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        outcome["error"] = f"exit {code if code is not None else 'timeout'}: " + " / ".join(tail)
        log.warning("suite: %s failed (%s)", name, outcome["error"])
    return outcome


def _fidelity_farm(runtime_dir: Path) -> str:
    return f'[farm]\nname = "suite-fidelity"\nruntime_dir = "{runtime_dir}"\n[cards]\ncount = 8\n'


def _fidelity(plan: Plan, out_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``plan.rounds`` runs of each case, alternating; per case the spread of each figure."""
    base = out_dir / "fidelity"
    base.mkdir(parents=True, exist_ok=True)
    runtime_dir = Path(tempfile.mkdtemp(prefix="nsf", dir="/tmp"))  # short: ipc path limit
    config = base / "farm.toml"
    config.write_text(_fidelity_farm(runtime_dir), encoding="utf-8")
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in FIDELITY_CASES}
    outcomes = []
    try:
        for k in range(plan.rounds):
            for case in FIDELITY_CASES:
                run_dir = base / f"{case}-{k + 1}"
                argv = [
                    *("npufarm", "bench", "--config", str(config), "--model", str(MODEL_5MS)),
                    *_CASE_ARGS[case],
                    *("--duration-s", str(plan.fidelity_s), "--warmup-s", str(plan.warmup_s)),
                    *("--out", str(run_dir), "--quiet"),
                ]
                outcome = _run_part(f"fidelity-{case}", argv, out_dir, 120.0 + plan.fidelity_s)
                outcomes.append(outcome)
                if outcome["error"] is None:
                    runs[case].append(_accuracy(run_dir / "result.json"))
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    cases = {case: _reduce(found) for case, found in runs.items() if found}
    return {"model": MODEL_5MS.name, "plan_rounds": plan.rounds, "cases": cases}, outcomes


def _accuracy(result_path: Path) -> dict[str, Any]:
    result = json.loads(result_path.read_text(encoding="utf-8"))
    figure = result["phases"][0]["accuracy"] or {}
    leads = [v for v in (result["accuracy"].get("completion_lead_us") or {}).values() if v]
    return {
        **{name: figure.get(name) for name in (*_FIDELITY_FIGURES, "requests")},
        "lead_us": max(leads) if leads else None,
        "loadavg": os.getloadavg()[0],
    }


def _reduce(found: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (*_FIDELITY_FIGURES, "lead_us", "requests"):
        values = [run[name] for run in found if run.get(name) is not None]
        out[name] = {**spread(values), "rounds": values} if values else None
    return out


def _part_argv(plan: Plan, part: str, out_dir: Path) -> list[tuple[str, list[str]]]:
    quick = ["--quick"] if plan.quick else []
    if part == "core":
        return [("core", ["benchmarks.core", *quick, "--out", str(out_dir / "core.json")])]
    if part == "tail":
        timing = ["--duration-s", str(plan.tail_s), "--warmup-s", str(plan.warmup_s)]
        extra = ["--no-floor"] if plan.quick else []
        return [("tail", ["benchmarks.tail", *timing, *extra, "--out", str(out_dir / "tail.json")])]
    if part == "onnx":
        heavy = ["--compute-only", "--chain-steps", str(plan.heavy_steps)]
        return [
            ("onnx", ["benchmarks.onnx", *quick, "--out", str(out_dir / "onnx.json")]),
            (
                "onnx-heavy",
                ["benchmarks.onnx", *quick, *heavy, "--out", str(out_dir / "onnx-heavy.json")],
            ),
        ]
    if part == "scale":
        big = ["--big-cards", str(plan.big_cards)] if plan.big_cards is not None else []
        return [("scale", ["benchmarks.scale", *quick, *big, "--out-dir", str(out_dir / "scale")])]
    raise ValueError(f"unknown part {part!r} (parts: {', '.join(PARTS)})")


def _load(out_dir: Path, name: str) -> Any:
    path = out_dir / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def load_docs(out_dir: Path) -> dict[str, Any]:
    """The parts' documents found in ``out_dir`` (None / absent where a part did not run)."""
    docs: dict[str, Any] = {name: _load(out_dir, f"{name}.json") for name in ("fidelity", "core")}
    docs["tail"] = _load(out_dir, "tail.json")
    docs["scale"] = _load(out_dir, "scale/scale.json")
    docs["onnx"] = {
        name: doc
        for name in ("onnx", "onnx-heavy")
        if (doc := _load(out_dir, f"{name}.json")) is not None
    }
    return docs


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (as the README shows it)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def run(plan: Plan, out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``plan``'s parts into ``out_dir``; (suite.json's document, the parts' documents)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    suite: dict[str, Any] = {
        "schema": "npufarm.bench.suite/1",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "out_dir": _shown(out_dir),
        "plan": dataclasses.asdict(plan),
        "host": {"cpus": os.cpu_count(), "loadavg_at_start": _loadavg()},
        "steps": {},
    }
    docs: dict[str, Any] = {}
    for part in plan.parts:
        log.info("suite: %s ...", part)
        if part == "fidelity":
            fidelity, outcomes = _fidelity(plan, out_dir)
            (out_dir / "fidelity.json").write_text(json.dumps(fidelity, indent=2) + "\n")
            for k, outcome in enumerate(outcomes):
                suite["steps"][f"fidelity#{k + 1}"] = outcome
            continue
        for name, argv in _part_argv(plan, part, out_dir):
            suite["steps"][name] = _run_part(name, argv, out_dir, 3600.0)
    docs.update(load_docs(out_dir))
    suite["host"]["loadavg_at_end"] = _loadavg()
    suite["elapsed_s"] = round(time.perf_counter() - started, 1)
    return suite, docs


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="every part's quick mode (a smoke test)"
    )
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results" / "suite"))
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}"
    )
    parser.add_argument("--rounds", type=int, help="fidelity runs per case (default 5, quick 1)")
    parser.add_argument("--big-cards", type=int, help="the scale part's big farm (0: none)")
    parser.add_argument("--readme", help="replace this file's benchmarks.suite block with suite.md")
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: rewrite suite.md (and --readme) from the files of --out-dir's run",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"unknown parts {unknown}; parts: {', '.join(PARTS)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    out_dir = Path(args.out_dir).resolve()
    if args.render:
        suite = json.loads((out_dir / "suite.json").read_text(encoding="utf-8"))
        suite["out_dir"] = _shown(out_dir)
        docs = load_docs(out_dir)
    else:
        plan = Plan.for_mode(args.quick, parts=parts, rounds=args.rounds, big_cards=args.big_cards)
        suite, docs = run(plan, out_dir)
    suite["goals"] = goals(docs)
    text = markdown(suite, docs)
    (out_dir / "suite.json").write_text(json.dumps(suite, indent=2) + "\n", encoding="utf-8")
    (out_dir / "suite.md").write_text(text + "\n", encoding="utf-8")
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(replace_block(readme.read_text(encoding="utf-8"), text), encoding="utf-8")
    sys.stdout.write(text + "\n")
    failed = [name for name, step in suite["steps"].items() if step["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
