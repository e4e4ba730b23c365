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

The broker is composed of parts that each hold explicit references to what they use: the
:class:`~farm.broker_io.Outbox` (sends that never wait), :class:`~farm.broker_faults.FaultControl`,
:class:`~farm.broker_clients.ClientControl`, :class:`~farm.broker_cards.CardControl` and
:class:`~farm.broker_admin.AdminRequests`. Client commands are dispatched by one table
(:attr:`Broker.commands`), card commands by the cards' table, broker ops by the admin table; a
command or op not in its table is refused (counted as malformed, or answered with a code).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket as pysocket
import time
from collections.abc import Callable
from typing import Any

import zmq

from core import protocol as proto
from core import statefile
from core.config import FarmConfig
from core.errors import ACL_ERROR_RT_LOST_HEARTBEAT, NpuFarmError
from core.faults import FaultPlan
from core.protocol import BROKER_DEVICE, Cmd
from farm import broker_io
from farm.broker_admin import AdminRequests, Jobs
from farm.broker_cards import CardControl, CardStartFailed, card_start_timeout_s
from farm.broker_clients import ClientControl
from farm.broker_faults import FaultControl
from farm.broker_io import BACKLOG_POLL_MS, Counted, Outbox, Telemetry
from farm.client_table import ClientTable, silence_limit_s
from farm.ledger import FarmLedger
from farm.metrics import FarmMetrics
from farm.registry import Registry
from farm.supervisor import Spawner, Supervisor, ipc_path
from farm.trace import TraceRecorder

__all__ = ["Broker", "CardStartFailed", "run_farm", "card_start_timeout_s"]

logger = logging.getLogger(__name__)

_BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)
_MAX_DRAIN = 512


