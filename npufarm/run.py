"""``npufarm run``: run an unmodified pyACL program against a farm, then print the farm's ledger
and the program's sync-sanitizer findings.

The farm is an embedded one started for this run (``--config``, ``--faults``, ...; stopped
afterwards whatever happens) or, with ``--address ADDR`` / ``--attach``, a running farm that is
left running; the ledger shown is then the difference between before and after the program
(its ``malformed`` column: items of SUBMITs the cards refused, never counted as tasks). The
program inherits stdio and gets ``NPUFARM_ADDRESS`` and ``NPUFARM_SANITIZER_JSON`` (a temporary
file the client runtime fills at ``acl.finalize()``, removed afterwards). SIGTERM, and SIGINT
not already sent to it by the terminal, are forwarded to the program. Exit status: the
program's, ``128 + N`` when signal N ended it; 2 when the program could not be run (usage,
config, fault plan, a farm that did not start or answer).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from client.embedded import EmbeddedFarm
from core import statefile
from core.config import load_config
from core.errors import NpuFarmError, code_name
from core.fault_plan import FaultPlan
from farm.admin import query_status

__all__ = ["build_parser", "run_main"]

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 60.0
_LOSS_CODE = "507010"  # tasks of a lost card: failed by the broker, never counted by a card
_FARM_OPTIONS = (  # (flag, argparse keywords): options that shape an embedded farm
    ("--config", {"help": "farm config TOML"}),
    ("--faults", {"help": "fault plan TOML (configs/faults/*.toml)"}),
    ("--cards", {"type": int, "help": "number of cards"}),
    ("--time-scale", {"type": float, "help": "latency multiplier (0: no latency)"}),
    ("--skip-sync", {"choices": ("poison", "stale"), "help": "outputs of unsynced tasks"}),
    ("--trace", {"help": "the farm's Chrome/Perfetto trace JSON, written at its stop"}),
    ("--fault-log", {"help": "the farm's fault log JSONL"}),
)
_SKIP_ENV = "NPUFARM_SKIP_SYNC"  # `npufarm up` has no flag for it: the farm reads its environment


class _Refused(Exception):
    """The program was not run; ``args``: (exit status, message)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npufarm run",
        usage="npufarm run [options] -- COMMAND [ARGS...]",
        description="Run a pyACL program against a farm; print its ledger and sanitizer findings.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument(
        "--sanitizer",
        choices=("off", "warn", "raise"),
        help="the program's sync sanitizer mode (NPUFARM_SANITIZER)",
    )
    parser.add_argument("--json", help="also write the summary here as JSON")
    embedded = parser.add_argument_group("embedded farm (default)")
    for flag, keywords in _FARM_OPTIONS:
        embedded.add_argument(flag, **keywords)
    running = parser.add_argument_group("a running farm (left running)")
    running.add_argument("--address", help="the farm at this address")
    running.add_argument(
        "--attach", action="store_true", help="the farm of $NPUFARM_ADDRESS, or the default farm"
    )
    return parser


def _start_embedded(args: argparse.Namespace) -> tuple[EmbeddedFarm, dict[str, Any]]:
    """Validate the config and plan, start an embedded farm, wait until every card is ready."""
    overrides = {"cards": args.cards, "time_scale": args.time_scale, "skip_sync": args.skip_sync}
    config = load_config(args.config, overrides=overrides)
    if args.faults:
        FaultPlan.from_toml(args.faults).check_card_count(len(config.cards))
    extra = ["-v"] * min(args.verbose, 2)
    for flag in ("--cards", "--time-scale", "--trace", "--fault-log"):
        value = getattr(args, flag[2:].replace("-", "_"))
        extra += [flag, str(value)] if value is not None else []
    previous = os.environ.get(_SKIP_ENV)
    if args.skip_sync:
        os.environ[_SKIP_ENV] = args.skip_sync
    try:
        farm = EmbeddedFarm(args.config, faults=args.faults, extra=extra)
    finally:
        os.environ.pop(_SKIP_ENV, None)
        if previous is not None:
            os.environ[_SKIP_ENV] = previous
    deadline = time.monotonic() + _READY_TIMEOUT_S
    try:
        while farm.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(NpuFarmError):  # not listening yet
                status = query_status(farm.address, timeout_s=0.5)
                if all(card["state"] == "ready" for card in status["cards"]):
                    return farm, status
            time.sleep(0.05)
        code = farm.process.poll()
        raise _Refused(
            2,
            f"the farm exited with status {code} at start"
            if code is not None
            else f"the farm was not ready within {_READY_TIMEOUT_S:g}s",
        )
    except BaseException:
        farm.stop()
        raise


