"""One emulated NPU card: a process with its HBM in shared memory, stream FIFOs and an executor.

::

    broker ROUTER ──SUBMIT/REQUEST──▶ card DEALER ─▶ StreamScheduler ─▶ kernel on shm bytes
                  ◀─COMPLETE/REPLY──              ◀─ timer heap (modelled latency) ◀─┘
                  ◀─HEARTBEAT (stats)── every heartbeat interval, kernels running or not

The card never blocks on a kernel's modelled duration: a started task computes its real outputs at
once (numpy on the shm views) and completes when its timer fires, ``max(start + modelled, compute
done)``, the start anchored at the client's submit stamp (device/timing.py). The poll sleeps to
the heartbeat or to a short window before the nearest timer, then spins to it (device/pacing.py),
so an idle card sleeps. The real compute itself may take seconds; the heartbeat keeper
(device/heartbeat.py) beats for the loop meanwhile, which is why every socket call holds
``io_lock``. A card whose broker has been silent for the heartbeat expiry exits and unlinks it.

Tasks are started and timed by device/runner.py through the executor (device/executor.py);
request ops are the table of device/requests.py; the spec the card starts with is
device/card_spec.py (re-exported here). When a client leaves (DISCONNECT naming it)
the card reclaims everything it held — HBM, models, stream entries, host-segment mappings,
model builds — and counts it in its stats (``reclaimed_*``). Every task of that client it still
held (queued, running on a timer) ends with a completion row carrying 107023
(ACL_ERROR_RT_STREAM_ABORT: the tasks of an aborted stream are discarded, never run), and those
rows and the client's unsent ones still go out: the broker's ledger counts every submitted task
as ended, so a killed client leaves nothing in flight.
"""

from __future__ import annotations

import cProfile
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from core import protocol as proto
from core.errors import ACL_ERROR_RT_PARAM_INVALID, ACL_SUCCESS, NpuFarmError
from core.protocol import Cmd, TaskKind
from device.card_spec import CardSpec, affinity_cpus
from device.executor import Executor, ModelTable, Owners
from device.heartbeat import Heartbeat
from device.injection import CardFaults
from device.loader import ModelLoader
from device.memory import Allocator, HbmSegment, segment_name
from device.model_spec import ModelSpec
from device.onnx_kernel import set_card_threads
from device.pacing import SpinWindow, tighten_timer_slack
from device.requests import dispatch, error_reply
from device.runner import TIMING_DIAG_ENV, TaskRunner, TurnStats
from device.streams import StreamScheduler, Task
from device.timing import MAX_STAMP_AGE_S, submitted_at

# CardSpec: re-exported for farm/supervisor.py
__all__ = ["CardSpec", "Card", "run_card", "TIMING_DIAG_ENV"]

logger = logging.getLogger(__name__)

_MAX_DRAIN = 64  # inbound messages handled per loop turn before timers get a look in
_LOAD_POLL_S = 0.002  # how often the loop looks for a finished model build while one runs
#: body of the broker's heartbeats while the farm starts (farm.broker sends it)
FARM_STARTING = proto.pack({"starting": True})
_TURN_BUDGET = 0.25  # share of a heartbeat interval one turn may spend starting tasks
_PREFAULT_CHUNK = 8 << 20  # bytes of fresh HBM committed per loop turn (~4 ms), between beats
_WARN_EVERY_S = 1.0  # at most one malformed-input warning per second (the rest are counted)
_RECLAIMED = (
    "reclaimed_clients",
    "reclaimed_hbm_bytes",
    "reclaimed_models",
    "reclaimed_streams",
    "reclaimed_tasks",
)


