"""A/B comparison of two git refs of this repository, in one invocation, on this box.

::

    python -m benchmarks.compare OLD_REF NEW_REF [--rounds N] [--quick] [--module M]
                                 [--only PATTERN ...] [--out FILE] [--markdown]

Each ref is checked out with ``git worktree add --detach`` under one temp dir (``.`` as a ref
means this checkout as it is, uncommitted changes included, with no worktree). The benchmark
module (``benchmarks.core`` by default) then runs alternately OLD, NEW, OLD, NEW ... for N rounds,
each time as ``<this interpreter> -m M [--quick] --out <json>`` with cwd and ``PYTHONPATH`` set to
that ref's root, so each side runs its own code: the benchmark, the ``python -m ... up`` farm it
starts from that cwd, and the cards the farm forks (its forkserver inherits the farm's
``sys.path``). Alternating spreads slow drifts of the box (other load, thermal) over both sides.
A probe before the first round checks that the module, ``acl`` and ``client`` resolve inside
the ref's root, and asks the module's ``--help`` which flags it has: an old module without
``--quick`` runs without it (noted in the result), one without ``--out`` is read from stdout.

The result (:mod:`benchmarks.compare_stats`): per metric (every finite number in the JSON, nested
keys joined with dots; lists are skipped) the median, min and max of each side, and the NEW/OLD
ratio of the medians; metrics found on one side only are listed as missing on the other. JSON on
stdout (and in ``--out``); ``--markdown`` prints an aligned table instead. Worktrees are removed
(``git worktree remove --force``) on every exit path, Ctrl-C and SIGTERM included; a run still
going then gets SIGINT (so its farms stop cleanly), and its process group SIGKILL if it does not
exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.compare_stats import (
    compare_metrics,
    flatten_metrics,
    markdown_table,
    select_metrics,
)

__all__ = ["Side", "build_parser", "compare", "main", "plan_flags"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "npufarm.bench.compare/1"
CURRENT = "."  # the ref that means "this checkout, as it is"

_STOP_GRACE_S = 30.0  # a run interrupted by SIGINT gets this long to stop its farms
_PROBE_TIMEOUT_S = 120.0


def plan_flags(help_text: str | None, quick: bool) -> tuple[list[str], bool, list[str]]:
    """From a module's ``--help``: the flags to pass, whether ``--out`` works, and notes.

    ``help_text`` None (no usable ``--help``) passes only what was asked for and reads stdout.
    """
    notes: list[str] = []
    if help_text is None:
        notes.append("no --help: flags passed as asked, result read from stdout")
        return (["--quick"] if quick else []), False, notes
    flags = []
    if quick:
        if "--quick" in help_text:
            flags.append("--quick")
        else:
            notes.append("module has no --quick: ran the full benchmark")
    has_out = "--out" in help_text
    if not has_out:
        notes.append("module has no --out: result read from stdout")
    return flags, has_out, notes


# --------------------------------------------------------------------------------------------
# one side: a ref checked out, probed and run
# --------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One side of the comparison: a ref, its checkout, how to run its module, its runs."""

    name: str  # "old" or "new"
    ref: str
    commit: str = ""
    root: Path | None = None
    worktree: bool = False  # root is a worktree this tool created (and removes)
    flags: list[str] = field(default_factory=list)
    has_out: bool = True
    notes: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, float]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """This process's environment for a run of this side: ``PYTHONPATH`` is the side's root
        only, and no ``NPUFARM_*`` variable leaks into the benchmark or its farms."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
        env["PYTHONPATH"] = str(self.root)
        return env

    def summary(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "commit": self.commit,
            "root": str(self.root),
            "worktree": self.worktree,
            "flags": self.flags,
            "notes": self.notes,
            "origins": self.origins,
            "runs": self.runs,
        }


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def _checkout(side: Side, tmp: Path) -> None:
    """Resolve the ref and give the side a root: a new detached worktree, or this checkout."""
    if side.ref == CURRENT:
        side.commit = _git("rev-parse", "HEAD") + "+worktree"
        side.root = REPO
        return
    side.commit = _git("rev-parse", "--verify", f"{side.ref}^{{commit}}")
    side.root = tmp / side.name
    side.worktree = True  # before the add: an interrupted add is cleaned up too
    log.info("compare: worktree for %s (%s) at %s", side.ref, side.commit[:10], side.root)
    _git("worktree", "add", "--detach", str(side.root), side.commit)


def _remove_worktree(side: Side) -> None:
    if not side.worktree or side.root is None:
        return
    try:
        _git("worktree", "remove", "--force", str(side.root))
    except subprocess.CalledProcessError as exc:
        log.warning("compare: git worktree remove %s failed: %s", side.root, exc.stderr.strip())
        shutil.rmtree(side.root, ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "prune")


_PROBE = """
import importlib.util, json, sys
origins = {"module": importlib.util.find_spec(sys.argv[1]).origin}
import acl, client
origins.update(acl=acl.__file__, client=client.__file__)
print(json.dumps(origins))
"""


def _probe(side: Side, module: str, quick: bool) -> None:
    """Check where the side's code comes from, and which flags its module takes."""
    assert side.root is not None
    cmd = [sys.executable, "-c", _PROBE, module]
    done = subprocess.run(
        cmd, cwd=side.root, env=side.env(), capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{side.name} ({side.ref}): cannot import {module}: {done.stderr[-800:]}"
        )
    side.origins = json.loads(done.stdout.strip().splitlines()[-1])
    root = side.root.resolve()
    strays = {k: v for k, v in side.origins.items() if not Path(v).resolve().is_relative_to(root)}
    if strays:
        raise RuntimeError(f"{side.name} ({side.ref}) would run code from outside {root}: {strays}")
    helped = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=side.root,
        env=side.env(),
        capture_output=True,
        text=True,
        timeout=_PROBE_TIMEOUT_S,
    )
    help_text = helped.stdout if helped.returncode == 0 else None
    side.flags, side.has_out, side.notes = plan_flags(help_text, quick)
    for note in side.notes:
        log.warning("compare: %s (%s): %s", side.name, side.ref, note)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT the run (its finally blocks stop its farms); SIGKILL its process group after a
    grace period. The run is the leader of its own process group (``start_new_session``)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("compare: run %d ignored SIGINT; killing its process group", proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _default_sigint() -> None:
    """In the run's child, before exec: SIGINT back to default, so that :func:`_stop` works even
    when this tool was started with SIGINT ignored (``nohup``, a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_once(side: Side, module: str, index: int, tmp: Path, timeout_s: float) -> None:
    """One run of the side's module; its flattened result joins ``side.results``."""
    assert side.root is not None
    out = tmp / f"{side.name}-{index}.json"
    cmd = [sys.executable, "-m", module, *side.flags]
    if side.has_out:
        cmd += ["--out", str(out)]
    stdout_path, stderr_path = tmp / f"{side.name}-{index}.stdout", tmp / f"{side.name}-{index}.err"
    log.info("compare: round %d %s (%s): %s", index + 1, side.name, side.ref, " ".join(cmd[1:]))
    started = time.perf_counter()
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=side.root,
            env=side.env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        try:
            returncode = proc.wait(timeout_s)
        except BaseException:  # timeout, Ctrl-C, SIGTERM: never leave a run behind
            _stop(proc)
            raise
    record: dict[str, Any] = {
        "round": index + 1,
        "returncode": returncode,
        "elapsed_s": round(time.perf_counter() - started, 2),
        "error": None,
    }
    try:
        if returncode != 0:
            raise RuntimeError(f"exit code {returncode}")
        text = (out if side.has_out else stdout_path).read_text(encoding="utf-8")
        side.results.append(flatten_metrics(json.loads(text)))
    except (RuntimeError, OSError, ValueError) as exc:
        tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-1500:]
        record["error"] = f"{exc}; stderr tail: {tail}"
        log.error("compare: round %d %s failed: %s\n%s", index + 1, side.name, exc, tail)
    side.runs.append(record)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit here, so the finally blocks remove the worktrees."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Check out both refs, probe them, run the rounds alternately; the JSON-able result."""
    started = time.perf_counter()
    sides = [Side("old", args.old_ref), Side("new", args.new_ref)]
    tmp = Path(tempfile.mkdtemp(prefix="nfcmp-", dir="/tmp"))
    try:
        with _sigterm_unwinds():
            for side in sides:
                _checkout(side, tmp)
                _probe(side, args.module, args.quick)
            for index in range(args.rounds):
                for side in sides:
                    _run_once(side, args.module, index, tmp, args.timeout_s)
    finally:
        for side in sides:
            _remove_worktree(side)
        shutil.rmtree(tmp, ignore_errors=True)
    old, new = ([select_metrics(r, args.only) for r in s.results] for s in sides)
    return {
        "schema": SCHEMA,
        "module": args.module,
        "quick": args.quick,
        "rounds": args.rounds,
        "only": args.only,
        "old": sides[0].summary(),
        "new": sides[1].summary(),
        **compare_metrics(old, new),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="A/B-compare a benchmark module between two git refs of this repository.",
    )
    parser.add_argument("old_ref", help="the baseline ref (commit, tag, branch; '.' = as is)")
    parser.add_argument("new_ref", help="the ref compared against it ('.' = this checkout)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="pass --quick to the module")
    parser.add_argument("--module", default="benchmarks.core", help="default benchmarks.core")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep metrics matching this fnmatch pattern (repeatable), e.g. 'farm.*.measured'",
    )
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per run (default 1800)")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument(
        "--markdown", action="store_true", help="print the table on stdout instead of the JSON"
    )
    parser.add_argument("--log-level", default="INFO", help="progress on stderr (default INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    try:
        result = compare(args)
    except KeyboardInterrupt:
        log.error("compare: interrupted; worktrees removed")
        return 130
    except subprocess.CalledProcessError as exc:  # git: an unknown ref, a worktree not added
        log.error("compare: %s failed: %s", " ".join(exc.cmd), (exc.stderr or "").strip())
        return 2
    except RuntimeError as exc:  # a side that cannot run its module at all
        log.error("compare: %s", exc)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(markdown_table(result["metrics"]) if args.markdown else text)
    failed = [r for s in ("old", "new") for r in result[s]["runs"] if r["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
