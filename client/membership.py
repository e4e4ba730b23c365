"""How a client's view of the farm follows what the broker says, so the farm never lies to it.

A card the HELLO reply calls lost or failed is lost here too (507010, sticky until reset +
set_device), not a segment that fails to open. A broker that falls silent past the expiry fails
every wait at once; when it speaks again the client says HELLO once more and the answer decides:
cards whose epoch moved on (or that the farm lost meanwhile) are lost here, sticky; the others
work again. Another farm at the same address leaves the session lost for good. A DISCONNECT
from the broker means it released this client (its memory on the cards is gone): every device
in use is lost, and a HELLO makes the process a client again, so reset + set_device recovers.

:class:`Membership` is a part of :class:`client.session.Session`, given the session by
reference: it decides on the session's view of the farm (``farm``, ``epochs``, ``lost``,
``broker_lost``) and acts through the session's ``card_lost``. Every method runs on the thread
that holds the receive socket unless it says otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from core import protocol as proto
from core.errors import NpuFarmError

__all__ = ["Membership", "MemberSession", "hello_body"]

logger = logging.getLogger(__name__)

_DEAD_STATES = ("lost", "failed")  # card states in a farm description that mean "lost here"


def hello_body() -> bytes:
    """Who this client is: the broker reclaims a dead client's resources by pid and host."""
    return proto.pack({"pid": os.getpid(), "host": socket.gethostname()})


class MemberSession(Protocol):
    """What :class:`Membership` reads and calls of its session."""

    address: str
    cond: threading.Condition
    farm: dict
    epochs: dict[int, int]
    lost: dict[int, int]
    broker_lost: bool
    devices_in_use: Callable[[], list[int]] | None

    def card_lost(self, device_id: int, epoch: int) -> None: ...


class Membership:
    """Card states from HELLO, re-joining after a silence, release by the broker.
    ``send_hello`` sends a HELLO on the session's receive socket (the caller holds it)."""

    def __init__(self, session: MemberSession, send_hello: Callable[[], None]) -> None:
        self._session = session
        self._send_hello = send_hello
        self.rejoining = False  # a HELLO was sent after a broker silence or a DISCONNECT

    def mark_lost(self, device_id: int, why: str) -> None:
        """This process cannot use the device's current epoch (its memory is gone, or the farm
        said so): lost, sticky until reset + set_device, as if the farm had said so. Any
        thread."""
        epoch = self._session.epochs.get(device_id)
        if epoch is not None:
            logger.warning("device %d: %s", device_id, why)
            self._session.card_lost(device_id, epoch)

    def adopt_card_states(self, cards: dict[int, dict]) -> None:
        """At the first HELLO: a card the farm has lost or given up on is lost here too."""
        session = self._session
        with session.cond:
            for device_id, card in cards.items():
                if card.get("state") in _DEAD_STATES:
                    session.lost[device_id] = card["epoch"]

    def rejoin(self, why: str) -> None:
        """Say HELLO again: the reply tells which cards survived."""
        logger.warning("broker at %s: %s; joining again", self._session.address, why)
        self.rejoining = True
        self._send_hello()

    def rejoined(self, farm: Any) -> None:
        """The answer to a second HELLO: cards whose epoch moved on, or that the farm has lost,
        are lost here (sticky); the rest work again. Another farm at the address: lost for
        good (and no further HELLO)."""
        session = self._session
        if not isinstance(farm, dict) or not isinstance(farm.get("cards"), list):
            raise NpuFarmError("HELLO body without cards")
        if farm.get("farm_id") != session.farm.get("farm_id"):  # rejoining stays set
            logger.error("another farm (%s) answers at %s", farm.get("farm_id"), session.address)
            return
        self.rejoining = False
        cards = {c["device_id"]: c for c in farm["cards"] if isinstance(c, dict)}
        for device_id, epoch in list(session.epochs.items()):
            card = cards.get(device_id)
            if card is None or card.get("epoch") != epoch or card.get("state") != "ready":
                self.mark_lost(device_id, "lost while the broker was silent")
        with session.cond:
            was_lost, session.broker_lost = session.broker_lost, False
            session.cond.notify_all()
        if was_lost:
            logger.warning("broker at %s answers again: session resumed", session.address)

    def expired(self, running: bool) -> None:
        """The broker released this client (silent too long, or the broker stalled): its
        memory on every card is gone, so every device in use is lost (507010, sticky until
        reset + set_device); a HELLO makes this process a client again (unless the session
        is no longer ``running``)."""
        session = self._session
        in_use = session.devices_in_use() if session.devices_in_use is not None else session.epochs
        for device_id in list(in_use):
            self.mark_lost(device_id, "the broker released this client")
        if running and not self.rejoining:
            self.rejoin("released this client")
