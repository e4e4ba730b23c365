"""Fuzz a running farm with hypothesis: every frame kind, on real sockets, checked batch by batch.

::

    python -m benchmarks.fuzz --inputs 100000 --out benchmarks/results/fuzz.json [--seed N]

Why this shape: a farm that dies on a mistyped command, answers a request never, or counts a
task twice contaminates every experiment run on it. Hypothesis draws inputs
(:mod:`benchmarks.fuzz_inputs`: framing garbage, every client command, every card and broker
request op with odd types, task lists with wrong nesting and huge or negative numbers, and
frames as if from a card on the broker's backend); the harness gives each request and task a
unique id, sends them as a client (a DEALER on the frontend) or as a card (a DEALER on the
backend), then waits for what the oracle says the farm owes. After every batch:

- the farm answers STATUS, every card is still ready, no farm process died (psutil);
- a pyACL client still computes the right bytes on a card (load, memcpy, execute, compare);
- every request with an integer rid got exactly one REPLY and every task with an integer id
  exactly one COMPLETE row (none silently lost, none answered twice);
- the farm counted at least the malformed frames it was sent (``describe()["malformed"]``);
- the farm ledger balances with nothing in flight; no fault was logged (the fuzz farm has no
  fault plan and the harness defangs valid ``inject`` rules).

Each problem is a *violation* in the JSON result; the process exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from benchmarks import fuzz_inputs as fi
from benchmarks.farm_probe import (
    MODELS,
    FarmProcess,
    acl_roundtrip,
    ledger_problems,
    malformed_total,
    pid_alive,
    start_farm,
)
from benchmarks.fuzz_card import CARD_DRAFTS, fuzz_card
from core import protocol as proto
from core.errors import NpuFarmError
from core.fault_plan import FaultRule
from core.protocol import BROKER_DEVICE, Cmd
from device.models import load_model_file
from farm.admin import broker_request, query_status

__all__ = ["FuzzRun", "generate", "main"]

logger = logging.getLogger(__name__)

ANSWER_WAIT_S = 5.0  # how long a batch's owed answers may take (cards are not slowed)
_SEND_DRAIN_EVERY = 32


def generate(
    count: int, seed: int, kinds: list[str] | None = None, strategy=None
) -> list[fi.Draft]:
    """``count`` drafts drawn by hypothesis from a fixed seed (reproducible)."""
    out: list[fi.Draft] = []
    strategy = strategy if strategy is not None else fi.drafts(kinds)

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(draft: fi.Draft) -> None:
        out.append(draft)

    collect()
    return out


@dataclass
class BatchResult:
    index: int
    sent: Counter = field(default_factory=Counter)
    malformed_sent: int = 0
    malformed_counted: int | None = None
    owed_rids: int = 0
    owed_tasks: int = 0
    answer_s: float = 0.0
    check_s: float = 0.0
    violations: list[str] = field(default_factory=list)


class FuzzRun:
    """Sends drafts to one running farm and checks it after every batch."""

    def __init__(self, farm: FarmProcess, tmp_dir: str, answer_wait_s: float = ANSWER_WAIT_S):
        self.farm = farm
        self.answer_wait_s = answer_wait_s
        self.tmp_dir = tmp_dir
        self.ctx = zmq.Context()
        self._ids = itertools.count(1_000_001)
        status = query_status(farm.address)
        self.cards = [c["device_id"] for c in status["cards"]]
        self.card_pids = {c["device_id"]: c["pid"] for c in status["cards"]}
        self.epochs = {c["device_id"]: c["epoch"] for c in status["cards"]}
        self.shm = {c["device_id"]: c.get("shm_name", "") for c in status["cards"]}
        self.malformed_base = malformed_total(status)
        self.fault_counts_base = dict(status["faults"]["counts"])
        self.stuck_base = status["ledger"]["in_flight"]
        self.add_spec = self._add_spec()
        self.batches: list[BatchResult] = []

    @staticmethod
    def _add_spec() -> dict:
        return load_model_file(MODELS / "add.toml").to_dict()

    def close(self) -> None:
        self.ctx.term()

    # -- building frames -------------------------------------------------------------------
    def _fill(self, value: Any, draft: fi.Draft) -> Any:
        """Placeholders to real values, unique ids for integer rid / t fields."""
        if isinstance(value, str):
            card = draft.card % len(self.cards)
            return (
                value.replace("{card_shm}", self.shm[card]).replace("{tmp}", self.tmp_dir)
                if "{" in value
                else value
            )
        if isinstance(value, list):
            return [self._fill(v, draft) for v in value]
        if isinstance(value, dict):
            out = {k: self._fill(v, draft) for k, v in value.items()}
            for key in ("rid", "t"):
                if type(out.get(key)) is int:
                    out[key] = next(self._ids)
            if out.get("spec") == "{add_spec}":
                out["spec"] = dict(self.add_spec)
            if out.get("op") == "inject" and isinstance(out.get("rule"), dict):
                out["rule"] = _defanged(out["rule"])
            return out
        return value

    def _route(self, draft: fi.Draft) -> bytes:
        card = self.cards[draft.card % len(self.cards)]
        if isinstance(draft.route, bytes):
            return draft.route
        return {
            "card": lambda: proto.pack_route(card, self.epochs[card]),
            "broker": lambda: proto.pack_route(BROKER_DEVICE, 0),
            "stale": lambda: proto.pack_route(card, self.epochs[card] - 1),
            "nodev": lambda: proto.pack_route(len(self.cards) + 3, 1),
        }[draft.route]()

    def frames(self, draft: fi.Draft) -> list[bytes]:
        if draft.raw is not None:
            return list(draft.raw)
        body = draft.body
        if not isinstance(body, bytes):
            body = proto.pack(self._fill(body, draft))
        if draft.socket == "back":
            frames = [b"", proto.WORKER_HEADER, draft.cmd, draft.route or b"", body]
        else:
            frames = [b"", proto.CLIENT_HEADER, draft.cmd, self._route(draft), body]
        if draft.mutate is not None:
            fi.mutate(frames, draft.mutate)
        return frames

    # -- one batch -------------------------------------------------------------------------
    def run_batch(self, drafts: list[fi.Draft]) -> BatchResult:
        result = BatchResult(len(self.batches))
        identity = f"fz{os.getpid()}-{len(self.batches)}-{os.urandom(3).hex()}".encode()
        front = self._dealer(self.farm.address, identity)
        back = self._dealer(self.farm.backend_address, b"fzcard-" + identity)
        owed = fi.Expectation()
        got = fi.Answers()
        try:
            for n, draft in enumerate(drafts):
                frames = self.frames(draft)
                expect = fi.expectation(frames, draft.socket)
                owed.rids |= expect.rids
                owed.tasks |= expect.tasks
                for cmd, k in expect.control.items():
                    owed.control[cmd] = owed.control.get(cmd, 0) + k
                result.malformed_sent += expect.malformed
                result.sent[draft.kind] += 1
                (front if draft.socket == "front" else back).send_multipart(frames)
                if expect.disconnect:  # what is still queued may be dropped, not answered
                    got.drain(front, 0)
                    got.excused |= owed.tasks - set(got.tasks)
                if n % _SEND_DRAIN_EVERY == 0:
                    got.drain(front, 0)
                    _discard(back)
            result.owed_rids, result.owed_tasks = len(owed.rids), len(owed.tasks)
            started = time.monotonic()
            deadline = started + self.answer_wait_s
            while not got.covers(owed) and time.monotonic() < deadline:
                got.drain(front, 50)
                _discard(back)
            got.drain(front, 20)  # late duplicates
            result.answer_s = time.monotonic() - started
            result.violations += got.problems(owed)
            front.send_multipart(
                proto.client_message(Cmd.DISCONNECT, proto.pack_route(BROKER_DEVICE, 0), b"")
            )
        finally:
            front.close(linger=200)
            back.close(0)
        started = time.monotonic()
        result.violations += self.check_health(result)
        result.check_s = time.monotonic() - started
        self.batches.append(result)
        return result

    def _dealer(self, address: str, identity: bytes) -> zmq.Socket:
        socket = self.ctx.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IDENTITY, identity)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.connect(address)
        return socket

    # -- health ----------------------------------------------------------------------------
    def check_health(self, result: BatchResult) -> list[str]:
        problems = []
        if not pid_alive(self.farm.process.pid):
            return [f"broker process died (exit {self.farm.process.poll()})"]
        try:
            broker_request(self.farm.address, {"op": "recover"}, timeout_s=5.0)
            status = query_status(self.farm.address, timeout_s=5.0)
        except NpuFarmError as exc:
            if not pid_alive(self.farm.process.pid):
                return [f"broker process died (exit {self.farm.process.poll()})"]
            return [f"farm does not answer: {exc}"]
        for card in status["cards"]:
            device = card["device_id"]
            if card["state"] != "ready" or card["pid"] != self.card_pids[device]:
                problems.append(
                    f"card {device}: {card['state']} pid {card['pid']} epoch {card['epoch']} "
                    f"(was pid {self.card_pids[device]}) {card.get('lost_reason', '')}"
                )
            if not pid_alive(self.card_pids[device]):
                problems.append(f"card {device} process {self.card_pids[device]} died")
        if problems:  # note it, bring the cards back (as reset_device would), fuzz on
            status = self._revive(status)
        device = self.cards[result.index % len(self.cards)]
        wrong = acl_roundtrip(self.farm.address, device)
        if wrong is not None:
            problems.append(f"client task after the batch: {wrong}")
        problems += self._counted(result, status)
        return problems

    def _revive(self, status: dict) -> dict:
        """Restart lost cards and take the cards as they are now as the new baseline."""
        for card in status["cards"]:
            if card["state"] != "ready":
                request = {"op": "restart", "device_id": card["device_id"]}
                try:
                    broker_request(self.farm.address, request, timeout_s=15.0)
                except NpuFarmError as exc:
                    logger.warning("card %d not restarted: %s", card["device_id"], exc)
        status = query_status(self.farm.address, timeout_s=5.0)
        for card in status["cards"]:
            device = card["device_id"]
            self.card_pids[device] = card["pid"]
            self.epochs[device] = card["epoch"]
            self.shm[device] = card.get("shm_name", "")
        return status

    def _counted(self, result: BatchResult, status: dict) -> list[str]:
        problems = []
        if status["faults"]["counts"] != self.fault_counts_base:
            problems.append(f"fault events logged by fuzzing: {status['faults']['counts']}")
        self.fault_counts_base = dict(status["faults"]["counts"])
        counted = malformed_total(status)
        if counted is None:
            problems.append("the farm reports no malformed count (describe()['malformed'])")
        else:
            result.malformed_counted = counted - (self.malformed_base or 0)
            if result.malformed_counted < result.malformed_sent:
                problems.append(
                    f"malformed frames: {result.malformed_sent} sent, "
                    f"{result.malformed_counted} counted"
                )
            self.malformed_base = counted
        # the probe's own session settles before status is asked again: ledger drained
        try:
            ledger = query_status(self.farm.address, timeout_s=5.0)["ledger"]
        except NpuFarmError as exc:
            return [*problems, f"farm does not answer: {exc}"]
        problems += ledger_problems(ledger, drained=False)
        stuck, self.stuck_base = ledger["in_flight"] - self.stuck_base, ledger["in_flight"]
        if stuck:  # each batch names only the tasks it left in flight
            problems.append(
                f"ledger: {stuck} more tasks in flight after draining (total {ledger['in_flight']})"
            )
        return problems


def _defanged(rule: dict) -> dict:
    """A valid fault rule with probability 0 (validates and is stored, never fires)."""
    try:
        FaultRule.from_dict(rule)
    except (NpuFarmError, TypeError, ValueError, KeyError):
        return rule  # invalid: the farm must refuse it
    return {**rule, "probability": 0.0}


def _discard(socket: zmq.Socket) -> None:
    while proto.recv_ready(socket) is not None:
        pass


def run_fuzz(
    inputs: int,
    seed: int,
    batch: int,
    cards: int = 2,
    kinds: list[str] | None = None,
    answer_wait_s: float = ANSWER_WAIT_S,
    card_inputs: int = 0,
) -> dict[str, Any]:
    """Start a farm, fuzz it with ``inputs`` drafts in batches, stop it; then ``card_inputs``
    more straight to one card behind a fake broker (benchmarks/fuzz_card.py). The result."""
    started = time.monotonic()
    farm = start_farm(cards=cards)
    tmp_dir = tempfile.mkdtemp(prefix="nfzt", dir="/tmp")
    run = FuzzRun(farm, tmp_dir, answer_wait_s)
    generate_s = 0.0
    try:
        for index in range(0, inputs, batch):
            t0 = time.monotonic()
            drafts = generate(min(batch, inputs - index), seed + index, kinds)
            generate_s += time.monotonic() - t0
            result = run.run_batch(drafts)
            for violation in result.violations:
                logger.warning("batch %d: %s", result.index, violation)
            if any(
                v.startswith(("broker process died", "farm does not answer"))
                for v in result.violations
            ):
                break  # a dead farm: later batches would only repeat it
    finally:
        run.close()
        exit_code = farm.stop()
        log_tail = farm.log_text()[-4000:]
        leftover = _leftover_segments(farm.farm_id)
        farm.cleanup()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    summary = _summary(run, inputs, seed, batch, started, generate_s)
    if exit_code != 0:
        summary["violations"].append({"batch": None, "violation": f"farm exit code {exit_code}"})
    if leftover:
        summary["violations"].append(
            {"batch": None, "violation": f"farm left shm segments: {leftover}"}
        )
    summary["farm_log_tail"] = log_tail if summary["violations"] else ""
    if card_inputs:
        t0 = time.monotonic()
        card = fuzz_card(generate(card_inputs, seed + 1, strategy=CARD_DRAFTS), batch)
        summary["card"] = card
        summary["inputs_sent"] += card.get("inputs_sent", 0)
        summary["per_frame_kind"].update(card.get("per_frame_kind", {}))
        summary["violations"] += [{"batch": "card", "violation": v} for v in card["violations"]]
        summary["durations_s"]["card"] = round(time.monotonic() - t0, 2)
    return summary


def _leftover_segments(farm_id: str) -> list[str]:
    deadline = time.monotonic() + 5.0
    while True:
        found = sorted(p.name for p in Path("/dev/shm").glob(f"npufarm-{farm_id}-*"))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _summary(run, inputs, seed, batch, started, generate_s) -> dict:
    sent: Counter = Counter()
    violations = []
    for result in run.batches:
        sent.update(result.sent)
        violations += [{"batch": result.index, "violation": v} for v in result.violations]
    return {
        "inputs_requested": inputs,
        "inputs_sent": sum(sent.values()),
        "seed": seed,
        "batch": batch,
        "per_frame_kind": dict(sorted(sent.items())),
        "malformed_sent": sum(r.malformed_sent for r in run.batches),
        "malformed_counted": sum(r.malformed_counted or 0 for r in run.batches),
        "owed_replies": sum(r.owed_rids for r in run.batches),
        "owed_completions": sum(r.owed_tasks for r in run.batches),
        "violations": violations,
        "durations_s": {
            "total": round(time.monotonic() - started, 2),
            "generate": round(generate_s, 2),
            "answers": round(sum(r.answer_s for r in run.batches), 2),
            "health_checks": round(sum(r.check_s for r in run.batches), 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=500, help="inputs between health checks")
    parser.add_argument("--cards", type=int, default=2)
    parser.add_argument(
        "--kinds",
        nargs="*",
        choices=sorted(fi.FRAME_KINDS),
        help="only these frame kinds (default: all)",
    )
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    farm_inputs = args.inputs - args.inputs // 5  # a fifth straight to a card
    result = run_fuzz(
        farm_inputs, args.seed, args.batch, args.cards, args.kinds, card_inputs=args.inputs // 5
    )
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    sys.stdout.write(
        json.dumps({k: v for k, v in result.items() if k != "farm_log_tail"}, indent=2)[:6000]
        + "\n"
    )
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
