"""How a client's view of the farm follows what the broker says, so the farm never lies to it.

A card the HELLO reply calls lost or failed is lost here too (507010, sticky until reset +
set_device), not a segment that fails to open. A broker that falls silent past the expiry fails
every wait at once; when it speaks again the client says HELLO once more and the answer decides:
cards whose epoch moved on (or that the farm lost meanwhile) are lost here, sticky; the others
work again. Another farm at the same address leaves the session lost for good. A DISCONNECT
from the broker means it released this client (its memory on the cards is gone): every device
in use is lost, and a HELLO makes the process a client again, so reset + set_device recovers.

A mixin of :class:`client.session.Session`; every method runs on the thread that holds the
receive socket unless it says otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from core import protocol as proto
from core.errors import NpuFarmError
from core.protocol import BROKER_DEVICE, Cmd

__all__ = ["Membership", "hello_body"]

logger = logging.getLogger(__name__)

_BROKER_ROUTE = proto.pack_route(BROKER_DEVICE, 0)
_DEAD_STATES = ("lost", "failed")  # card states in a farm description that mean "lost here"


def hello_body() -> bytes:
    """Who this client is: the broker reclaims a dead client's resources by pid and host."""
    return proto.pack({"pid": os.getpid(), "host": socket.gethostname()})


class Membership:
    """Card states from HELLO, re-joining after a silence, release by the broker."""

    def mark_lost(self, device_id: int, why: str) -> None:
        """This process cannot use the device's current epoch (its memory is gone, or the farm
        said so): lost, sticky until reset + set_device, as if the farm had said so. Any
        thread."""
        epoch = self.epochs.get(device_id)
        if epoch is not None:
            logger.warning("device %d: %s", device_id, why)
            self._card_lost(device_id, epoch)

    def _adopt_card_states(self, cards: dict[int, dict]) -> None:
        """At the first HELLO: a card the farm has lost or given up on is lost here too."""
        with self.cond:
            for device_id, card in cards.items():
                if card.get("state") in _DEAD_STATES:
                    self.lost[device_id] = card["epoch"]

    def _rejoin(self, why: str) -> None:
        """Say HELLO again: the reply tells which cards survived."""
        logger.warning("broker at %s: %s; joining again", self.address, why)
        self._rejoining = True
        self._send(self._socket, Cmd.HELLO, _BROKER_ROUTE, hello_body())

    def _rejoined(self, farm: Any) -> None:
        """The answer to a second HELLO: cards whose epoch moved on, or that the farm has lost,
        are lost here (sticky); the rest work again. Another farm at the address: lost for
        good (and no further HELLO)."""
        if not isinstance(farm, dict) or not isinstance(farm.get("cards"), list):
            raise NpuFarmError("HELLO body without cards")
        if farm.get("farm_id") != self.farm.get("farm_id"):  # _rejoining stays set
            logger.error("another farm (%s) answers at %s", farm.get("farm_id"), self.address)
            return
        self._rejoining = False
        cards = {c["device_id"]: c for c in farm["cards"] if isinstance(c, dict)}
        for device_id, epoch in list(self.epochs.items()):
            card = cards.get(device_id)
            if card is None or card.get("epoch") != epoch or card.get("state") != "ready":
                self.mark_lost(device_id, "lost while the broker was silent")
        with self.cond:
            was_lost, self.broker_lost = self.broker_lost, False
            self.cond.notify_all()
        if was_lost:
            logger.warning("broker at %s answers again: session resumed", self.address)

    def _expired(self) -> None:
        """The broker released this client (silent too long, or the broker stalled): its
        memory on every card is gone, so every device in use is lost (507010, sticky until
        reset + set_device); a HELLO makes this process a client again."""
        in_use = self.devices_in_use() if self.devices_in_use is not None else self.epochs
        for device_id in list(in_use):
            self.mark_lost(device_id, "the broker released this client")
        if self._running and not self._rejoining:
            self._rejoin("released this client")
