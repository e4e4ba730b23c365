"""The card side of the broker: starting cards, their READY and heartbeats, their completions
on the way back to clients, losses and restarts, and the farm's announcement.

A card is judged only by what reaches the broker from the identity of its current epoch: a
message from anyone else is counted and the sender told to go. Card commands are dispatched by
one table (:attr:`CardControl.commands`); a command not in it is a malformed message (counted,
dropped). A card lost is told to every client (CARD_EVENT ``lost``, code 507010), its HBM file is
unlinked, the requests queued for it are answered 507010, and a lost card while the farm starts
fails the start (:class:`CardStartFailed`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from core import protocol as proto
from core import statefile
from core.config import FarmConfig
from core.errors import ACL_ERROR_RT_INTERNAL_ERROR, ACL_ERROR_RT_LOST_HEARTBEAT, NpuFarmError
from core.protocol import BROKER_DEVICE, Cmd
from farm.broker_clients import ClientControl, Reply
from farm.broker_faults import FaultControl
from farm.broker_io import Counted, Outbox, Telemetry
from farm.ledger import FarmLedger
from farm.registry import CardState, Registry
from farm.supervisor import Spawner, Supervisor

__all__ = ["CardControl", "CardStartFailed", "FARM_STARTING", "card_start_timeout_s"]

logger = logging.getLogger(__name__)

_BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)
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


class CardControl:
    """Cards' lifecycle at the broker. It owns the farm's "announced" fact and the restarts
    waiting for a card; it uses the registry, the supervisor and its spawner, the outbox, the
    ledger, the faults and the clients it is given."""

    def __init__(
        self,
        config: FarmConfig,
        *,
        registry: Registry,
        supervisor: Supervisor,
        spawner: Spawner,
        outbox: Outbox,
        ledger: FarmLedger,
        faults: FaultControl,
        clients: ClientControl,
        telemetry: Telemetry,
        malformed: Counted,
        reply: Reply,
        describe: Callable[[], dict[str, Any]],
        describe_card: Callable[[int], dict[str, Any]],
    ) -> None:
        self.config = config
        self.registry = registry
        self.supervisor = supervisor
        self.spawner = spawner
        self.outbox = outbox
        self.ledger = ledger
        self.faults = faults
        self.clients = clients
        self.telemetry = telemetry
        self.malformed = malformed
        self.reply = reply
        self.describe = describe
        self.describe_card = describe_card
        self.state_path = statefile.state_path(config)
        self.start_timeout_s = card_start_timeout_s(config.heartbeat_expiry_s)
        self.announced = False
        self.pending_restart: dict[int, list[tuple[bytes, int]]] = {}
        self.commands: dict[bytes, Callable[[proto.WorkerFrame, float], None]] = {
            Cmd.READY: self._on_ready_frame,
            Cmd.CARD_EVENT: self._on_card_event,
            Cmd.HEARTBEAT: self._on_heartbeat,
            Cmd.REPLY: self._on_late,
            Cmd.COMPLETE: self._on_late,
        }

    # -- starting ----------------------------------------------------------------------------
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
        self.faults.spawned(device_id)
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

    # -- messages ----------------------------------------------------------------------------
    def on_card(self, frames: list) -> None:
        if len(frames) == 6 and frames[3] in (Cmd.COMPLETE, Cmd.REPLY) and frames[4]:
            entry = self.registry.by_identity.get(frames[0])
            if entry is not None:
                body = frames[5]
                if frames[3] == Cmd.COMPLETE:
                    body = self._count_completions(entry, frames[4], body)
                    if body is None:
                        return
                self.outbox.to_client(
                    frames[4], [frames[4], b"", proto.CLIENT_HEADER, frames[3], entry.route, body]
                )
                return
        msg = proto.parse_worker_message(frames, with_identity=True)
        handler = self.commands.get(msg.cmd)
        if handler is None:
            raise NpuFarmError(f"unexpected card message {msg.cmd!r} from {msg.identity!r}")
        handler(msg, time.monotonic())

    def _on_ready_frame(self, msg: proto.WorkerFrame, now: float) -> None:
        self.on_ready(msg.identity, proto.unpack(msg.body), now)

    def _on_card_event(self, msg: proto.WorkerFrame, now: float) -> None:
        self.faults.on_card_event(msg.identity, proto.unpack(msg.body), now)

    def _on_heartbeat(self, msg: proto.WorkerFrame, now: float) -> None:
        entry = self.registry.on_seen(msg.identity, now)
        if entry is None:
            self.outbox.send_card(msg.identity, Cmd.DISCONNECT, b"", b"")
            return
        body = proto.unpack(msg.body)
        if isinstance(body, dict):
            entry.stats = body
            if self.telemetry.metrics is not None:
                self.telemetry.metrics.card_stats(entry.device_id, body, entry.reclaimed())

    def _on_late(self, msg: proto.WorkerFrame, now: float) -> None:
        if msg.cmd == Cmd.REPLY and not msg.client:
            return  # a card acknowledging an inject/recover from the broker
        logger.debug("late %r from a card no longer routed; dropped", msg.cmd)

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
        trace, metrics = self.telemetry.trace, self.telemetry.metrics
        if trace is not None:
            trace.tasks(entry.device_id, entry.epoch, client, rows)
        if metrics is not None:
            metrics.tasks_ended(entry.device_id, rows)
        route_faults = self.faults.route_faults
        if route_faults is not None and route_faults.has_hook("broker.complete"):
            kept = self.faults.drop_completions(entry.device_id, rows)
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
            self.outbox.send_card(identity, Cmd.DISCONNECT, b"", b"")
            return
        # welcome: the card's liveness counts from now (leniently while the farm starts)
        beat = b"" if self.announced else FARM_STARTING
        self.outbox.send_card(identity, Cmd.HEARTBEAT, b"", beat)
        logger.info("card %d epoch %d ready", entry.device_id, entry.epoch)
        self.faults.sync_card_rules(entry)
        if self.telemetry.trace is not None:
            self.telemetry.trace.instant("card ready", entry.device_id, now, {"epoch": entry.epoch})
        if self.telemetry.metrics is not None:
            self.telemetry.metrics.card_state(entry.device_id, True, entry.epoch)
        if self.announced:
            self.notify(entry.device_id, "ready", 0)
            self.answer_restart(entry.device_id, 0)
        elif self.registry.all_ready():
            self.announce()

    def announce(self) -> None:
        self.announced = True
        # end the cards' start lenience before anyone can find the farm: a broker that stalls
        # right after its start must be judged by the heartbeat expiry, not the start timeout
        self.beat(b"")
        state = self.describe()
        statefile.write_state(self.state_path, state)
        logger.info(
            "farm %s up at %s with %d cards in %.2fs",
            state["farm_id"],
            state["endpoint"],
            len(state["cards"]),
            state["uptime_s"],
        )
        self.clients.announce(state)

    def beat(self, body: bytes) -> None:
        """A heartbeat to every READY card."""
        for entry in self.registry.cards.values():
            if entry.state is CardState.READY and entry.identity is not None:
                self.outbox.send_card(entry.identity, Cmd.HEARTBEAT, b"", body)

    # -- losses and restarts -----------------------------------------------------------------
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
        self.faults.link_loss.pop(device_id, None)
        self._answer_backlog(device_id)
        if self.telemetry.trace is not None:
            self.telemetry.trace.instant(
                "card lost", device_id, time.monotonic(), {"epoch": entry.epoch, "reason": reason}
            )
        if self.telemetry.metrics is not None:
            self.telemetry.metrics.card_state(device_id, False, entry.epoch)
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

    def _answer_backlog(self, device_id: int) -> None:
        """A lost card's queued messages: its requests get 507010 (its tasks are failed by the
        loss itself)."""
        for frames in self.outbox.take_card_backlog(device_id):
            if frames[3] == Cmd.REQUEST:
                body = proto.unpack(frames[5])
                if isinstance(body, dict) and "rid" in body:
                    route = self.registry.cards[device_id].route
                    answer = {"rid": body["rid"], "code": ACL_ERROR_RT_LOST_HEARTBEAT}
                    self.reply(frames[4], Cmd.REPLY, route, answer)

    def notify(self, device_id: int, state: str, code: int, epoch: int | None = None) -> None:
        entry = self.registry.cards[device_id]
        body = {
            "device_id": device_id,
            "epoch": entry.epoch if epoch is None else epoch,
            "state": state,
            "code": code,
            "card": self.describe_card(device_id),
        }
        self.clients.notify(proto.pack_route(device_id, body["epoch"]), body)

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

    def restart_lost(self) -> list[int]:
        """Restart every LOST card; the ids of those restarted."""
        lost = [d for d, e in self.registry.cards.items() if e.state is CardState.LOST]
        return [device_id for device_id in lost if self.restart(device_id)]

    def answer_restart(self, device_id: int, code: int) -> None:
        for client, rid in self.pending_restart.pop(device_id, []):
            card = self.describe_card(device_id)
            self.reply(client, Cmd.REPLY, _BROKER_ROUTE, {"rid": rid, "code": code, "card": card})

    def heartbeat(self, now: float, expiry_s: float) -> None:
        """Lose the cards that went silent, failed to start or lost their link; beat the rest."""
        # until the farm is up, a READY card's silence is judged by the start timeout: the
        # start of many cards loads the box (a slower start, never a failed one)
        if not self.announced:
            expiry_s = max(expiry_s, self.start_timeout_s)
        for entry in self.registry.expired(now, expiry_s):
            self.lose(entry.device_id, f"no heartbeat for {now - entry.last_seen_s:.2f}s")
        for entry in self.registry.start_expired(now, self.start_timeout_s):
            self.lose(entry.device_id, f"did not start within {self.start_timeout_s:g}s")
        for device_id, (epoch, deadline) in list(self.faults.link_loss.items()):
            if now >= deadline:
                del self.faults.link_loss[device_id]
                if self.registry.cards[device_id].epoch == epoch:
                    self.lose(device_id, "link dropped (injected disconnect): messages lost")
        self.beat(b"" if self.announced else FARM_STARTING)
