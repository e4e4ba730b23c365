"""Chaos soak: 8 cards, several client processes and threads, a seeded mixed fault plan, seeded
SIGKILLs of clients and cards, runtime injections, resets and finalize/init cycles; then proof.

::

    python -m benchmarks.soak --duration 600 --seed 1 --out benchmarks/results/soak.json

Why: a fault experiment is worth what the farm's own correctness is worth. At the end the soak
checks and reports (benchmarks/soak_checks.py holds the verdicts):

- every task settled exactly once: the farm ledger balances with nothing in flight and agrees
  with the clients' ledgers and journals (killed clients bound it from both sides);
- no loss declared that no fault or kill caused (farm log "card N epoch E lost" lines against
  the fault log and the SIGKILLs sent), and every killed card was declared lost;
- no output read back wrong with a success code beyond the ``corrupt`` faults fired;
- HBM used returns to 0 within 2x the heartbeat expiry (+ margin) once every client is gone,
  and no /dev/shm segment is left but the live cards' own;
- no growth of /dev/shm segments, fds, threads or anonymous RSS of the broker and cards beyond
  :class:`GrowthBounds` (psutil, sampled after warm-up and at the end);
- the same seed gives the same schedule and the same fault events on a fixed call sequence.

Writes the JSON report (``--out``) and prints a short table. Exit 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks import soak_checks as checks
from benchmarks.farm_probe import LOSS_LINE, MODELS, REPO, acl_roundtrip, start_farm
from benchmarks.soak_io import (
    read_journals,
    resource_sample,
    write_config,
    write_models,
    write_plan,
)
from benchmarks.soak_plan import Action, build_plan, build_schedule, replay_keys
from core.errors import NpuFarmError
from farm.admin import broker_request, query_status

__all__ = ["run_soak", "main"]

logger = logging.getLogger(__name__)

TICK_S = 0.25
HBM_MARGIN_S = 1.0  # on top of 2x the heartbeat expiry: stats ride on heartbeats
CLIENT_STOP_S = 30.0


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.expiry_s = args.heartbeat_interval_s * args.liveness
        self.plan = build_plan(args.seed, args.cards)
        self.schedule = build_schedule(args.seed, args.duration, args.cards, args.clients)
        self.kills_card: list[dict] = []
        self.kills_client: list[dict] = []
        self.actions_done: list[dict] = []
        self.clients: dict[int, subprocess.Popen] = {}
        self.generation: dict[int, int] = {}
        self.violations: list[str] = []
        self.rtts: list[tuple] = []  # (at_s, status rtt ms, broker cpu ms meanwhile, load1)
        self.report: dict[str, Any] = {}

    # -- processes -------------------------------------------------------------------------
    def start_client(self, slot: int, remaining_s: float) -> None:
        generation = self.generation.get(slot, -1) + 1
        self.generation[slot] = generation
        env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
        env["NPUFARM_ADDRESS"] = self.farm.address
        env["PYTHONPATH"] = str(REPO)
        journal = self.work / f"client{slot}-g{generation}.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.soak_client",
            "--journal",
            str(journal),
            "--client",
            str(slot),
            "--generation",
            str(generation),
            "--seed",
            str(self.args.seed),
            "--cards",
            str(self.args.cards),
            "--threads",
            str(self.args.threads),
            "--duration-s",
            f"{remaining_s:.3f}",
            "--models",
            str(self.work / "models"),
        ]
        log = open(self.work / f"client{slot}-g{generation}.log", "w")  # noqa: SIM115
        self.clients[slot] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
        log.close()

    def act(self, action: Action, now_s: float) -> None:
        record = {"at_s": round(now_s, 3), **action.to_dict()}
        if action.kind == "kill_client":
            process = self.clients.get(action.target)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                self.kills_client.append({"slot": action.target, "pid": process.pid})
                record["pid"] = process.pid
                self.start_client(action.target, self.args.duration - now_s)
        elif action.kind == "kill_card":
            card = self.status()["cards"][action.target]
            if card["state"] == "ready" and card["pid"]:
                os.kill(card["pid"], signal.SIGKILL)
                kill = {"card": action.target, "epoch": card["epoch"], "pid": card["pid"]}
                self.kills_card.append(kill)
                record.update(kill)
            else:
                record["skipped"] = f"card {card['state']}"
        else:
            body = (
                {"op": "inject", "rule": action.rule}
                if action.kind == "inject"
                else {"op": "recover", "kinds": list(action.kinds or ())}
            )
            try:
                record["reply"] = broker_request(self.farm.address, body, timeout_s=5.0)
            except NpuFarmError as exc:
                self.violations.append(f"{action.kind} request not answered: {exc}")
        self.actions_done.append(record)

    def status(self) -> dict:
        return query_status(self.farm.address, timeout_s=5.0)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        args = self.args
        write_models(self.work / "models", MODELS)
        config = write_config(self.work / "soak.toml", args)
        plan_path = write_plan(self.work / "plan.toml", self.plan)
        fault_log = self.work / "faults.jsonl"
        self.farm = start_farm(
            cards=args.cards,
            config=config,
            log_path=self.work / "farm.log",
            extra=["--faults", str(plan_path), "--fault-log", str(fault_log)],
        )
        try:
            self.drive()
            self.settle()
        finally:
            for process in self.clients.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
            exit_code = self.farm.stop()
        if exit_code != 0:
            self.violations.append(f"farm exit code {exit_code}")
        self.judge(fault_log)
        self.farm.cleanup()
        return self.report

    def drive(self) -> None:
        args = self.args
        started = time.monotonic()
        for slot in range(args.clients):
            self.start_client(slot, args.duration)
        pending = list(self.schedule)
        warm_at_s = args.duration * 0.15 - 1.0
        while (now_s := time.monotonic() - started) < args.duration:
            if "start" not in self.report and now_s >= warm_at_s:
                self.report["start"] = resource_sample(self.farm, self.status())
            while pending and pending[0].t_s <= now_s:
                self.act(pending.pop(0), now_s)
            if self.farm.process.poll() is not None:
                self.violations.append(f"farm died at {now_s:.1f}s")
                return
            self.watch(now_s)
            time.sleep(TICK_S)
        self.report["duration_s"] = round(time.monotonic() - started, 2)
        self.report["broker_watch"] = self.watch_summary()

    def watch(self, now_s: float) -> None:
        """How long the broker takes to answer STATUS, and how busy it was meanwhile: a long
        answer with the broker's CPU idle means it was starved, with it busy that it was
        stuck in its own work (diagnosis for losses the cards blame on a silent broker)."""
        broker = psutil.Process(self.farm.process.pid)
        cpu_before = sum(broker.cpu_times()[:2])
        t0 = time.monotonic()
        try:
            self.status()
        except NpuFarmError:
            pass
        rtt_s = time.monotonic() - t0
        cpu_s = sum(broker.cpu_times()[:2]) - cpu_before
        self.rtts.append(
            (
                round(now_s, 2),
                round(rtt_s * 1000, 1),
                round(cpu_s * 1000, 1),
                round(psutil.getloadavg()[0], 2),
            )
        )

    def watch_summary(self) -> dict[str, Any]:
        if not self.rtts:
            return {}
        ranked = sorted(self.rtts, key=lambda r: r[1])
        return {
            "status_rtt_ms_p50": ranked[len(ranked) // 2][1],
            "status_rtt_ms_max": ranked[-1][1],
            "slowest": [
                dict(zip(("at_s", "rtt_ms", "broker_cpu_ms", "load1"), r)) for r in ranked[-5:]
            ],
        }

    def settle(self) -> None:
        """Stop the clients (one by SIGKILL, the others by SIGTERM: they finalize), then watch
        HBM come back, the ledger drain, resources settle."""
        last = self.args.seed % self.args.clients  # dies by SIGKILL: reclaim is timed too
        for slot, process in self.clients.items():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL if slot == last else signal.SIGTERM)
                if slot == last:
                    self.kills_client.append({"slot": slot, "pid": process.pid, "at_end": True})
        deadline = time.monotonic() + CLIENT_STOP_S
        for slot, process in self.clients.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.violations.append(f"client {slot} did not stop within {CLIENT_STOP_S}s")
                process.kill()
                process.wait()
        gone_s = time.monotonic()
        bound_s = 2 * self.expiry_s + HBM_MARGIN_S
        samples = []
        while time.monotonic() - gone_s < max(3 * bound_s, 5.0):
            status = self.status()
            used = sum(
                (c.get("stats") or {}).get("hbm_used", 0)
                for c in status["cards"]
                if c["state"] == "ready"
            )
            samples.append((round(time.monotonic() - gone_s, 3), used))
            if used == 0:
                break
            time.sleep(0.05)
        problems, zero_s = checks.check_hbm_reclaimed(samples, bound_s)
        self.violations += problems
        self.report["hbm"] = {"bound_s": bound_s, "zero_after_s": zero_s, "last": samples[-1]}
        status = self._drained()
        self.report["ledger"] = status["ledger"]
        self.report["end"] = resource_sample(self.farm, status)
        self.report["cards_end"] = [
            {k: c[k] for k in ("device_id", "state", "epoch", "pid")} for c in status["cards"]
        ]
        try:  # the plan's own faults (e.g. malloc OOM) must not fail the final check
            broker_request(self.farm.address, {"op": "recover"}, timeout_s=5.0)
        except NpuFarmError as exc:
            self.violations.append(f"recover before the final check: {exc}")
        probe = [
            acl_roundtrip(self.farm.address, c["device_id"])
            for c in status["cards"]
            if c["state"] == "ready"
        ]
        self.violations += [f"final client check: {p}" for p in probe if p]

    def _drained(self) -> dict:
        deadline = time.monotonic() + 5.0
        while True:
            status = self.status()
            if status["ledger"]["in_flight"] == 0 or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def judge(self, fault_log: Path) -> None:
        args, report = self.args, self.report
        events = (
            [json.loads(line) for line in fault_log.read_text().splitlines() if line]
            if fault_log.exists()
            else []
        )
        losses = [
            (int(m.group(1)), int(m.group(2)), m.group(3).strip())
            for line in self.farm.log_text().splitlines()
            if (m := LOSS_LINE.search(line))
        ]
        sessions = read_journals(sorted(self.work.glob("client*-g*.jsonl")))
        v = self.violations
        if "ledger" in report:
            v += checks.check_ledgers(report["ledger"], sessions)
        loss_problems, explained = checks.check_losses(losses, events, self.kills_card)
        v += loss_problems
        v += checks.check_wrong_outputs(sessions, events)
        if "start" in report and "end" in report:
            v += checks.check_growth(report["start"], report["end"], checks.GrowthBounds())
            v += [
                f"/dev/shm: {name} left after every client was gone"
                for name in report["end"]["stray_segments"]
            ]
        again = build_schedule(args.seed, args.duration, args.cards, args.clients)
        v += checks.check_same("schedule", self.schedule, again)
        replay = replay_keys(self.plan, args.cards)
        v += checks.check_same(
            "fault plan replay", replay, replay_keys(build_plan(args.seed, args.cards), args.cards)
        )
        report.update(
            seed=args.seed,
            cards=args.cards,
            clients=args.clients,
            threads=args.threads,
            heartbeat_expiry_s=self.expiry_s,
            plan=self.plan.to_dict(),
            schedule=[a.to_dict() for a in self.schedule],
            actions=self.actions_done,
            card_kills=self.kills_card,
            client_kills=self.kills_client,
            losses=explained,
            fault_events=_event_counts(events),
            replay_events=len(replay),
            sessions=_session_summary(sessions),
            growth_bounds=checks.GrowthBounds().to_dict(),
            violations=v,
        )


def _event_counts(events: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[str(event.get("kind"))] = counts.get(str(event.get("kind")), 0) + 1
    return counts


def _session_summary(sessions: list[checks.Session]) -> dict[str, Any]:
    codes: dict[str, int] = {}
    for s in sessions:
        for code, n in s.codes.items():
            codes[str(code)] = codes.get(str(code), 0) + n
    return {
        "sessions": len(sessions),
        "finished": sum(s.finished for s in sessions),
        "killed_or_unfinished": sum(not s.finished for s in sessions),
        "iterations": sum(s.iterations for s in sessions),
        "tasks_submitted": sum(s.sub for s in sessions),
        "iteration_codes": dict(sorted(codes.items())),
        "wrong_outputs": sum(len(s.wrong) for s in sessions),
    }


def render(report: dict[str, Any]) -> None:
    console = Console(width=max(100, Console().width))
    table = Table(
        title=f"chaos soak: seed {report['seed']}, {report.get('duration_s')} s, "
        f"{report['cards']} cards, {report['clients']} clients x {report['threads']}"
    )
    table.add_column("check")
    table.add_column("figure", overflow="fold")
    s, ledger = report["sessions"], report.get("ledger", {})
    table.add_row(
        "client sessions",
        f"{s['sessions']} ({s['finished']} finished, "
        f"{s['killed_or_unfinished']} killed), {s['iterations']} iterations",
    )
    table.add_row("farm ledger", json.dumps(ledger))
    table.add_row(
        "losses",
        f"{len(report['losses'])} declared; causes: "
        + ", ".join(f"{x['card']}/{x['epoch']}: {x['cause']}" for x in report["losses"]),
    )
    table.add_row(
        "kills", f"{len(report['card_kills'])} cards, {len(report['client_kills'])} clients"
    )
    table.add_row("fault events", json.dumps(report["fault_events"]))
    hbm = report.get("hbm", {})
    zero, bound = hbm.get("zero_after_s"), hbm.get("bound_s")
    table.add_row("HBM back to 0", f"after {zero} s (bound {bound} s)")
    watch = report.get("broker_watch") or {}
    table.add_row(
        "broker STATUS answer",
        f"p50 {watch.get('status_rtt_ms_p50')} ms, max {watch.get('status_rtt_ms_max')} ms",
    )
    table.add_row("violations", str(len(report["violations"])))
    console.print(table)
    for violation in report["violations"]:
        console.print(f"  - {violation}")


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="nfsoak", dir="/tmp"))
    try:
        report = Soak(args, work).run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["work_dir"] = str(work) if args.keep else None
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cards", type=int, default=8)
    parser.add_argument("--clients", type=int, default=3, help="client processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per client")
    parser.add_argument(
        "--heartbeat-interval-s",
        type=float,
        default=0.25,
        help="x --liveness = the expiry; default 1 s as configs/default.toml (at 0.1 s x 4 a "
        "2-core box at load 7 starves the broker past the expiry: cards leave)",
    )
    parser.add_argument("--liveness", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (journals, logs)")
    parser.add_argument("--out", help="JSON report path")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    report = run_soak(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    render(report)
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