class Broker:
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
        self.supervisor = Supervisor(config, self.farm_id, self.backend_address)
        self.supervisor.farm_start_s = self.started_s
        self.malformed = Counted("dropped malformed messages")
        self.errors = Counted("messages whose handling failed (a farm bug)")
        self.replies_dropped = Counted("replies dropped (client gone or its pipe full)")
        self.signal_fd: int | None = None  # read end of the signal wakeup pipe (run_farm)
        self.jobs = Jobs()
        self.spawner = Spawner(self.supervisor, self.jobs.wake)
        self.ledger = FarmLedger()
        self.trace_path = trace
        self.telemetry = Telemetry(
            TraceRecorder(self.started_s) if trace else None,
            FarmMetrics(metrics_port, config.name) if metrics_port is not None else None,
        )
        self.outbox = Outbox(self.frontend, self.backend, self.replies_dropped)
        self._compose(plan or FaultPlan(seed=config.seed), fault_log)

    def _compose(self, plan: FaultPlan, fault_log: str | None) -> None:
        """Build the broker's parts, each given what it uses."""
        log_path = fault_log or str(self.config.runtime_path() / f"{self.config.name}-faults.jsonl")
        self.faults = FaultControl(
            plan,
            started_s=self.started_s,
            expiry_s=self.config.heartbeat_expiry_s,
            registry=self.registry,
            supervisor=self.supervisor,
            ledger=self.ledger,
            outbox=self.outbox,
            telemetry=self.telemetry,
            malformed=self.malformed,
            log_path=log_path,
        )
        self.client_table = ClientTable(pysocket.gethostname())
        self.clients = ClientControl(
            self.farm_id,
            table=self.client_table,
            silence_s=silence_limit_s(self.config.heartbeat_expiry_s),
            registry=self.registry,
            outbox=self.outbox,
            telemetry=self.telemetry,
            reply=self.reply,
            describe=self.describe,
            describe_card=self.describe_card,
        )
        self.cards = CardControl(
            self.config,
            registry=self.registry,
            supervisor=self.supervisor,
            spawner=self.spawner,
            outbox=self.outbox,
            ledger=self.ledger,
            faults=self.faults,
            clients=self.clients,
            telemetry=self.telemetry,
            malformed=self.malformed,
            reply=self.reply,
            describe=self.describe,
            describe_card=self.describe_card,
        )
        self.admin = AdminRequests(
            started_s=self.started_s,
            registry=self.registry,
            table=self.client_table,
            cards=self.cards,
            faults=self.faults,
            jobs=self.jobs,
            telemetry=self.telemetry,
            reply=self.reply,
        )
        self.commands: dict[bytes, Callable[[proto.ClientFrame], None]] = {
            Cmd.HELLO: self._on_hello,
            Cmd.STATUS: self._on_status,
            Cmd.HEARTBEAT: self._on_heartbeat,
            Cmd.DISCONNECT: self._on_disconnect,
            Cmd.TRACE: self._on_trace,
            Cmd.REQUEST: self._on_request,
        }

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
        self.cards.start_cards()

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
            "tracing": self.telemetry.trace is not None,
            "uptime_s": time.monotonic() - self.started_s,
            "metrics": self._metrics_url(),
            "cards": [self.describe_card(c.device_id) for c in self.config.cards],
            "ledger": self.ledger.as_dict(),
            "faults": self.faults.describe(),
            "reclaimed": self.clients.describe_reclaimed(),
            "malformed": self.malformed.count,
            "handler_errors": self.errors.count,
            "replies": {
                "dropped": self.replies_dropped.count,
                "queued": sum(len(q) for q in self.outbox.client_backlog.values()),
            },
            "card_backlog": sum(len(q) for q in self.outbox.card_backlog.values()),
        }

    def _metrics_url(self) -> str | None:
        metrics = self.telemetry.metrics
        return f"http://127.0.0.1:{metrics.port}/metrics" if metrics is not None else None

    def describe_card(self, device_id: int) -> dict[str, Any]:
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
            self.cards.adopt_spawned()  # (so that stop_all ends them too)
        except CardStartFailed:
            pass
        self.registry.stop_all()
        for process_entry in self.registry.cards.values():
            if process_entry.identity is not None:
                self.outbox.send_card(process_entry.identity, Cmd.DISCONNECT, b"", b"")
        self.supervisor.stop_all()
        statefile.remove_state(self.cards.state_path)
        self.jobs.close()
        trace, metrics = self.telemetry.trace, self.telemetry.metrics
        if trace is not None and self.trace_path:
            try:
                trace.write(self.trace_path, list(self.registry.cards))
            except OSError as exc:
                logger.error("cannot write the trace to %s: %s", self.trace_path, exc)
        if metrics is not None:
            metrics.close()
        self.faults.close()
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
            if self.outbox.waiting():
                timeout_ms = min(timeout_ms, BACKLOG_POLL_MS)
            for item, _ in poller.poll(timeout_ms):
                if item is self.frontend:
                    self._drain(self.frontend, self.on_client)
                elif item is self.backend:
                    self._drain(self.backend, self.cards.on_card)
                elif item == self.signal_fd:
                    os.read(self.signal_fd, 512)
                elif item == self.jobs.wake_fd:
                    self.jobs.finish()
                    self._guarded(self.cards.adopt_spawned)
                elif isinstance(item, int):
                    poller.unregister(item)
                    watched.discard(item)
                    if item in self.supervisor.sentinels:
                        self.cards.on_sentinel(item)
                    else:
                        self.supervisor.reap(item)
            if self.outbox.waiting():
                self.outbox.flush_backlogs()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval_s
                self._guarded(self.heartbeat, now, expiry_s)

    def heartbeat(self, now: float, expiry_s: float) -> None:
        """Each heartbeat interval: judge and beat the cards, reclaim the clients that went,
        log the drop counts, and end the farm if its watched parent is gone."""
        self.cards.heartbeat(now, expiry_s)
        self.clients.expire_clients(now)
        for counted in (self.malformed, self.errors, self.replies_dropped):
            counted.flush(now)
        if self.watch_parent is not None and os.getppid() != self.watch_parent:
            logger.warning("parent process %d exited; shutting down", self.watch_parent)
            self.running = False

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
                if self.telemetry.metrics is not None:
                    side = "client" if socket is self.frontend else "card"
                    self.telemetry.metrics.malformed(side)
            except Exception as exc:  # one message's failure must never end the farm
                self.errors.add(repr(exc), time.monotonic(), exc)

    # -- clients ---------------------------------------------------------------------------
    def on_client(self, frames: list) -> None:
        client = proto.reply_identity(frames[0])
        self.clients.client_seen(client)
        if len(frames) == 6 and frames[2] == proto.CLIENT_HEADER and frames[1] == b"":
            cmd = frames[3]
            if cmd == Cmd.SUBMIT or cmd == Cmd.REQUEST:
                card = self.registry.routes.get(frames[4])
                if card is not None:
                    device_id = proto.unpack_route(frames[4])[0]
                    barred = self.client_table.expired and self.clients.barred(client, device_id)
                    if not barred and self._route(card, device_id, client, cmd, *frames[4:]):
                        return
        msg = proto.parse_client_message(frames, with_identity=True)
        msg = proto.ClientFrame(client, msg.cmd, msg.route, msg.body)
        device_id, _ = proto.unpack_route(msg.route)
        if msg.cmd in (Cmd.SUBMIT, Cmd.REQUEST) and device_id != BROKER_DEVICE:
            self.refuse(msg, device_id)
            return
        handler = self.commands.get(msg.cmd)
        if handler is None:
            raise NpuFarmError(f"unexpected client command {msg.cmd!r}")
        handler(msg)

    def _on_hello(self, msg: proto.ClientFrame) -> None:
        self.clients.on_hello(msg.identity, msg.body, time.monotonic())

    def _on_status(self, msg: proto.ClientFrame) -> None:
        self.reply(msg.identity, Cmd.STATUS, _BROKER_ROUTE, self.describe())

    def _on_heartbeat(self, msg: proto.ClientFrame) -> None:
        self.clients.tell_reclaimed(msg.identity)
        self.reply(msg.identity, Cmd.HEARTBEAT, _BROKER_ROUTE, {})

    def _on_disconnect(self, msg: proto.ClientFrame) -> None:
        self.clients.client_left(msg.identity)

    def _on_trace(self, msg: proto.ClientFrame) -> None:
        rows = proto.unpack(msg.body)
        if self.telemetry.trace is not None and isinstance(rows, list):
            self.telemetry.trace.syncs(msg.identity, rows)

    def _on_request(self, msg: proto.ClientFrame) -> None:
        self.admin.on_request(msg.identity, proto.unpack(msg.body))

    def _route(
        self, card: bytes, device_id: int, client: bytes, cmd: bytes, route: bytes, body: bytes
    ) -> bool:
        """Forward work to a live card; False if the card is unreachable (refused instead)."""
        if self.faults.route_faults is not None and cmd == Cmd.SUBMIT:
            body = self.faults.drop_tasks(device_id, client, route, body)
            if body is None:
                return True
        if not self.outbox.to_card(device_id, [card, b"", proto.WORKER_HEADER, cmd, client, body]):
            return False  # card vanished between its last message and now
        self.clients.clients_of[device_id].add(client)
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
        self.outbox.to_client(client, proto.client_message(cmd, route, proto.pack(body), client))


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