class Card:
    """The card's state and its thin socket loop.

    Composed of: the :class:`~device.executor.Executor` (bindings cache, host mappings), the
    :class:`~device.runner.TaskRunner` (timers, completion rows), the stream scheduler, the
    model loader, the fault state and the heartbeat keeper. The card owns the HBM segment,
    allocator, ownership and model tables, shared with the executor by reference.
    """

    def __init__(self, spec: CardSpec) -> None:
        self.spec = spec
        self.segment = HbmSegment.create(
            segment_name(spec.farm_id, spec.device_id, spec.epoch), spec.hbm_bytes
        )
        self.allocator = Allocator(spec.hbm_bytes)
        self.owners: Owners = {}  # allocation offset -> (client, serial)
        self.serials = itertools.count(1)  # allocation serials: deferred writes' leases
        self.models: ModelTable = {}
        self._model_ids = itertools.count(1)
        self.loader = ModelLoader(spec.device_id)
        self.scheduler = StreamScheduler(spec.exec_slots)
        self.prefault_queue: deque[tuple[int, int]] = deque()  # (offset, nbytes) to commit
        self.backlog = False  # startable tasks left over when a turn's budget ran out
        farm_start_s = spec.farm_start_s or time.monotonic()
        self.faults = CardFaults(
            spec.faults, spec.device_id, spec.epoch, farm_start_s, spec.op_timeout_s
        )
        rng = np.random.default_rng((spec.seed, spec.device_id, spec.epoch))
        self.executor = Executor(spec, self.segment, self.allocator, self.owners, self.models, rng)
        self.stats = {"done": 0, "failed": 0, "submitted": 0, "malformed": 0}
        self.runner = TaskRunner(
            spec, self.scheduler, self.executor, self.faults, self.stats, self.crash
        )
        self.spin, self._timed = SpinWindow(spec.timer_spin_s), False  # (the hybrid wait)
        self._warned_s, self._unwarned = float("-inf"), 0  # malformed-input warnings
        self.reclaimed = dict.fromkeys(_RECLAIMED, 0)  # cumulative, from departed clients
        self.running = True
        self.farm_starting = True
        self.io_lock = threading.Lock()  # the socket's: held by the loop except while computing
        self.heartbeat = Heartbeat(
            spec.heartbeat_interval_s, self._tick, self.io_lock, f"card{spec.device_id}-beat"
        )
        self._last_stats: dict[str, Any] = {}
        self._tick_link_up = True
        self.ctx = zmq.Context()
        self.socket = self._connect()
        self._fd = self.socket.get(zmq.FD)  # (constant for the socket's life)
        self._pack = proto.packer()  # used under io_lock only (by _send)

    def _connect(self) -> zmq.Socket:
        socket = self.ctx.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IDENTITY, f"card{self.spec.device_id}.{self.spec.epoch}".encode())
        socket.setsockopt(zmq.RECONNECT_IVL, proto.RECONNECT_IVL_MS)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, proto.RECONNECT_IVL_MAX_MS)
        socket.connect(self.spec.backend)
        return socket

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.heartbeat.stop()
        self.loader.close()
        with self.io_lock:
            self.socket.close(0)
        self.ctx.term()
        self.executor.close()
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
            "timing": {**self.runner.timing(), **self.spin.stats()},
            **self.stats,
            **self.reclaimed,
        }

    def send(self, cmd: bytes, client: bytes, body: Any) -> None:
        with self.io_lock:
            self._send(cmd, client, body)

    def _send(self, cmd: bytes, client: bytes, body: Any) -> None:
        """Send with ``io_lock`` held (which also guards the reused packer)."""
        proto.send_frames(self.socket, proto.worker_message(cmd, client, self._pack(body)))

    def _tick(self, now: float, from_loop: bool) -> None:
        """One heartbeat tick, by the loop or by the keeper for a busy loop (``io_lock`` held):
        the heartbeat fault hook, the fault log, the beat itself."""
        beat, self._tick_link_up = self.faults.on_heartbeat()
        # the fault log is the experiment's record, not card traffic: a link drop's own event
        # still reaches it
        events = self.faults.take_events()
        if events:
            self._send(Cmd.CARD_EVENT, b"", {"faults": events})
        if from_loop:
            self.spin.tick(now)
            self._last_stats = self.stats_body()
        if beat:
            self._send(Cmd.HEARTBEAT, b"", self._last_stats)

    def _receive(self, timeout_s: float) -> tuple[bool, list]:
        """(readable?, up to _MAX_DRAIN messages) after waiting up to ``timeout_s``. The first
        message is taken without a second look at ZMQ_EVENTS (wait_readable has just seen it
        there); each later one costs one look (a few syscalls: the routing path's share)."""
        socket = self.socket
        with self.io_lock:
            if not proto.wait_readable(socket, timeout_s, self._fd):
                return False, []
            try:
                batch = [socket.recv_multipart(zmq.NOBLOCK)]
            except zmq.Again:  # (not expected: EVENTS said readable)
                return True, []
            for _ in range(_MAX_DRAIN - 1):
                frames = proto.recv_ready(socket)
                if frames is None:
                    break
                batch.append(frames)
            return True, batch

    def run(self) -> None:
        self.send(Cmd.READY, b"", self.ready_body())
        self._last_stats = self.stats_body()
        self.heartbeat.next_s = time.monotonic() + self.spec.heartbeat_interval_s
        self.heartbeat.start()
        try:
            self._loop()
        finally:
            self.heartbeat.stop()

    def _loop(self) -> None:
        broker_seen = time.monotonic()
        welcomed = False  # the broker's silence counts only once it has spoken (READY welcome)
        self.farm_starting = True
        while self.running:
            link_up = self.faults.link_up()
            if self.runner.turns is not None:  # (diagnostics: run-queue wait of the sleep)
                self.runner.turns.before_sleep()
                readable, inbound = self._wait(time.monotonic())
                self.runner.turns.after_sleep()
            else:
                readable, inbound = self._wait(time.monotonic())
            if readable:
                broker_seen = time.monotonic()
                welcomed = True
            if link_up:  # an injected link drop loses what arrives
                for frames in inbound:
                    self.on_message(frames)
            now = time.monotonic()
            self._work(now, link_up)
            if self.heartbeat.due(now) and self._beat(now, broker_seen, welcomed):
                logger.warning(
                    "card %d: broker silent for %.2fs, exiting",
                    self.spec.device_id,
                    now - broker_seen,
                )
                self.running = False

    def _poll_timeout_s(self, now: float) -> float:
        """How long the loop may wait on its socket: until the next heartbeat or the spin
        window before the next timer (then :attr:`_timed`), a few ms while a model builds, not
        at all while work is left over from the last turn."""
        self._timed = False
        if self.prefault_queue or self.backlog:
            return 0.0
        deadline = self.heartbeat.next_s
        if self.loader.pending:  # look for finished model builds every few ms
            deadline = min(deadline, now + _LOAD_POLL_S)
        if self.runner.timers and self.runner.timers[0][0] - self.spin.value <= deadline:
            deadline, self._timed = self.runner.timers[0][0] - self.spin.value, True
        return max(0.0, deadline - now)

    def _wait(self, now: float) -> tuple[bool, list]:
        """Sleep on the socket until the next deadline; once a sleep that ended for a
        completion ran out, spin until it is due (device/pacing.py: the hybrid wait)."""
        timeout_s = self._poll_timeout_s(now)
        readable, inbound = self._receive(timeout_s)
        if readable or not self._timed or not self.spin.woke(now + timeout_s, timeout_s > 0.0):
            return readable, inbound
        return self.spin.spin(self.runner.timers[0][0], lambda: self._receive(0.0))

    def _work(self, now: float, link_up: bool) -> None:
        """One turn's work after the socket: timers, starts, finished loads, completions out
        (lost while an injected link drop holds), a chunk of page commits."""
        self.runner.fire_timers(now)
        budget_end = now + self.spec.heartbeat_interval_s * _TURN_BUDGET
        self.backlog = self.runner.start_ready(budget_end)
        if link_up:
            if self.loader.pending:
                self.finish_loads()
            self.flush()
            if self.faults.events:
                self.report_faults()
        else:
            self.runner.outbox.clear()
        if self.prefault_queue:
            self.prefault_step()

    def _beat(self, now: float, broker_seen: float, welcomed: bool) -> bool:
        """The loop's heartbeat turn, once one is due: tick (unless the keeper ticked
        meanwhile); True if the broker has been silent past its expiry (far longer before it
        welcomed this card or while the farm starts: a start loads the box)."""
        beat = self.heartbeat
        expiry_s = self.spec.heartbeat_interval_s * self.spec.heartbeat_liveness
        with self.io_lock:
            if beat.due(now):  # (unless the keeper ticked meanwhile)
                beat.loop_tick(now)
            lenient = not welcomed or self.farm_starting
            limit_s = max(60.0, 40.0 * expiry_s) if lenient else expiry_s
            return (
                self._tick_link_up
                and now - broker_seen > limit_s
                and not proto.wait_readable(self.socket, 0)
            )

    # -- inbound ---------------------------------------------------------------------------
    def on_message(self, frames: list) -> None:
        try:
            msg = proto.parse_worker_message(frames, with_identity=False)
            if msg.cmd == Cmd.SUBMIT:
                answered = 0
                try:
                    answered = self.on_submit(msg.client, proto.unpack(msg.body))
                finally:  # the broker counted the batch by its header: tell it what never ends
                    refused = proto.batch_length(msg.body) - answered
                    if refused > 0:
                        self.send(Cmd.CARD_EVENT, b"", {"refused": refused})
            elif msg.cmd == Cmd.REQUEST:
                self.on_request(msg.client, proto.unpack(msg.body))
            elif msg.cmd == Cmd.DISCONNECT:
                if msg.client:
                    self.drop_client(msg.client)
                else:
                    self.running = False
            elif msg.cmd == Cmd.HEARTBEAT:  # the broker's beats say whether the farm is starting
                self.farm_starting = msg.body == FARM_STARTING
            else:
                self.malformed(f"unexpected command {msg.cmd!r}")
        except NpuFarmError as exc:
            self.malformed(f"dropped malformed message: {exc}")
        except Exception as exc:  # whatever a frame holds, it must not take the card down
            self.malformed(f"message dropped, handling it failed: {exc!r}")

    def malformed(self, what: str) -> None:
        """Count a malformed input; warn at most once per _WARN_EVERY_S (a flood of garbage
        must not become a flood of log lines)."""
        self.stats["malformed"] += 1
        now = time.monotonic()
        if now - self._warned_s < _WARN_EVERY_S:
            self._unwarned += 1
            return
        logger.warning(
            "card %d: %s (%d more malformed inputs since the last warning)",
            self.spec.device_id,
            what,
            self._unwarned,
        )
        self._warned_s, self._unwarned = now, 0

    def on_submit(self, client: bytes, tasks: Any) -> int:
        """Queue a batch; return how many of its tasks will be answered (ended or failed)."""
        if not isinstance(tasks, list):
            self.malformed("SUBMIT body is not a list; dropped")
            return 0
        now = time.monotonic()
        answered = submitted = 0
        stamps: list[float] = []  # the stamped tasks' submit times: one lead sample each
        oldest_s = now - MAX_STAMP_AGE_S
        validate, submit, scheduler = proto.validate_task, self.scheduler.submit, self.scheduler
        diag = self.runner.diag is not None
        try:
            for body in tasks:  # (the hot path: a pipelined burst's 64 tasks per message)
                problem = validate(body)
                if problem is None and body["k"] == TaskKind.WAIT:  # a wait must not deadlock
                    problem = scheduler.bad_wait(client, body)
                if problem is not None:
                    self.malformed(f"bad task dropped: {problem}")
                    if isinstance(body, dict) and isinstance(body.get("t"), int):
                        self.runner.complete(
                            client, body["t"], ACL_ERROR_RT_PARAM_INVALID, now, now
                        )
                        answered += 1
                    continue
                stamp = body.get(proto.TASK_STAMP)
                if type(stamp) is float and oldest_s <= stamp <= now:  # submitted_at's fast path
                    submitted_s = stamp
                    stamps.append(stamp)
                else:
                    submitted_s = submitted_at(stamp, now)
                    if stamp is not None:
                        stamps.append(submitted_s)
                submit(Task(client, body["s"], body["t"], body, submitted_s))
                if diag:
                    self.runner.received(client, body["t"], now)
                answered += 1
                submitted += 1
        finally:  # (counted even if a task broke the loop: the caller reports the rest refused)
            self.stats["submitted"] += submitted
            if stamps:
                self.runner.lead.arrived_many(stamps, now)
        return answered

    def on_request(self, client: bytes, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("rid"), int):
            self.malformed("request without rid dropped")
            return
        reply = dispatch(self, client, body)
        if reply is not None and not body.get(proto.NO_REPLY):  # (None: answered later, a
            self.reply(client, body["rid"], reply)  # model still building: finish_loads)

    def reply(self, client: bytes, rid: int, reply: dict) -> None:
        reply["rid"] = rid
        reply.setdefault("code", ACL_SUCCESS)
        self.send(Cmd.REPLY, client, reply)

    def finish_loads(self) -> None:
        """Answer the ``load`` requests whose model finished building (device/loader.py)."""
        for load, kernel, exc in self.loader.finished():
            if exc is not None:
                reply = error_reply(exc, "load", self.spec.device_id)
                self.reply(load.client, load.rid, reply)
                continue
            handle = self.add_model(load.spec, kernel, load.client)
            self.reply(load.client, load.rid, {"handle": handle})

    def add_model(self, spec: ModelSpec, kernel: Any, client: bytes) -> int:
        handle = next(self._model_ids)
        self.models[handle] = (spec, kernel, client)
        return handle

    def release(self, offset: int) -> int:
        """Free the allocation at ``offset``; the bytes it reserved (0 if none)."""
        self.owners.pop(offset, None)
        self.executor.forget_bindings()
        return self.allocator.free(offset) or 0

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

    def drop_client(self, client: bytes) -> None:
        """A client left: reclaim all it held here, and count it."""
        offsets = [offset for offset, owner in self.owners.items() if owner[0] == client]
        hbm_bytes = sum(self.release(offset) for offset in offsets)
        handles = [h for h, entry in self.models.items() if entry[2] == client]
        for handle in handles:
            del self.models[handle]
        streams = sum(1 for key in self.scheduler.streams if key[0] == client)
        ended = self.runner.end_tasks(client)
        self.loader.drop_client(client)
        mappings = self.executor.drop_client(client)
        if hbm_bytes or handles or streams or mappings or ended:
            counts = self.reclaimed
            counts["reclaimed_clients"] += 1
            counts["reclaimed_hbm_bytes"] += hbm_bytes
            counts["reclaimed_models"] += len(handles)
            counts["reclaimed_streams"] += streams
            counts["reclaimed_tasks"] += ended
            logger.info(
                "card %d: reclaimed %d bytes, %d models, %d streams, %d tasks, %d mappings "
                "of a departed client",
                self.spec.device_id,
                hbm_bytes,
                len(handles),
                streams,
                ended,
                mappings,
            )

    def report_faults(self) -> None:
        events = self.faults.take_events()
        if events:
            self.send(Cmd.CARD_EVENT, b"", {"faults": events})

    def crash(self) -> None:
        """An injected crash: report it, then die without any cleanup, as a card would."""
        self.report_faults()
        self.io_lock.acquire()  # the keeper must not beat for a dying card
        self.heartbeat.stop()
        self.socket.close(linger=1000)
        self.ctx.term()
        logger.error("card %d: injected crash", self.spec.device_id)
        os._exit(70)

    def flush(self) -> None:
        outbox = self.runner.outbox
        if not outbox:
            return
        if self.runner.diag is not None:  # (diagnostics: the rows' send time, last)
            now = time.monotonic()
            for rows in outbox.values():
                for row in rows:
                    row.append(now)
        with self.io_lock:
            for client, rows in outbox.items():
                self._send(Cmd.COMPLETE, client, rows)
        outbox.clear()
        if self.runner.fired_s:  # (timers fired: their fire-to-send time feeds the lead)
            self.runner.lead.flushed(time.monotonic() - self.runner.fired_s)
            self.runner.fired_s = 0.0


