"""The broker's clients: HELLO, departures, and reclaiming what dead or silent clients held.
The liveness decisions are :mod:`farm.client_table`'s.

Reclaiming a client = a DISCONNECT for it at every card it used: the card frees its HBM,
models, streams and host-segment mappings and counts them (``reclaimed_*`` in its heartbeat
stats). The broker counts the clients it reclaimed (by cause: ``exited`` or ``silent``) and
unlinks the host segments a dead local client left in /dev/shm.

A reclaimed client that speaks again (it was only silent) is told, not served: each device it
had used is lost for it (a CARD_EVENT ``lost`` with the card's epoch, and a DISCONNECT with the
reason), its work there is answered with 507010, and a second HELLO shows those cards lost. Its
``reset_device`` + ``set_device`` (a ``restart`` request) gives it a fresh start on the card.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from core import protocol as proto
from core.errors import ACL_ERROR_RT_LOST_HEARTBEAT, NpuFarmError
from core.protocol import BROKER_DEVICE, Cmd
from farm.broker_io import Outbox, Telemetry
from farm.client_table import ClientTable
from farm.registry import CardState, Registry

__all__ = ["ClientControl"]

logger = logging.getLogger(__name__)

_BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)


Reply = Callable[[bytes, bytes, bytes, Any], None]  # (client, cmd, route, body)


class ClientControl:
    """Client lifecycle of the broker: who said HELLO, which cards each used, what was
    reclaimed. It reads the registry, answers through ``reply`` and tells cards through the
    outbox; ``describe`` / ``describe_card`` are the broker's farm and card descriptions."""

    def __init__(
        self,
        farm_id: str,
        *,
        table: ClientTable,
        silence_s: float,
        registry: Registry,
        outbox: Outbox,
        telemetry: Telemetry,
        reply: Reply,
        describe: Callable[[], dict[str, Any]],
        describe_card: Callable[[int], dict[str, Any]],
    ) -> None:
        self.farm_id = farm_id
        self.table = table
        self.silence_s = silence_s
        self.registry = registry
        self.outbox = outbox
        self.telemetry = telemetry
        self.reply = reply
        self.describe = describe
        self.describe_card = describe_card
        self.clients: set[bytes] = set()  # every client that said HELLO and not DISCONNECT
        self.clients_of: dict[int, set[bytes]] = {d: set() for d in registry.cards}
        self.pending_hello: list[bytes] = []
        self.reclaimed: dict[str, int] = {}  # cause -> clients reclaimed
        self.farm_up = False  # HELLOs wait for the farm's announcement

    def announce(self, state: dict[str, Any]) -> None:
        """The farm is up: answer the HELLOs that waited for it."""
        self.farm_up = True
        for client in self.pending_hello:
            self.reply(client, Cmd.HELLO, _BROKER_ROUTE, state)
        self.pending_hello.clear()

    def notify(self, route: bytes, body: dict[str, Any]) -> None:
        """A CARD_EVENT to every client."""
        for client in list(self.clients):
            self.reply(client, Cmd.CARD_EVENT, route, body)

    def on_hello(self, identity: bytes, raw_body: bytes, now: float) -> None:
        try:
            body = proto.unpack(raw_body) if raw_body else {}
        except NpuFarmError:
            body = {}
        self.clients.add(identity)
        self.table.hello(identity, body, now)
        if not self.farm_up:
            self.pending_hello.append(identity)
            return
        state = self.describe()
        devices = self.table.expired.get(identity)
        if devices:  # a reclaimed client joining again: those cards are lost for it
            self.tell_reclaimed(identity)
            for card in state["cards"]:
                if card["device_id"] in devices:
                    card.update(state="lost", lost_reason="this client's resources were reclaimed")
        self.reply(identity, Cmd.HELLO, _BROKER_ROUTE, state)

    def client_left(self, client: bytes) -> set[int]:
        """A client is gone (DISCONNECT, or reclaimed): every card it used is told to release
        what it holds. Returns those device ids."""
        self.clients.discard(client)
        self.table.forget(client)
        used = set()
        for device_id, clients in self.clients_of.items():
            if client in clients:
                clients.discard(client)
                used.add(device_id)
                entry = self.registry.cards[device_id]
                if entry.state is CardState.READY and entry.identity is not None:
                    self.outbox.send_card(entry.identity, Cmd.DISCONNECT, client, b"")
        return used

    def expire_clients(self, now: float) -> None:
        """Reclaim the resources of clients that exited or went silent (each heartbeat tick)."""
        for client, cause, reason in self.table.due(now, self.silence_s):
            info = self.table.clients.get(client)
            said_hello = client in self.clients
            used = self.client_left(client)
            if not said_hello and not used:
                continue  # a one-shot admin peer (status, inject): nothing to reclaim
            self.reclaimed[cause] = self.reclaimed.get(cause, 0) + 1
            if self.telemetry.metrics is not None:
                self.telemetry.metrics.client_reclaimed(cause)
            logger.warning(
                "client %r %s: reclaiming its resources on cards %s",
                client,
                reason,
                sorted(used) or "(none)",
            )
            if cause == "silent":
                self.table.expire(client, used)
            elif info is not None and info.pid is not None:
                self.sweep_host_segments(info.pid)

    def sweep_host_segments(self, pid: int) -> int:
        """Unlink the pinned host segments an exited local client left in /dev/shm (unless a
        live client has that pid again)."""
        if pid in self.table.pids_alive():
            return 0
        prefix = f"npufarm-{self.farm_id}-h{pid}-"
        removed = 0
        try:
            names = os.listdir("/dev/shm")
        except OSError:
            return 0
        for name in names:
            if name.startswith(prefix):
                try:
                    os.unlink(f"/dev/shm/{name}")
                    removed += 1
                except OSError:
                    pass
        if removed:
            logger.info("unlinked %d host segments of exited client pid %d", removed, pid)
        return removed

    def barred(self, client: bytes, device_id: int) -> bool:
        """Whether ``client`` was reclaimed and has not reset ``device_id`` since."""
        devices = self.table.expired.get(client)
        if devices is None or device_id not in devices:
            return False
        self.tell_reclaimed(client)
        return True

    def tell_reclaimed(self, client: bytes) -> None:
        """Tell a reclaimed client (once) that its devices are lost for it."""
        devices = self.table.expired.get(client)
        if not devices or client in self.table.told:
            return
        self.table.told.add(client)
        reason = "this client was silent too long; its resources were reclaimed"
        for device_id in sorted(devices):
            entry = self.registry.cards[device_id]
            body: dict[str, Any] = {
                "device_id": device_id,
                "epoch": entry.epoch,
                "state": "lost",
                "code": ACL_ERROR_RT_LOST_HEARTBEAT,
                "reason": reason,
                "card": self.describe_card(device_id),
            }
            self.reply(client, Cmd.CARD_EVENT, entry.route, body)
        self.reply(
            client,
            Cmd.DISCONNECT,
            _BROKER_ROUTE,
            {"reason": reason, "code": ACL_ERROR_RT_LOST_HEARTBEAT},
        )

    def describe_reclaimed(self) -> dict[str, Any]:
        """What was reclaimed from departed clients, farm-wide and per card."""
        cards = {str(d): e.reclaimed() for d, e in self.registry.cards.items()}
        totals = {
            key: sum(c[key] for c in cards.values()) for key in ("hbm_bytes", "models", "streams")
        }
        return {
            "clients": sum(self.reclaimed.values()),
            "by_cause": dict(self.reclaimed),
            "card_clients": sum(c["clients"] for c in cards.values()),
            **totals,
            "cards": cards,
            "silence_limit_s": self.silence_s,
        }

    def client_seen(self, client: bytes) -> None:
        self.table.seen(client, time.monotonic())