def _terminal_sent(signum: int) -> bool:
    """A SIGINT while we are the terminal's foreground group: the program got it too."""
    try:
        return signum == signal.SIGINT and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """Run the program to its end, forwarding SIGINT/SIGTERM; its exit status (128 + signal)."""
    children: list[subprocess.Popen] = []

    def forward(signum, frame):
        if not children or children[0].poll() is not None:
            raise KeyboardInterrupt
        if not _terminal_sent(signum):
            children[0].send_signal(signum)

    handle = threading.current_thread() is threading.main_thread()
    caught = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, forward) for s in caught} if handle else {}
    try:
        try:
            children.append(subprocess.Popen(command, env=env))
        except FileNotFoundError:
            raise _Refused(127, f"{command[0]}: command not found") from None
        except OSError as exc:
            raise _Refused(126, f"{command[0]}: {exc.strerror}") from None
        code = children[0].wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two status replies: ledger, per card, faults."""
    was, now = before.get("ledger") or {}, after["ledger"]
    keys = ("submitted", "completed", "dropped", "malformed")
    ledger = {key: now[key] - was.get(key, 0) for key in keys}
    old_failed = was.get("failed", {})
    ledger["failed"] = {
        c: n - old_failed.get(c, 0) for c, n in now["failed"].items() if n > old_failed.get(c, 0)
    }
    ledger["in_flight"] = now["in_flight"]
    old = {(c["device_id"], c["epoch"]): c.get("stats") or {} for c in before.get("cards", [])}
    cards = []
    for card in after.get("cards", []):
        stats, base = card.get("stats") or {}, old.get((card["device_id"], card["epoch"]), {})
        counts = {k: stats.get(k, 0) - base.get(k, 0) for k in ("submitted", "done", "failed")}
        cards.append({**{k: card[k] for k in ("device_id", "epoch", "state")}, **counts})
    now, was = (after.get("faults") or {}), (before.get("faults") or {}).get("counts", {})
    counts = {k: n - was.get(k, 0) for k, n in now.get("counts", {}).items() if n > was.get(k, 0)}
    faults = {"counts": counts, "events": sum(counts.values()), "log": now.get("log")}
    return {"ledger": ledger, "cards": cards, "faults": faults}


def _settled(address: str, before: dict[str, Any]) -> dict[str, Any]:
    """The farm's figures once in-flight work has ended and the cards' heartbeats caught up."""
    interval_s = float(before.get("heartbeat_interval_s", 0.25))
    deadline = time.monotonic() + min(3.0, max(0.5, 6 * interval_s))
    while True:
        figures = _delta(before, query_status(address, timeout_s=2.0))
        ledger, cards = figures["ledger"], figures["cards"]
        card_failed = sum(n for code, n in ledger["failed"].items() if code != _LOSS_CODE)
        if time.monotonic() > deadline or (
            ledger["in_flight"] == 0
            and sum(c["done"] for c in cards) >= ledger["completed"]
            and sum(c["failed"] for c in cards) >= card_failed
        ):
            return figures
        time.sleep(max(0.02, interval_s / 2))


def _sanitizer(path: str, mode: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):  # off, or the program never reached acl.finalize()
        return {"mode": mode, "report": False}
    counts = {kind: n for kind, n in data.get("counts", {}).items() if n}
    findings = data.get("findings", [])
    return {"mode": data.get("mode", mode), "report": True, "counts": counts, "findings": findings}


def _render(summary: dict[str, Any]) -> None:
    console = Console(width=None if sys.stdout.isatty() else 160)
    farm = summary.get("farm")
    if farm is None:
        console.print(Text(f"farm ledger unavailable: {summary.get('farm_error')}"))
    else:
        ledger = farm["ledger"]
        table = Table(title=f"farm ledger ({summary['address']})")
        columns = ("", "submitted", "completed", "failed", "dropped", "in flight", "malformed")
        for column in columns:
            table.add_column(column, justify="right" if column else "left")
        totals = {**ledger, "failed": sum(ledger["failed"].values())}
        keys = ("submitted", "completed", "failed", "dropped", "in_flight", "malformed")
        table.add_row("all cards", *(str(totals[key]) for key in keys))
        for card in farm["cards"]:
            state = f" ({card['state']})" if card["state"] != "ready" else ""
            counts = (str(card[key]) for key in ("submitted", "done", "failed"))
            table.add_row(f"card {card['device_id']}{state}", *counts, "", "", "")
        console.print(table)
        if ledger["failed"]:
            codes = Table(title="failed by ACL code")
            for column in ("code", "name", "tasks"):
                codes.add_column(column, justify="left" if column == "name" else "right")
            for code, n in ledger["failed"].items():
                codes.add_row(code, code_name(int(code)), str(n))
            console.print(codes)
        faults = farm["faults"]
        if faults["events"]:
            kinds = ", ".join(f"{kind}×{n}" for kind, n in sorted(faults["counts"].items()))
            where = f"in {faults['log']}" if faults["log"] else "(--fault-log PATH keeps the log)"
            console.print(Text(f"fault log: {faults['events']} events ({kinds}) {where}"))
    sanitizer = summary["sanitizer"]
    if not sanitizer["report"]:
        note = "off" if sanitizer["mode"] == "off" else "no report (no acl.finalize() reached)"
        console.print(Text(f"sanitizer {note}"))
    elif not sanitizer["findings"]:
        console.print(Text(f"sanitizer ({sanitizer['mode']}): no findings"))
    else:
        kinds = ", ".join(f"{kind}×{n}" for kind, n in sanitizer["counts"].items())
        head = f"sanitizer ({sanitizer['mode']}): {len(sanitizer['findings'])} finding(s): {kinds}"
        console.print(Text(head), soft_wrap=True)
        for f in sanitizer["findings"]:
            line = f"  {f['kind']}: {f['call']} (device {f['device']}, stream {f['stream']}, "
            console.print(Text(f"{line}task {f['task']}) at {f['where']}"), soft_wrap=True)
    if summary.get("trace"):
        console.print(Text(f"trace: {summary['trace']}"), soft_wrap=True)
    console.print(Text(f"program exit status: {summary['exit_code']}"))


def _execute(args: argparse.Namespace, command: list[str], report: str) -> dict[str, Any]:
    farm = None
    if args.address or args.attach:
        given = [f for f, _ in _FARM_OPTIONS if getattr(args, f[2:].replace("-", "_")) is not None]
        if given:
            raise _Refused(2, f"{', '.join(given)}: only for an embedded farm, not --address")
        address = args.address or statefile.resolve_address()
        if not address:
            raise _Refused(2, "--attach: no NPUFARM_ADDRESS and no running default farm")
        before = query_status(address)
    else:
        farm, before = _start_embedded(args)
        address = farm.address
    summary: dict[str, Any] = {"schema": "npufarm.run/1", "command": command, "address": address}
    try:
        env = {**os.environ, "NPUFARM_ADDRESS": address, "NPUFARM_SANITIZER_JSON": report}
        if args.sanitizer:
            env["NPUFARM_SANITIZER"] = args.sanitizer
        logger.info("running %s against the farm at %s", command, address)
        summary["exit_code"] = _run_child(command, env)
        mode = env.get("NPUFARM_SANITIZER") or before.get("sanitizer") or "off"
        summary["sanitizer"] = _sanitizer(report, mode)
        try:  # a terminal's Ctrl-C reaches the embedded farm too: it stops
            if farm is not None and farm.process.poll() is not None:
                raise NpuFarmError(f"the farm stopped (exit status {farm.process.returncode})")
            summary["farm"] = _settled(address, before)
        except NpuFarmError as exc:
            summary["farm"], summary["farm_error"] = None, str(exc)
    finally:
        if farm is not None:
            farm.stop()
    log = (summary["farm"] or {}).get("faults", {}).get("log")
    if log and not Path(log).exists():  # it was in the embedded farm's directory
        summary["farm"]["faults"]["log"] = None
    if args.trace:
        summary["trace"] = str(Path(args.trace).resolve())
    return summary


def run_main(argv: list[str]) -> int:
    """``npufarm run [options] -- COMMAND...``; the program's exit status (2: not run)."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv[:split])
        if not argv[split + 1 :]:
            parser.error("no command after '--' (npufarm run [options] -- python prog.py ...)")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    command = argv[split + 1 :]
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    fd, report = tempfile.mkstemp(prefix="npufarm-run-", suffix=".json")
    os.close(fd)
    try:
        summary = _execute(args, command, report)
        _render(summary)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary["exit_code"]
    except _Refused as exc:
        print(f"npufarm run: {exc.args[1]}", file=sys.stderr)
        return exc.args[0]
    except (NpuFarmError, OSError) as exc:
        print(f"npufarm run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        Path(report).unlink(missing_ok=True)
