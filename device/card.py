"""One emulated NPU card: a process with its HBM in shared memory, stream FIFOs and an executor.

::

    broker ROUTER ──SUBMIT/REQUEST──▶ card DEALER ─▶ StreamScheduler ─▶ kernel on shm bytes
                  ◀─COMPLETE/REPLY──              ◀─ timer heap (modelled latency) ◀─┘
                  ◀─HEARTBEAT (stats)── every heartbeat interval, kernels running or not

The card never blocks on a kernel's modelled duration: a started task computes its real outputs
at once (numpy on the shm views) and completes when its timer fires, ``max(start + modelled,
compute done)``. The poll timeout is the nearest timer or heartbeat, so an idle card sleeps.
A card whose broker has been silent for the heartbeat expiry exits and unlinks its segment.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from device import executor
from device.injection import CardFaults, TaskFault
from device.kernels import build_kernel
from device.loader import ModelLoader
from device.memory import Allocator, HbmSegment, prefault_preserves_contents, segment_name
from device.models import ModelSpec
from device.streams import StreamScheduler, Task
from farm import protocol as proto
from farm.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_INTERNAL_ERROR,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
    NpuFarmError,
)
from farm.faults import corrupt_bytes
from farm.protocol import Cmd

__all__ = ["CardSpec", "Card", "run_card"]

logger = logging.getLogger(__name__)

_MAX_DRAIN = 64  # inbound messages handled per loop turn before timers get a look in
_LOAD_POLL_S = 0.002  # how often the loop looks for a finished model build while one runs
_TURN_BUDGET = 0.25  # share of a heartbeat interval one turn may spend starting tasks
_PREFAULT_CHUNK = 8 << 20  # bytes of fresh HBM committed per loop turn (~4 ms), between beats


@dataclass(frozen=True)
class CardSpec:
    """Everything a card process needs; msgpack/JSON friendly so it crosses process starts."""

    farm_id: str
    device_id: int
    epoch: int
    backend: str
    hbm_bytes: int
    soc_name: str
    speed_factor: float
    jitter_sigma: float
    exec_slots: int
    time_scale: float
    heartbeat_interval_s: float
    heartbeat_liveness: int
    seed: int
    min_completion_delay_s: float = 0.0
    op_timeout_s: float = 1091.0  # device watchdog: a hung task fails after this long
    farm_start_s: float = 0.0  # time.monotonic() of the farm's start (fault plan times)
    faults: dict[str, Any] | None = None  # this card's part of the fault plan

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CardSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Card:
    """The card's state and its thin socket loop."""

    def __init__(self, spec: CardSpec) -> None:
        self.spec = spec
        self.segment = HbmSegment.create(
            segment_name(spec.farm_id, spec.device_id, spec.epoch), spec.hbm_bytes
        )
        self.allocator = Allocator(spec.hbm_bytes)
        self.owners: dict[int, bytes] = {}  # allocation offset -> client identity
        self.attached: dict[str, HbmSegment] = {}  # clients' pinned host segments, by name
        self.models: dict[int, tuple[ModelSpec, Any, bytes]] = {}
        self._model_ids = itertools.count(1)
        self.loader = ModelLoader(spec.device_id)
        self.scheduler = StreamScheduler(spec.exec_slots)
        self.timers: list[tuple] = []  # (deadline, seq, task, code, commit) heap
        self._timer_seq = itertools.count()
        self.outbox: dict[bytes, list] = {}
        self.prefault_queue: deque[tuple[int, int]] = deque()  # (offset, nbytes) to commit
        self.backlog = False  # startable tasks left over when a turn's budget ran out
        self.bindings: dict[tuple, tuple[list, list]] = {}  # exec buffer views (executor)
        farm_start_s = spec.farm_start_s or time.monotonic()
        self.faults = CardFaults(
            spec.faults, spec.device_id, spec.epoch, farm_start_s, spec.op_timeout_s
        )
        self.rng = np.random.default_rng((spec.seed, spec.device_id, spec.epoch))
        self.stats = {"done": 0, "failed": 0, "submitted": 0}
        self.running = True
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IDENTITY, f"card{spec.device_id}.{spec.epoch}".encode())
        self.socket.setsockopt(zmq.RECONNECT_IVL, proto.RECONNECT_IVL_MS)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, proto.RECONNECT_IVL_MAX_MS)
        self.socket.connect(spec.backend)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.loader.close()
        self.socket.close(0)
        self.ctx.term()
        for segment in self.attached.values():
            segment.close()
        self.segment.close()
        self.segment.unlink()

    def ready_body(self) -> dict[str, Any]:
        return {
            "device_id": self.spec.device_id,
            "epoch": self.spec.epoch,
            "pid": os.getpid(),
            "shm_name": self.segment.name,
            "hbm_bytes": self.spec.hbm_bytes,
            "soc_name": self.spec.soc_name,
            "exec_slots": self.spec.exec_slots,
        }

    def stats_body(self) -> dict[str, Any]:
        return {
            "epoch": self.spec.epoch,
            "hbm_used": self.allocator.used_bytes,
            "hbm_total": self.spec.hbm_bytes,
            "streams": self.scheduler.stream_count(),
            "queued": self.scheduler.queued,
            "running": self.scheduler.running,
            "stream_queues": self.scheduler.queue_depths(),
            **self.stats,
        }

    def send(self, cmd: bytes, client: bytes, body: Any) -> None:
        proto.send_frames(self.socket, proto.worker_message(cmd, client, proto.pack(body)))

    def run(self) -> None:
        interval_s = self.spec.heartbeat_interval_s
        expiry_s = interval_s * self.spec.heartbeat_liveness
        self.send(Cmd.READY, b"", self.ready_body())
        now = time.monotonic()
        next_beat = now + interval_s
        broker_seen = now
        while self.running:
            now = time.monotonic()
            deadline = min(next_beat, self.timers[0][0] if self.timers else next_beat)
            if self.loader.pending:  # look for finished model builds every few ms
                deadline = min(deadline, now + _LOAD_POLL_S)
            busy = self.prefault_queue or self.backlog
            timeout_s = 0.0 if busy else max(0.0, deadline - now)
            link_up = self.faults.link_up()
            if proto.wait_readable(self.socket, timeout_s):
                broker_seen = time.monotonic()
                for _ in range(_MAX_DRAIN):
                    frames = proto.recv_ready(self.socket)
                    if frames is None:
                        break
                    if link_up:  # an injected link drop loses what arrives
                        self.on_message(frames)
            now = time.monotonic()
            self.fire_timers(now)
            self.backlog = self.start_ready(now + interval_s * _TURN_BUDGET)
            if link_up:
                if self.loader.pending:
                    self.finish_loads()
                self.flush()
                if self.faults.events:
                    self.report_faults()
            else:
                self.outbox.clear()
            if self.prefault_queue:
                self.prefault_step()
            if now >= next_beat:
                beat, link_up = self.faults.on_heartbeat()
                # the fault log is the experiment's record, not card traffic: a link drop's
                # own event still reaches it
                self.report_faults()
                if beat:
                    self.send(Cmd.HEARTBEAT, b"", self.stats_body())
                next_beat = now + interval_s
                if (
                    link_up
                    and now - broker_seen > expiry_s
                    and not proto.wait_readable(self.socket, 0)
                ):
                    logger.warning(
                        "card %d: broker silent for %.2fs, exiting",
                        self.spec.device_id,
                        now - broker_seen,
                    )
                    self.running = False

    # -- inbound ---------------------------------------------------------------------------
    def on_message(self, frames: list) -> None:
        try:
            msg = proto.parse_worker_message(frames, with_identity=False)
            if msg.cmd == Cmd.SUBMIT:
                self.on_submit(msg.client, proto.unpack(msg.body))
            elif msg.cmd == Cmd.REQUEST:
                self.on_request(msg.client, proto.unpack(msg.body))
            elif msg.cmd == Cmd.DISCONNECT:
                if msg.client:
                    self.drop_client(msg.client)
                else:
                    self.running = False
            elif msg.cmd != Cmd.HEARTBEAT:
                logger.warning("card %d: unexpected command %r", self.spec.device_id, msg.cmd)
        except NpuFarmError as exc:
            logger.warning("card %d: dropped malformed message: %s", self.spec.device_id, exc)

    def on_submit(self, client: bytes, tasks: Any) -> None:
        if not isinstance(tasks, list):
            logger.warning("card %d: SUBMIT body is not a list; dropped", self.spec.device_id)
            return
        now = time.monotonic()
        for body in tasks:
            problem = proto.validate_task(body)
            if problem is not None:
                logger.warning("card %d: bad task dropped: %s", self.spec.device_id, problem)
                if isinstance(body, dict) and isinstance(body.get("t"), int):
                    self.complete(client, body["t"], ACL_ERROR_RT_PARAM_INVALID, now, now)
                continue
            self.stats["submitted"] += 1
            self.scheduler.submit(Task(client, body["s"], body["t"], body, now))

    def on_request(self, client: bytes, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("rid"), int):
            logger.warning("card %d: request without rid dropped", self.spec.device_id)
            return
        handler = getattr(self, f"op_{body.get('op')}", None)
        if handler is None:
            reply = {"code": ACL_ERROR_INVALID_PARAM, "error": f"unknown op {body.get('op')!r}"}
        else:
            try:
                reply = handler(client, body)
            except Exception as exc:  # a request must never take the card down
                reply = self._error_reply(exc, body.get("op"))
            if reply is None:  # answered later (a model still building: finish_loads)
                return
        self.reply(client, body["rid"], reply)

    def reply(self, client: bytes, rid: int, reply: dict) -> None:
        reply["rid"] = rid
        reply.setdefault("code", ACL_SUCCESS)
        self.send(Cmd.REPLY, client, reply)

    def _error_reply(self, exc: Exception, op: Any) -> dict:
        if isinstance(exc, NpuFarmError):
            return {"code": exc.code, "error": str(exc)}
        if isinstance(exc, KeyError | TypeError | ValueError | OverflowError):
            return {"code": ACL_ERROR_INVALID_PARAM, "error": f"bad arguments: {exc}"}
        logger.error("card %d: request %r failed", self.spec.device_id, op, exc_info=exc)
        return {"code": ACL_ERROR_RT_INTERNAL_ERROR, "error": repr(exc)}

    def finish_loads(self) -> None:
        """Answer the ``load`` requests whose model finished building (device/loader.py)."""
        for load, kernel, exc in self.loader.finished():
            if exc is not None:
                self.reply(load.client, load.rid, self._error_reply(exc, "load"))
                continue
            handle = next(self._model_ids)
            self.models[handle] = (load.spec, kernel, load.client)
            self.reply(load.client, load.rid, {"handle": handle})

    def prefault_step(self) -> None:
        offset, nbytes = self.prefault_queue.popleft()
        chunk = min(nbytes, _PREFAULT_CHUNK)
        try:
            self.segment.prefault(offset, chunk)
        except OSError as exc:  # /dev/shm full: the pages fault in (or fail) on first use
            logger.warning("card %d: cannot commit HBM pages: %s", self.spec.device_id, exc)
            return
        if nbytes > chunk:
            self.prefault_queue.appendleft((offset + chunk, nbytes - chunk))

    # -- request ops -----------------------------------------------------------------------
    def op_malloc(self, client: bytes, body: dict) -> dict:
        size = int(body["size"])
        if size <= 0:
            return {"code": ACL_ERROR_INVALID_PARAM}
        injected = self.faults.on_malloc()
        if injected:
            return {"code": injected, "error": "injected out of memory"}
        offset = self.allocator.alloc(size)
        if offset is None:
            return {
                "code": ACL_ERROR_RT_MEMORY_ALLOCATION,
                "error": f"HBM exhausted: {size} bytes requested, {self.allocator.free_bytes} free",
            }
        if prefault_preserves_contents():
            # commit pages in chunks from the loop, so heartbeats go on during a large malloc
            self.prefault_queue.append((offset, size))
        else:
            try:
                self.segment.prefault(offset, size)
            except OSError as exc:  # /dev/shm is full: an allocation failure, not SIGBUS
                self.allocator.free(offset)
                return {"code": ACL_ERROR_RT_MEMORY_ALLOCATION, "error": f"no HBM pages: {exc}"}
        self.owners[offset] = client
        return {"offset": offset}

    def op_free(self, client: bytes, body: dict) -> dict:
        offset = int(body["offset"])
        if self.owners.get(offset) != client:
            return {"code": ACL_ERROR_RT_PARAM_INVALID, "error": "not a live allocation"}
        del self.owners[offset]
        self.allocator.free(offset)
        self.bindings.clear()
        return {}

    def op_mem_info(self, client: bytes, body: dict) -> dict:
        return {"free": self.allocator.free_bytes, "total": self.spec.hbm_bytes}

    def op_load(self, client: bytes, body: dict) -> dict | None:
        document = body["spec"]
        if isinstance(document, dict) and "blob_ref" in document:  # the model bytes, in shm
            name, offset, size = document.pop("blob_ref")
            document["blob"] = executor.read_host_bytes(self, name, offset, size)
        spec = ModelSpec.from_dict(document)
        if spec.kind == "onnx":  # may take longer than a heartbeat expiry: off the loop
            self.loader.submit(client, body["rid"], spec)
            return None
        handle = next(self._model_ids)
        self.models[handle] = (spec, build_kernel(spec), client)
        return {"handle": handle}

    def op_unload(self, client: bytes, body: dict) -> dict:
        entry = self.models.get(int(body["handle"]))
        if entry is None or entry[2] != client:
            return {"code": ACL_ERROR_INVALID_PARAM}
        del self.models[int(body["handle"])]
        return {}

    def op_inject(self, client: bytes, body: dict) -> dict:
        return {"rule": self.faults.inject(body["rule"], body.get("rule_id"))}

    def op_recover(self, client: bytes, body: dict) -> dict:
        return {"removed": self.faults.recover(body.get("kinds"))}

    def op_stats(self, client: bytes, body: dict) -> dict:
        return self.stats_body()

    def drop_client(self, client: bytes) -> None:
        """A client left: release its memory, models and streams."""
        for offset in [o for o, c in self.owners.items() if c == client]:
            del self.owners[offset]
            self.allocator.free(offset)
        for handle in [h for h, entry in self.models.items() if entry[2] == client]:
            del self.models[handle]
        self.bindings.clear()
        self.scheduler.drop_client(client)
        self.timers = [t for t in self.timers if t[2].client != client]
        heapq.heapify(self.timers)
        self.outbox.pop(client, None)
        self.loader.drop_client(client)

    # -- execution -------------------------------------------------------------------------
    def start_ready(self, budget_end: float = float("inf")) -> bool:
        """Start every startable task; zero-latency ones finish at once, which may free a
        stream or slot for the next round. True if the time budget ran out first (the loop
        comes back at once, after a heartbeat and a look at the socket)."""
        while tasks := self.scheduler.take_startable():
            if time.monotonic() > budget_end:
                self.scheduler.put_back(tasks)
                return True
            min_delay_s = self.spec.min_completion_delay_s
            for task in tasks:
                task.started_s = started_s = time.monotonic()
                fault = self.task_fault(task) if self.faults.enabled else None
                defer = min_delay_s > 0 or self.spec.time_scale > 0
                if fault is None:
                    code, duration_s, commit = executor.start(self, task, defer)
                else:
                    code, duration_s, commit = self.start_faulty(task, fault, defer)
                done_s = time.monotonic()
                deadline = max(started_s + max(duration_s, min_delay_s), done_s)
                if deadline <= done_s:
                    self.finish(task, code, done_s, commit)
                else:
                    entry = (deadline, next(self._timer_seq), task, code, commit)
                    heapq.heappush(self.timers, entry)
        return False

    def task_fault(self, task: Task) -> TaskFault | None:
        model = None
        if task.kind == "exec":
            entry = self.models.get(task.body.get("m"))
            model = entry[0].name if entry is not None else None
        return self.faults.on_task(task.kind, task.stream, model)

    def start_faulty(self, task: Task, fault: TaskFault, defer: bool):
        """Start a task some injected fault fired on: (code, duration, commit)."""
        if fault.crash:
            self.crash()
        if fault.fail_code:
            return fault.fail_code, 0.0, None
        if fault.hang_s is not None and fault.hang_code:
            return fault.hang_code, fault.hang_s, None  # the watchdog ends it, nothing written
        corrupt = fault.corrupt if task.kind == "exec" else None
        code, duration_s, commit = executor.start(self, task, defer or corrupt is not None)
        if fault.hang_s is not None:
            duration_s = max(duration_s, fault.hang_s)
        duration_s *= fault.slow_factor
        if corrupt is not None and isinstance(commit, executor.Publish):
            commit = self._corrupted(commit, corrupt)
        return code, duration_s, commit

    def _corrupted(self, publish: executor.Publish, pattern: str):
        if pattern == "stale":
            return None  # the outputs keep their old bytes
        rng = self.faults.injector.corrupt_rng

        def commit() -> None:
            publish()
            for destination in publish.destinations:
                flat = destination.reshape(-1).view(np.uint8)
                corrupt_bytes(flat, destination.dtype, pattern, rng)

        return commit

    def report_faults(self) -> None:
        events = self.faults.take_events()
        if events:
            self.send(Cmd.CARD_EVENT, b"", {"faults": events})

    def crash(self) -> None:
        """An injected crash: report it, then die without any cleanup, as a card would."""
        self.report_faults()
        self.socket.close(linger=1000)
        self.ctx.term()
        logger.error("card %d: injected crash", self.spec.device_id)
        os._exit(70)

    def fire_timers(self, now: float) -> None:
        while self.timers and self.timers[0][0] <= now:
            _, _, task, code, commit = heapq.heappop(self.timers)
            self.finish(task, code, now, commit)

    def finish(self, task: Task, code: int, now: float, commit=None) -> None:
        if commit is not None and code == ACL_SUCCESS:
            commit()  # results appear at completion, as on hardware
        self.scheduler.finish(task)
        self.complete(task.client, task.task_id, code, task.started_s, now, task)

    def complete(self, client: bytes, task_id: int, code: int, start_s: float, end_s: float,
                 task: Task | None = None) -> None:  # fmt: skip
        self.stats["done" if code == ACL_SUCCESS else "failed"] += 1
        stream, queued_s = (task.stream, task.submitted_s) if task is not None else (0, start_s)
        self.outbox.setdefault(client, []).append(
            proto.completion_row(task_id, code, start_s, end_s, stream, queued_s)
        )

    def flush(self) -> None:
        for client, rows in self.outbox.items():
            self.send(Cmd.COMPLETE, client, rows)
        self.outbox.clear()


_PR_SET_TIMERSLACK = 29  # linux/prctl.h
_TIMER_SLACK_NS = 1000


def _tighten_timer_slack() -> None:
    """Ask Linux to end this process's sleeps within 1 µs of their timeout instead of the
    default 50 µs: a card's completions are timers. Best effort (other systems: no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("timer slack unchanged")


def run_card(spec_dict: dict[str, Any]) -> None:
    """Process entry point (forkserver target and ``python -m device``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the farm shuts cards down, not Ctrl-C
    spec = CardSpec.from_dict(spec_dict)
    logging.basicConfig(
        level=os.environ.get("NPUFARM_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s card{spec.device_id} %(levelname)s %(message)s",
    )
    _tighten_timer_slack()
    card = Card(spec)

    def _stop(signum, frame):
        card.running = False

    signal.signal(signal.SIGTERM, _stop)
    profile_dir = os.environ.get("NPUFARM_CARD_PROFILE_DIR")  # developer aid: cProfile per card
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        card.run()
    finally:
        card.close()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"card{spec.device_id}.prof"))
