"""Fuzz one card directly: a real card process connected to a fake broker (a ROUTER we bind).

Why besides the farm fuzz: the broker drops what it cannot parse, so a card behind it only ever
sees well-framed messages. Here every frame reaches the card as its broker would send it
(``[b"", NPUW01, cmd, client, body]`` with garbage anywhere): SUBMIT task lists, REQUEST
bodies of every card op, DISCONNECTs of clients, heartbeats and framing garbage. The rig
heartbeats the card (it exits when its broker goes silent) and after every batch checks: the
process is alive, every request with an integer rid got one REPLY and every task with an
integer id one COMPLETE row (unless its client was DISCONNECTed meanwhile), a memset task
still writes the right bytes into the card's HBM, and the card counted the malformed frames
(``stats["malformed"]`` in its heartbeat, when the card reports one).

A DISCONNECT with an empty client frame is the broker's "shut down" and is never sent.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import zmq
from hypothesis import strategies as st

from benchmarks import fuzz_inputs as fi
from benchmarks.farm_probe import REPO, pid_alive
from core import protocol as proto
from core.errors import ProtocolError
from core.protocol import Cmd
from device.memory import HbmSegment

__all__ = ["CardRig", "CARD_DRAFTS", "fuzz_card"]

logger = logging.getLogger(__name__)

INTERVAL_S = 0.05
CLIENTS = (b"\x00fz-a", b"\x00fz-b", b"")
_CARD_CMDS = st.sampled_from(
    [
        Cmd.SUBMIT,
        Cmd.SUBMIT,
        Cmd.REQUEST,
        Cmd.REQUEST,
        Cmd.HEARTBEAT,
        Cmd.DISCONNECT,
        Cmd.COMPLETE,
        Cmd.HELLO,
        b"\x7f",
        b"",
    ]
)
_MUTATE = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.tuples(st.integers(0, 5), st.one_of(st.binary(max_size=6), st.none(), st.just(b"+"))),
)
_DIRECT = st.builds(
    fi.Draft,
    kind=st.just("card.direct"),
    socket=st.just("card"),
    cmd=_CARD_CMDS,
    route=st.one_of(st.sampled_from(CLIENTS[:2]), st.binary(max_size=6)),
    body=st.one_of(fi.TASK_LISTS, fi.CARD_REQUESTS, st.binary(max_size=16)),
    mutate=_MUTATE,
)
_FRAMING = st.builds(
    lambda frames: fi.Draft("card.framing", "card", b"", None, None, raw=tuple(frames)),
    st.lists(st.binary(max_size=10), min_size=1, max_size=7),
)
CARD_DRAFTS = st.one_of(_DIRECT, _DIRECT, _DIRECT, _FRAMING)


class CardRig:
    """A card process and the ROUTER it takes for its broker."""

    def __init__(self, hbm_bytes: int = 64 << 20) -> None:
        self.tmp = tempfile.mkdtemp(prefix="nfzc", dir="/tmp")
        self.address = f"ipc://{self.tmp}/b.sock"
        self.farm_id = f"fzc{os.getpid()}x{os.urandom(3).hex()}"
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.address)
        self.identity = b"card0.1"
        spec = {
            "farm_id": self.farm_id,
            "device_id": 0,
            "epoch": 1,
            "backend": self.address,
            "hbm_bytes": hbm_bytes,
            "soc_name": "Ascend910B",
            "speed_factor": 1.0,
            "jitter_sigma": 0.0,
            "exec_slots": 2,
            "time_scale": 0.0,
            "heartbeat_interval_s": INTERVAL_S,
            "heartbeat_liveness": 4,
            "seed": 0,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "device", "--spec", json.dumps(spec)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(f"{self.tmp}/card.log", "w"),  # noqa: SIM115
        )
        self.replies: Counter = Counter()
        self.rows: Counter = Counter()
        self.row_codes: dict[Any, int] = {}
        self.bodies: dict[int, dict] = {}
        self.stats: dict = {}
        self._last_beat = 0.0
        self.ready_body: dict | None = None
        self.ready = self.pump_until(lambda: self.ready_body is not None, 30.0)

    def close(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.socket.close(0)
        self.ctx.term()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.process.returncode

    def log_tail(self) -> str:
        try:
            with open(f"{self.tmp}/card.log", errors="replace") as log:
                return log.read()[-3000:]
        except OSError:
            return ""

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart([self.identity, *frames])

    def pump(self, timeout_ms: int = 10) -> None:
        now = time.monotonic()
        if now - self._last_beat >= INTERVAL_S:
            self.send([b"", proto.WORKER_HEADER, Cmd.HEARTBEAT, b"", b""])
            self._last_beat = now
        if not self.socket.poll(timeout_ms):
            return
        while (frames := proto.recv_ready(self.socket)) is not None:
            try:
                msg = proto.parse_worker_message(frames, with_identity=True)
                body = proto.unpack(msg.body)
            except ProtocolError:
                continue
            if msg.cmd == Cmd.READY:
                self.ready_body = body
            elif msg.cmd == Cmd.HEARTBEAT and isinstance(body, dict):
                self.stats = body
            elif msg.cmd == Cmd.REPLY and isinstance(body, dict):
                self.replies[_key(body.get("rid"))] += 1
                if type(body.get("rid")) is int:
                    self.bodies[body["rid"]] = body
            elif msg.cmd == Cmd.COMPLETE and isinstance(body, list):
                for row in body:
                    if isinstance(row, list) and len(row) >= 2:
                        self.rows[_key(row[0])] += 1
                        self.row_codes[_key(row[0])] = row[1]

    def pump_until(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline or self.process.poll() is not None:
                return False
            self.pump(10)
        return True


def _key(value: Any) -> Any:
    return value if isinstance(value, int | str | bytes | float | None) else repr(value)


def _frames(draft: fi.Draft, ids, shm: str) -> list[bytes] | None:
    if draft.raw is not None:
        frames = list(draft.raw)
    else:
        body = draft.body
        if not isinstance(body, bytes):
            body = proto.pack(_fill(body, ids, shm))
        frames = [b"", proto.WORKER_HEADER, draft.cmd, draft.route, body]
        if draft.mutate is not None:
            fi.mutate(frames, draft.mutate)
    try:
        msg = proto.parse_worker_message(frames, with_identity=False)
    except ProtocolError:
        return frames
    if msg.cmd == Cmd.DISCONNECT and not msg.client:
        return None  # the broker's shutdown: the card must stop, by design
    return frames


def _fill(value: Any, ids, shm: str) -> Any:
    if isinstance(value, str):
        return value.replace("{card_shm}", shm) if "{" in value else value
    if isinstance(value, list):
        return [_fill(v, ids, shm) for v in value]
    if isinstance(value, dict):
        out = {k: _fill(v, ids, shm) for k, v in value.items()}
        for key in ("rid", "t"):
            if type(out.get(key)) is int:
                out[key] = next(ids)
        if out.get("op") == "inject" and isinstance(out.get("rule"), dict):
            out["rule"] = {**out["rule"], "probability": 0.0}
        if out.get("spec") == "{add_spec}":
            out["spec"] = {"name": "x", "kind": "identity"}
        return out
    return value


def _owed(frames: list[bytes]) -> tuple[set, set, bool, bytes | None]:
    """(rids, task ids, malformed, disconnected client) for one message to the card."""
    try:
        msg = proto.parse_worker_message(frames, with_identity=False)
    except ProtocolError:
        return set(), set(), True, None
    try:
        body = proto.unpack(msg.body)
    except ProtocolError:
        return set(), set(), False, None
    if msg.cmd == Cmd.REQUEST and isinstance(body, dict) and type(body.get("rid")) is int:
        return {body["rid"]}, set(), False, None
    if msg.cmd == Cmd.SUBMIT and isinstance(body, list):
        tasks = {t["t"] for t in body if isinstance(t, dict) and type(t.get("t")) is int}
        return set(), tasks, False, None
    return set(), set(), False, msg.client if msg.cmd == Cmd.DISCONNECT else None


def fuzz_card(drafts: list[fi.Draft], batch: int = 250) -> dict[str, Any]:
    """Send ``drafts`` to one card in batches; the result with its violations."""
    rig = CardRig()
    ids = itertools.count(2_000_001)
    violations: list[str] = []
    sent = skipped = malformed = 0
    kinds: Counter = Counter()
    try:
        if not rig.ready:
            return {"violations": [f"card did not start: {rig.log_tail()}"]}
        shm = rig.ready_body["shm_name"]
        for start in range(0, len(drafts), batch):
            rids, tasks, excused = set(), {}, set()
            for draft in drafts[start : start + batch]:
                frames = _frames(draft, ids, shm)
                if frames is None:
                    skipped += 1
                    continue
                owed_rids, owed_tasks, bad, gone = _owed(frames)
                rids |= owed_rids
                client = frames[3] if len(frames) > 3 else b""
                tasks.update(dict.fromkeys(owed_tasks, client))
                malformed += bad
                if gone is not None:
                    rig.pump(0)
                    excused |= {t for t, c in tasks.items() if c == gone and t not in rig.rows}
                rig.send(frames)
                sent += 1
                kinds[draft.kind] += 1
                rig.pump(0)
            owed_tasks = set(tasks) - excused
            rig.pump_until(
                lambda r=rids, t=owed_tasks: r <= set(rig.replies) and t <= set(rig.rows), 5.0
            )
            violations += _batch_problems(rig, rids, owed_tasks, malformed, ids, shm, start)
            if rig.process.poll() is not None:
                break
    finally:
        counted = _card_malformed(rig, ids) if rig.process.poll() is None else None
        code = rig.close()
        tail = rig.log_tail()
    return {
        "inputs_sent": sent,
        "skipped_shutdowns": skipped,
        "malformed_sent": malformed,
        "malformed_counted": counted,
        "per_frame_kind": dict(kinds),
        "violations": violations,
        "card_exit_code": code,
        "card_log_tail": tail if violations else "",
    }


def _batch_problems(rig, rids, tasks, malformed, ids, shm, start) -> list[str]:
    where = f"card batch at input {start}"
    if rig.process.poll() is not None:
        return [f"{where}: card process exited ({rig.process.returncode})"]
    out = []
    if missing := sorted(rids - set(rig.replies)):
        out.append(f"{where}: {len(missing)} requests never answered (rids {missing[:6]})")
    if missing := sorted(tasks - set(rig.rows)):
        out.append(f"{where}: {len(missing)} tasks never completed (ids {missing[:6]})")
    if twice := sorted(t for t in tasks if rig.rows[t] > 1):
        out.append(f"{where}: {len(twice)} tasks completed more than once")
    if twice := sorted(r for r in rids if rig.replies[r] > 1):
        out.append(f"{where}: {len(twice)} requests answered more than once")
    wrong = _memset_works(rig, ids, shm)
    if wrong:
        out.append(f"{where}: {wrong}")
    counted = _card_malformed(rig, ids)
    if isinstance(counted, dict):
        counted = sum(v for v in counted.values() if isinstance(v, int))
    if counted is not None and counted < malformed:
        out.append(f"{where}: {malformed} malformed frames sent, card counted {counted}")
    if not pid_alive(rig.process.pid):
        out.append(f"{where}: card process died")
    return out


def _card_malformed(rig: CardRig, ids) -> Any:
    """The card's malformed count now: a ``stats`` request answered after every frame sent
    (a heartbeat's copy may predate the batch); None if the card reports none."""
    rid = next(ids)
    rig.send(
        proto.worker_message(Cmd.REQUEST, b"\x00fz-check", proto.pack({"rid": rid, "op": "stats"}))
    )
    if not rig.pump_until(lambda: rid in rig.bodies, 5.0):
        return rig.stats.get("malformed")
    return rig.bodies.pop(rid).get("malformed")


def _memset_works(rig: CardRig, ids, shm: str) -> str | None:
    """A client mallocs, memsets through a task, finds the bytes in the card's HBM, leaves."""
    client = b"\x00fz-check"
    rid, task, value = next(ids), next(ids), 0xA5
    malloc = {"rid": rid, "op": "malloc", "size": 4096}
    rig.send(proto.worker_message(Cmd.REQUEST, client, proto.pack(malloc)))
    if not rig.pump_until(lambda: rid in rig.bodies, 5.0):
        return "malloc request not answered"
    offset = rig.bodies.pop(rid).get("offset")
    if not isinstance(offset, int):
        return f"malloc of 4096 bytes failed: {rig.replies}"
    memset = {"t": task, "s": 1, "k": "memset", "dst": [shm, offset], "n": 4096, "v": value}
    rig.send(proto.worker_message(Cmd.SUBMIT, client, proto.pack([memset])))
    if not rig.pump_until(lambda: task in rig.rows, 5.0):
        return "memset task never completed"
    try:
        if rig.row_codes[task] != 0:
            return f"memset task failed with {rig.row_codes[task]}"
        segment = HbmSegment.attach(shm)
        try:
            got = bytes(segment.view(offset, 4096))
        finally:
            segment.close()
        if got != bytes([value]) * 4096:
            return "memset task completed with code 0 but the bytes are wrong"
        return None
    finally:
        rig.send(proto.worker_message(Cmd.DISCONNECT, client, b""))  # releases its memory