def run_card(spec_dict: dict[str, Any]) -> None:
    """Process entry point (forkserver target and ``python -m device``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the farm shuts cards down, not Ctrl-C
    spec = CardSpec.from_dict(spec_dict)
    logging.basicConfig(
        level=os.environ.get("NPUFARM_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s card{spec.device_id} %(levelname)s %(message)s",
    )
    tighten_timer_slack()
    cpus = affinity_cpus(
        spec.cpu_affinity, spec.device_id, spec.intra_op_threads, os.sched_getaffinity(0)
    )
    if cpus is not None:  # before any thread starts: onnxruntime's pool inherits the mask
        os.sched_setaffinity(0, cpus)
    set_card_threads(spec.intra_op_threads)
    card = Card(spec)
    if os.environ.get(TIMING_DIAG_ENV):  # benchmarks/tail.py: stage times in completion rows
        card.runner.diag, card.runner.turns = {}, TurnStats()

    def _stop(signum, frame):
        card.running = False

    signal.signal(signal.SIGTERM, _stop)
    profile_dir = os.environ.get("NPUFARM_CARD_PROFILE_DIR")  # developer aid: cProfile per card
    profiler = None
    if profile_dir:
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        card.run()
    finally:
        card.close()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"card{spec.device_id}.prof"))
