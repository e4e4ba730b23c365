"""The farm process: a ROUTER/ROUTER broker with the supervisor in one poll loop.

::

    clients (DEALER) ──▶ frontend ROUTER ─┐            ┌─ backend ROUTER ◀── cards (DEALER)
                                          │  Broker    │
                       route table ◀──────┤  registry  ├──────▶ sentinels of card processes
                                          └────────────┘

Hot path: a SUBMIT/REQUEST is forwarded by its route frame (device id + epoch) to the card's
identity; a COMPLETE/REPLY by its client-identity frame back to the client. Bodies are not
decoded. Everything else (HELLO, STATUS, card READY/HEARTBEAT, losses, restarts) is control.
A task routed to a lost card (or an old epoch) is answered by the broker with 507010, so every
submitted task ends completed or failed-with-code.

The loop never blocks: cards are spawned by a thread (a 256-card farm keeps heartbeating
while it starts), a card is welcomed with a heartbeat as soon as it is READY (it
judges the broker's silence only from then on), sends never wait (a full pipe queues the message
in a per-peer backlog, flushed on later turns), and slow admin work runs in threads
(:mod:`farm.broker_admin`). One bad message is counted and dropped; an exception while handling
one is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket as pysocket
import time
from collections import deque
from typing import Any

import zmq

from core import protocol as proto
from core import statefile
from core.config import FarmConfig
from core.errors import ACL_ERROR_RT_INTERNAL_ERROR, ACL_ERROR_RT_LOST_HEARTBEAT, NpuFarmError
from core.faults import BROKER, FaultInjector, FaultPlan
from core.protocol import BROKER_DEVICE, Cmd
from farm import broker_io
from farm.broker_admin import AdminRequests, Jobs
from farm.broker_clients import ClientControl
from farm.broker_faults import FaultControl
from farm.broker_io import BACKLOG_POLL_MS, Counted, Outbox, send_now
from farm.client_table import ClientTable, silence_limit_s
from farm.ledger import FarmLedger
from farm.metrics import FarmMetrics
from farm.registry import CardState, Registry
from farm.supervisor import Spawner, Supervisor, ipc_path
from farm.trace import TraceRecorder

__all__ = ["Broker", "CardStartFailed", "run_farm", "card_start_timeout_s"]

logger = logging.getLogger(__name__)

_BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)
_MAX_DRAIN = 512
#: body of the heartbeats to cards while the farm starts: until the farm is up, both sides judge
#: silence by the start timeout, not the heartbeat expiry (starting many cards loads the box)
FARM_STARTING = proto.pack({"starting": True})


def card_start_timeout_s(heartbeat_expiry_s: float) -> float:
    """How long a started card may take to announce itself before it is lost: generous (a
    busy box or a big farm starts slowly, never fails), yet well under a client's 30 s request
    timeout, so a restart that hangs is answered with 507010."""
    return max(20.0 * heartbeat_expiry_s, 10.0)


class CardStartFailed(NpuFarmError):
    """A card was lost before the farm was up: the farm cannot start."""


class Broker(FaultControl, AdminRequests, ClientControl, Outbox):
    def __init__(
        self,
        config: FarmConfig,
        watch_parent: int | None = None,
        plan: FaultPlan | None = None,
        fault_log: str | None = None,
        trace: str | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.config = config
        self.farm_id = f"{config.name}-{os.getpid()}"
        self.watch_parent = watch_parent
        self.running = True
        self.started_s = time.monotonic()
        self.ctx = zmq.Context()
        self.frontend = self._router(config.endpoint_address())
        runtime_dir = config.runtime_path()
        self.backend_address = f"ipc://{runtime_dir}/{self.farm_id}-cards.sock"
        self.backend = self._router(self.backend_address)
        self.registry = Registry([c.device_id for c in config.cards])
        self.plan = plan or FaultPlan(seed=config.seed)
        self.supervisor = Supervisor(config, self.farm_id, self.backend_address)
        self.supervisor.farm_start_s = self.started_s
        self.supervisor.plan = self.plan
        broker_plan = self.plan.for_broker()
        self.route_faults = FaultInjector(broker_plan, BROKER) if broker_plan.rules else None
        self.fault_counts: dict[str, int] = {}
        self.rule_first_s: dict[int, float] = {}  # rule id -> first fire (s since farm start)
        log_path = fault_log or str(runtime_dir / f"{config.name}-faults.jsonl")
        self.fault_log_path = log_path
        self.fault_log = None  # opened (truncated) at the first fault event
        self.clients_of: dict[int, set[bytes]] = {c.device_id: set() for c in config.cards}
        self.pending_hello: list[bytes] = []
        self.clients: set[bytes] = set()  # every client that said HELLO and not DISCONNECT
        self.client_table = ClientTable(pysocket.gethostname())
        self.client_silence_s = silence_limit_s(config.heartbeat_expiry_s)
        self.reclaimed_clients: dict[str, int] = {}  # cause -> clients reclaimed
        self.pending_restart: dict[int, list[tuple[bytes, int]]] = {}
        self.start_timeout_s = card_start_timeout_s(config.heartbeat_expiry_s)
        self.spawn_rules: dict[int, tuple[int, ...]] = {}  # device -> rule ids given at spawn
        self.link_loss: dict[int, tuple[int, float]] = {}  # device -> (epoch, loss deadline)
        self.card_backlog: dict[int, deque[list]] = {}  # device -> frames its pipe refused
        self.client_backlog: dict[bytes, deque[list]] = {}
        self.malformed = Counted("dropped malformed messages")
        self.errors = Counted("messages whose handling failed (a farm bug)")
        self.replies_dropped = Counted("replies dropped (client gone or its pipe full)")
        self.state_path = statefile.state_path(config)
        self.announced = False
        self.signal_fd: int | None = None  # read end of the signal wakeup pipe (run_farm)
        self.jobs = Jobs()
        self.spawner = Spawner(self.supervisor, self.jobs.wake)
        self.ledger = FarmLedger()
        self.trace_path = trace
        self.trace = TraceRecorder(self.started_s) if trace else None
        self.metrics = FarmMetrics(metrics_port, config.name) if metrics_port is not None else None

    def _router(self, address: str) -> zmq.Socket:
        socket = self.ctx.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, broker_io.PIPE_HWM)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        path = ipc_path(address)
        if path is not None and path.exists():
            path.unlink()  # a stale socket file of a dead farm
        socket.bind(address)
        return socket

    # -- lifecycle -------------------------------------------------------------------------
    def start_cards(self) -> None:
        """Start every card (spawned by the spawner thread; the loop runs meanwhile)."""
        self.supervisor.check_capacity()
        now = time.monotonic()
        for device_id in self.registry.cards:
            self.registry.starting(device_id, 0, now)
            self.request_start(device_id)

    def request_start(self, device_id: int) -> None:
        """Have this STARTING card's process spawned with the plan of now."""
        entry = self.registry.cards[device_id]
        self.spawn_rules[device_id] = self.supervisor.card_plan(device_id).rule_ids
        spec = self.supervisor.card_spec(device_id, entry.epoch).to_dict()
        self.spawner.request(device_id, entry.epoch, spec)

    def adopt_spawned(self) -> None:
        """Watch the processes the spawner started (a superseded epoch's is killed)."""
        for device_id, epoch, process, exc in self.spawner.done():
            entry = self.registry.cards[device_id]
            current = entry.epoch == epoch and entry.state in (CardState.STARTING, CardState.READY)
            if process is None:
                if current:
                    entry.spawned_s = time.monotonic()
                    self.lose(device_id, f"cannot start its process: {exc}")
            elif not current:
                self.supervisor.park(process)
            else:
                self.supervisor.adopt(device_id, epoch, process)
                entry.pid = process.pid
                entry.spawned_s = time.monotonic()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "farm_id": self.farm_id,
            "endpoint": self.config.endpoint_address(),
            "pid": os.getpid(),
            "heartbeat_interval_s": self.config.heartbeat_interval_s,
            "heartbeat_liveness": self.config.heartbeat_liveness,
            "time_scale": self.config.time_scale,
            "skip_sync": self.config.skip_sync,
            "min_completion_delay_s": self.config.min_completion_delay_s,
            "sanitizer": self.config.sanitizer,
            "tracing": self.trace is not None,
            "uptime_s": time.monotonic() - self.started_s,
            "metrics": f"http://127.0.0.1:{self.metrics.port}/metrics" if self.metrics else None,
            "cards": [self._describe_card(c.device_id) for c in self.config.cards],
            "ledger": self.ledger.as_dict(),
            "faults": {
                "log": self.fault_log_path,
                "counts": dict(self.fault_counts),
                "plan": self.plan.to_dict(),
                "active": self.active_rules(),
            },
            "reclaimed": self.describe_reclaimed(),
            "malformed": self.malformed.count,
            "handler_errors": self.errors.count,
            "replies": {
                "dropped": self.replies_dropped.count,
                "queued": sum(len(q) for q in self.client_backlog.values()),
            },
            "card_backlog": sum(len(q) for q in self.card_backlog.values()),
        }

    def _describe_card(self, device_id: int) -> dict[str, Any]:
        entry = self.registry.cards[device_id]
        card = next(c for c in self.config.cards if c.device_id == device_id)
        info = entry.describe()
        info["profile"] = card.profile.name
        info["max_streams"] = card.profile.max_streams
        info["max_events"] = card.profile.max_events
        info["exec_config_extensions"] = list(card.profile.exec_config_extensions)
        return info

    def shutdown(self) -> None:
        self.spawner.close()
        try:
            self.adopt_spawned()  # (so that stop_all ends them too)
        except CardStartFailed:
            pass
        self.registry.stop_all()
        for process_entry in self.registry.cards.values():
            if process_entry.identity is not None:
                self._send_card(process_entry.identity, Cmd.DISCONNECT, b"", b"")
        self.supervisor.stop_all()
        statefile.remove_state(self.state_path)
        self.jobs.close()
        if self.trace is not None and self.trace_path:
            try:
                self.trace.write(self.trace_path, list(self.registry.cards))
            except OSError as exc:
                logger.error("cannot write the trace to %s: %s", self.trace_path, exc)
        if self.metrics is not None:
            self.metrics.close()
        if self.fault_log is not None:
            self.fault_log.close()
        self.frontend.close(0)
        self.backend.close(0)
        self.ctx.term()
        for address in (self.config.endpoint_address(), self.backend_address):
            path = ipc_path(address)
            if path is not None:
                path.unlink(missing_ok=True)

    def run(self) -> None:
        interval_s = self.config.heartbeat_interval_s
        expiry_s = self.config.heartbeat_expiry_s
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        poller.register(self.jobs.wake_fd, zmq.POLLIN)
        watched: set[int] = set()
        if self.signal_fd is not None:
            poller.register(self.signal_fd, zmq.POLLIN)  # SIGINT/SIGTERM end the poll at once
        next_beat = time.monotonic()
        while self.running:
            for fd in (self.supervisor.sentinels.keys() | self.supervisor.reaping.keys()) - watched:
                poller.register(fd, zmq.POLLIN)
                watched.add(fd)
            # whole ms, rounded up: zmq_poll truncates, which would wake early and spin
            timeout_ms = max(0, math.ceil((next_beat - time.monotonic()) * 1000.0))
            if self.card_backlog or self.client_backlog:
                timeout_ms = min(timeout_ms, BACKLOG_POLL_MS)
            for item, _ in poller.poll(timeout_ms):
                if item is self.frontend:
                    self._drain(self.frontend, self.on_client)
                elif item is self.backend:
                    self._drain(self.backend, self.on_card)
                elif item == self.signal_fd:
                    os.read(self.signal_fd, 512)
                elif item == self.jobs.wake_fd:
                    self.jobs.finish()
                    self._guarded(self.adopt_spawned)
                elif isinstance(item, int):
                    poller.unregister(item)
                    watched.discard(item)
                    if item in self.supervisor.sentinels:
                        self.on_sentinel(item)
                    else:
                        self.supervisor.reap(item)
            if self.card_backlog or self.client_backlog:
                self.flush_backlogs()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval_s
                self._guarded(self.heartbeat, now, expiry_s)

    def _guarded(self, step, *args) -> None:
        """Run one loop step; a bug in it is logged and counted, the loop goes on (a card that
        fails to start still ends the farm's start)."""
        try:
            step(*args)
        except CardStartFailed:
            raise
        except Exception as exc:
            self.errors.add(repr(exc), time.monotonic(), exc)

    def _drain(self, socket: zmq.Socket, handler) -> None:
        for _ in range(_MAX_DRAIN):
            frames = proto.recv_ready(socket)
            if frames is None:
                return
            try:
                handler(frames)
            except CardStartFailed:
                raise
            except NpuFarmError as exc:
                self.malformed.add(str(exc), time.monotonic())
                if self.metrics is not None:
                    self.metrics.malformed("client" if socket is self.frontend else "card")
            except Exception as exc:  # one message's failure must never end the farm
                self.errors.add(repr(exc), time.monotonic(), exc)

    # -- clients ---------------------------------------------------------------------------
    def on_client(self, frames: list) -> None:
        client = proto.reply_identity(frames[0])
        self.client_seen(client)
        if len(frames) == 6 and frames[2] == proto.CLIENT_HEADER and frames[1] == b"":
            cmd = frames[3]
            if cmd == Cmd.SUBMIT or cmd == Cmd.REQUEST:
                card = self.registry.routes.get(frames[4])
                if card is not None:
                    device_id = proto.unpack_route(frames[4])[0]
                    barred = self.client_table.expired and self.barred(client, device_id)
                    if not barred and self._route(card, device_id, client, cmd, *frames[4:]):
                        return
        msg = proto.parse_client_message(frames, with_identity=True)
        msg = proto.ClientFrame(client, msg.cmd, msg.route, msg.body)
        device_id, _ = proto.unpack_route(msg.route)
        if msg.cmd in (Cmd.SUBMIT, Cmd.REQUEST) and device_id != BROKER_DEVICE:
            self.refuse(msg, device_id)
        elif msg.cmd == Cmd.HELLO:
            self.on_hello(client, msg.body, time.monotonic())
        elif msg.cmd == Cmd.STATUS:
            self.reply(client, Cmd.STATUS, _BROKER_ROUTE, self.describe())
        elif msg.cmd == Cmd.HEARTBEAT:
            self.tell_reclaimed(client)
            self.reply(client, Cmd.HEARTBEAT, _BROKER_ROUTE, {})
        elif msg.cmd == Cmd.DISCONNECT:
            self.client_left(client)
        elif msg.cmd == Cmd.TRACE:
            rows = proto.unpack(msg.body)
            if self.trace is not None and isinstance(rows, list):
                self.trace.syncs(client, rows)
        elif msg.cmd == Cmd.REQUEST:
            self.on_broker_request(client, proto.unpack(msg.body))
        else:
            raise NpuFarmError(f"unexpected client command {msg.cmd!r}")

    def _route(
        self, card: bytes, device_id: int, client: bytes, cmd: bytes, route: bytes, body: bytes
    ) -> bool:
        """Forward work to a live card; False if the card is unreachable (refused instead)."""
        if self.route_faults is not None and cmd == Cmd.SUBMIT:
            body = self._drop_faults(device_id, client, route, body)
            if body is None:
                return True
        if not self.to_card(device_id, [card, b"", proto.WORKER_HEADER, cmd, client, body]):
            return False  # card vanished between its last message and now
        self.clients_of[device_id].add(client)
        if cmd == Cmd.SUBMIT:
            self.ledger.routed(device_id, proto.batch_length(body))
        return True

    def refuse(self, msg: proto.ClientFrame, device_id: int) -> None:
        """Answer work for a lost card (or an old epoch) with 507010, task by task."""
        body = proto.unpack(msg.body)
        code = ACL_ERROR_RT_LOST_HEARTBEAT
        if msg.cmd == Cmd.SUBMIT and isinstance(body, list):
            now = time.monotonic()
            rows = [
                proto.completion_row(t["t"], code, now, now)
                for t in body
                if isinstance(t, dict) and isinstance(t.get("t"), int)
            ]
            self.ledger.refused(len(rows), code)
            self.reply(msg.identity, Cmd.COMPLETE, msg.route, rows)
        elif msg.cmd == Cmd.REQUEST and isinstance(body, dict) and "rid" in body:
            self.reply(msg.identity, Cmd.REPLY, msg.route, {"rid": body["rid"], "code": code})

    def reply(self, client: bytes, cmd: bytes, route: bytes, body: Any) -> None:
        self.to_client(client, proto.client_message(cmd, route, proto.pack(body), client))

    # -- cards -----------------------------------------------------------------------------
    def on_card(self, frames: list) -> None:
        if len(frames) == 6 and frames[3] in (Cmd.COMPLETE, Cmd.REPLY) and frames[4]:
            entry = self.registry.by_identity.get(frames[0])
            if entry is not None:
                body = frames[5]
                if frames[3] == Cmd.COMPLETE:
                    body = self._count_completions(entry, frames[4], body)
                    if body is None:
                        return
                self.to_client(
                    frames[4], [frames[4], b"", proto.CLIENT_HEADER, frames[3], entry.route, body]
                )
                return
        msg = proto.parse_worker_message(frames, with_identity=True)
        now = time.monotonic()
        if msg.cmd == Cmd.READY:
            self.on_ready(msg.identity, proto.unpack(msg.body), now)
        elif msg.cmd == Cmd.CARD_EVENT:
            self.on_card_event(msg.identity, proto.unpack(msg.body), now)
        elif msg.cmd == Cmd.REPLY and not msg.client:
            pass  # a card acknowledging an inject/recover from the broker
        elif msg.cmd == Cmd.HEARTBEAT:
            entry = self.registry.on_seen(msg.identity, now)
            if entry is None:
                self._send_card(msg.identity, Cmd.DISCONNECT, b"", b"")
            else:
                body = proto.unpack(msg.body)
                if isinstance(body, dict):
                    entry.stats = body
                    if self.metrics is not None:
                        self.metrics.card_stats(entry.device_id, body, entry.reclaimed())
        elif msg.cmd in (Cmd.COMPLETE, Cmd.REPLY):
            logger.debug("late %r from a card no longer routed; dropped", msg.cmd)
        else:
            raise NpuFarmError(f"unexpected card message {msg.cmd!r} from {msg.identity!r}")

    def _count_completions(self, entry, client: bytes, body: bytes) -> bytes | None:
        """Count a card's COMPLETE (ledger, trace, metrics); return the body to forward to the
        client (None: every row dropped by a ``drop`` fault on completions)."""
        try:
            rows = proto.unpack(body)
            codes = [
                row[1] if isinstance(row[1], int) else ACL_ERROR_RT_INTERNAL_ERROR
                for row in rows
                if isinstance(row, list) and len(row) >= 4
            ]
        except (NpuFarmError, TypeError):
            self.malformed.add(f"card {entry.device_id}: COMPLETE not a list", time.monotonic())
            return body
        if self.trace is not None:
            self.trace.tasks(entry.device_id, entry.epoch, client, rows)
        if self.metrics is not None:
            self.metrics.tasks_ended(entry.device_id, rows)
        if self.route_faults is not None and self.route_faults.has_hook("broker.complete"):
            kept = self._drop_completions(entry.device_id, rows)
            if len(kept) != len(rows):
                ended = [row[1] for row in kept if isinstance(row, list) and len(row) >= 4]
                self.ledger.ended(entry.device_id, ended)
                return proto.pack(kept) if kept else None
        self.ledger.ended(entry.device_id, codes)
        return body

    def on_ready(self, identity: bytes, body: Any, now: float) -> None:
        if not isinstance(body, dict):
            raise NpuFarmError("READY body is not a map")
        entry = self.registry.on_ready(identity, body, now)
        if entry is None:  # counted (a flood is one line a second), and told to go
            self.malformed.add(f"READY from unexpected card {identity!r}; disconnected", now)
            self._send_card(identity, Cmd.DISCONNECT, b"", b"")
            return
        # welcome: the card's liveness counts from now (leniently while the farm starts)
        beat = b"" if self.announced else FARM_STARTING
        self._send_card(identity, Cmd.HEARTBEAT, b"", beat)
        logger.info("card %d epoch %d ready", entry.device_id, entry.epoch)
        self.sync_card_rules(entry)
        if self.trace is not None:
            self.trace.instant("card ready", entry.device_id, now, {"epoch": entry.epoch})
        if self.metrics is not None:
            self.metrics.card_state(entry.device_id, True, entry.epoch)
        if self.announced:
            self.notify(entry.device_id, "ready", 0)
            self.answer_restart(entry.device_id, 0)
        elif self.registry.all_ready():
            self.announce()

    def announce(self) -> None:
        self.announced = True
        # end the cards' start lenience before anyone can find the farm: a broker that stalls
        # right after its start must be judged by the heartbeat expiry, not the start timeout
        for entry in self.registry.cards.values():
            if entry.state is CardState.READY and entry.identity is not None:
                self._send_card(entry.identity, Cmd.HEARTBEAT, b"", b"")
        state = self.describe()
        statefile.write_state(self.state_path, state)
        logger.info(
            "farm %s up at %s with %d cards in %.2fs",
            self.farm_id,
            state["endpoint"],
            len(state["cards"]),
            time.monotonic() - self.started_s,
        )
        for client in self.pending_hello:
            self.reply(client, Cmd.HELLO, _BROKER_ROUTE, state)
        self.pending_hello.clear()

    def _send_card(self, identity: bytes, cmd: bytes, client: bytes, body: bytes) -> None:
        try:
            send_now(self.backend, proto.worker_message(cmd, client, body, identity))
        except zmq.ZMQError:
            logger.debug("card %r unreachable or not reading; %r not sent", identity, cmd)

    def on_sentinel(self, fd: int) -> None:
        device_id = self.supervisor.sentinels.get(fd)
        if device_id is None:
            return
        process = self.supervisor.processes[device_id]
        if process.is_alive():
            # a spurious wake-up: the loop watches this fd again next round
            logger.debug("card %d: sentinel %d fired for a live process; ignored", device_id, fd)
            return
        self.lose(device_id, f"process exited (exit code {process.exitcode})")
        self.supervisor.forget(device_id)

    def lose(self, device_id: int, reason: str) -> None:
        entry = self.registry.mark_lost(device_id, reason, time.monotonic())
        if entry is None:
            return
        logger.warning("card %d epoch %d lost: %s", device_id, entry.epoch, reason)
        self.ledger.card_lost(device_id)
        self.link_loss.pop(device_id, None)
        self.drop_card_backlog(device_id)
        if self.trace is not None:
            self.trace.instant(
                "card lost", device_id, time.monotonic(), {"epoch": entry.epoch, "reason": reason}
            )
        if self.metrics is not None:
            self.metrics.card_state(device_id, False, entry.epoch)
        if entry.shm_name:  # a crashed card leaves its HBM behind; clients have it mapped
            try:
                os.unlink(f"/dev/shm/{entry.shm_name}")
            except FileNotFoundError:
                pass
        self.notify(device_id, "lost", ACL_ERROR_RT_LOST_HEARTBEAT, epoch=entry.epoch)
        self.supervisor.kill(device_id)
        self.answer_restart(device_id, ACL_ERROR_RT_LOST_HEARTBEAT)  # it died while restarting
        if not self.announced:
            raise CardStartFailed(f"card {device_id} failed to start: {reason}")

    def notify(self, device_id: int, state: str, code: int, epoch: int | None = None) -> None:
        entry = self.registry.cards[device_id]
        body = {
            "device_id": device_id,
            "epoch": entry.epoch if epoch is None else epoch,
            "state": state,
            "code": code,
            "card": self._describe_card(device_id),
        }
        for client in list(self.clients):
            self.reply(client, Cmd.CARD_EVENT, proto.pack_route(device_id, body["epoch"]), body)

    def restart(self, device_id: int) -> bool:
        """Start a new epoch of a LOST card (queued for the loop to spawn). False if it flaps
        (left FAILED; pending restarts answered 507010)."""
        if not self.registry.may_restart(
            device_id, time.monotonic(), self.config.restart_max, self.config.restart_window_s
        ):
            logger.error("card %d is flapping; left FAILED", device_id)
            self.answer_restart(device_id, ACL_ERROR_RT_LOST_HEARTBEAT)
            return False
        self.supervisor.forget(device_id)
        self.registry.starting(device_id, 0, time.monotonic())
        self.request_start(device_id)
        return True

    def answer_restart(self, device_id: int, code: int) -> None:
        for client, rid in self.pending_restart.pop(device_id, []):
            self.reply(
                client,
                Cmd.REPLY,
                _BROKER_ROUTE,
                {"rid": rid, "code": code, "card": self._describe_card(device_id)},
            )

    def heartbeat(self, now: float, expiry_s: float) -> None:
        # until the farm is up, a READY card's silence is judged by the start timeout: the
        # start of many cards loads the box (a slower start, never a failed one)
        if not self.announced:
            expiry_s = max(expiry_s, self.start_timeout_s)
        for entry in self.registry.expired(now, expiry_s):
            self.lose(entry.device_id, f"no heartbeat for {now - entry.last_seen_s:.2f}s")
        for entry in self.registry.start_expired(now, self.start_timeout_s):
            self.lose(entry.device_id, f"did not start within {self.start_timeout_s:g}s")
        for device_id, (epoch, deadline) in list(self.link_loss.items()):
            if now >= deadline:
                del self.link_loss[device_id]
                if self.registry.cards[device_id].epoch == epoch:
                    self.lose(device_id, "link dropped (injected disconnect): messages lost")
        beat = b"" if self.announced else FARM_STARTING
        for entry in self.registry.cards.values():
            if entry.state is CardState.READY and entry.identity is not None:
                self._send_card(entry.identity, Cmd.HEARTBEAT, b"", beat)
        self.expire_clients(now)
        for counted in (self.malformed, self.errors, self.replies_dropped):
            counted.flush(now)
        if self.watch_parent is not None and os.getppid() != self.watch_parent:
            logger.warning("parent process %d exited; shutting down", self.watch_parent)
            self.running = False


def run_farm(
    config: FarmConfig,
    watch_parent: int | None = None,
    plan: FaultPlan | None = None,
    fault_log: str | None = None,
    trace: str | None = None,
    metrics_port: int | None = None,
) -> None:
    """Run a farm in the foreground until SIGINT/SIGTERM (or the watched parent exits)."""
    broker = Broker(
        config,
        watch_parent,
        plan=plan,
        fault_log=fault_log,
        trace=trace,
        metrics_port=metrics_port,
    )

    def _stop(signum, frame):
        broker.running = False

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous_fd = signal.set_wakeup_fd(wake_w)
    broker.signal_fd = wake_r
    try:
        broker.start_cards()
        broker.run()
    finally:
        broker.shutdown()
        signal.set_wakeup_fd(previous_fd)
        os.close(wake_r)
        os.close(wake_w)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
