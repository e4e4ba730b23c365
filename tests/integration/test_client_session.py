"""Integration tests for client.session against a scripted broker (a ROUTER in this process).

The client's view of the farm must follow what the broker says: a card the HELLO reply calls
lost or failed is lost here; a DISCONNECT (the broker released this client) loses every device;
a broker that falls silent and then speaks again resumes the session, with the cards whose
epoch moved on meanwhile lost (sticky) and the others usable.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading

import pytest
import zmq

from client.session import Session
from core import protocol as proto
from core.errors import ACL_ERROR_RT_LOST_HEARTBEAT, AclError
from core.protocol import BROKER_DEVICE, Cmd, pack_route
from tests.conftest import poll_for

pytestmark = pytest.mark.timeout(30)

BROKER_ROUTE = pack_route(BROKER_DEVICE, 0)
INTERVAL_S = 0.05
LIVENESS = 4


def _farm(states: dict[int, tuple[str, int]], farm_id: str = "scripted-1") -> dict:
    return {
        "farm_id": farm_id,
        "heartbeat_interval_s": INTERVAL_S,
        "heartbeat_liveness": LIVENESS,
        "cards": [
            {"device_id": d, "epoch": epoch, "state": state, "shm_name": f"none-{d}-{epoch}"}
            for d, (state, epoch) in states.items()
        ],
    }


class ScriptedBroker:
    """Answers HELLO with ``self.farm`` and HEARTBEAT with HEARTBEAT while ``self.speaking``;
    records every HELLO body."""

    def __init__(self, address: str, farm: dict) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(address)
        self.farm = farm
        self.speaking = True
        self.hellos: list[dict] = []
        self.client: bytes | None = None
        self.outbox: list[tuple[bytes, dict]] = []
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="scripted-broker", daemon=True)
        self.thread.start()

    def send(self, cmd: bytes, body: dict) -> None:
        self.outbox.append((cmd, body))

    def _loop(self) -> None:
        while self.running:
            while self.outbox and self.client is not None:
                cmd, body = self.outbox.pop(0)
                self._reply(cmd, body)
            if not self.router.poll(10):
                continue
            frames = self.router.recv_multipart()
            msg = proto.parse_client_message(frames, with_identity=True)
            identity = proto.reply_identity(msg.identity)
            if not self.speaking:
                continue
            self.client = identity
            if msg.cmd == Cmd.HELLO:
                self.hellos.append(proto.unpack(msg.body))
                self._reply(Cmd.HELLO, self.farm)
            elif msg.cmd == Cmd.HEARTBEAT:
                self._reply(Cmd.HEARTBEAT, {})

    def _reply(self, cmd: bytes, body: dict) -> None:
        self.router.send_multipart(
            proto.client_message(cmd, BROKER_ROUTE, proto.pack(body), self.client)
        )

    def stop(self) -> None:
        self.running = False
        self.thread.join(5.0)
        self.router.close(0)
        self.ctx.term()


@pytest.fixture
def scripted():
    tmpdir = tempfile.mkdtemp(prefix="nfs", dir="/tmp")
    brokers: list[ScriptedBroker] = []
    sessions: list[Session] = []

    def start(states: dict[int, tuple[str, int]]) -> tuple[ScriptedBroker, Session]:
        address = f"ipc://{tmpdir}/b{len(brokers)}.sock"
        broker = ScriptedBroker(address, _farm(states))
        brokers.append(broker)
        session = Session(address, connect_timeout_s=5.0)
        sessions.append(session)
        return broker, session

    yield start
    for session in sessions:
        session.close()
    for broker in brokers:
        broker.stop()
    shutil.rmtree(tmpdir, ignore_errors=True)


def _lost_code(session: Session, device_id: int) -> int | None:
    try:
        session.check_device(device_id)
    except AclError as exc:
        return exc.code
    return None


def test_hello_names_the_host_and_pid(scripted):
    broker, _ = scripted({0: ("ready", 1)})
    assert broker.hellos == [{"pid": os.getpid(), "host": socket.gethostname()}]


def test_cards_lost_or_failed_at_hello_are_lost_here(scripted):
    _, session = scripted({0: ("ready", 1), 1: ("lost", 1), 2: ("failed", 3)})
    assert session.lost == {1: 1, 2: 3}
    assert _lost_code(session, 0) is None
    assert _lost_code(session, 1) == _lost_code(session, 2) == ACL_ERROR_RT_LOST_HEARTBEAT


def test_disconnect_from_the_broker_loses_every_device_and_rejoins(scripted):
    broker, session = scripted({0: ("ready", 1), 1: ("ready", 1)})
    lost = []
    session.on_lost = lost.append
    broker.send(Cmd.DISCONNECT, {})
    poll_for(lambda: session.lost == {0: 1, 1: 1}, 5.0)
    assert sorted(lost) == [0, 1]
    poll_for(lambda: len(broker.hellos) == 2, 5.0)  # a client again (reset + set_device works)
    assert not session.broker_lost


def test_disconnect_loses_only_the_devices_in_use(scripted):
    broker, session = scripted({0: ("ready", 1), 1: ("ready", 1)})
    session.devices_in_use = lambda: [1]
    broker.send(Cmd.DISCONNECT, {})
    poll_for(lambda: len(broker.hellos) == 2, 5.0)
    assert session.lost == {1: 1}


def test_a_silent_broker_that_speaks_again_resumes_the_session(scripted):
    broker, session = scripted({0: ("ready", 1), 1: ("ready", 1)})
    broker.speaking = False
    poll_for(lambda: session.broker_lost, 5.0)
    assert _lost_code(session, 0) == ACL_ERROR_RT_LOST_HEARTBEAT  # every call meanwhile
    broker.farm = _farm({0: ("ready", 1), 1: ("ready", 2)})  # card 1 restarted meanwhile
    broker.speaking = True
    poll_for(lambda: not session.broker_lost, 5.0)
    assert _lost_code(session, 0) is None
    assert session.lost == {1: 1}  # sticky until reset + set_device


def test_another_farm_at_the_address_keeps_the_session_lost(scripted):
    broker, session = scripted({0: ("ready", 1)})
    broker.speaking = False
    poll_for(lambda: session.broker_lost, 5.0)
    broker.farm = _farm({0: ("ready", 1)}, farm_id="scripted-2")
    broker.speaking = True
    poll_for(lambda: len(broker.hellos) == 2, 5.0)
    beats = session._last_heard
    poll_for(lambda: session._last_heard > beats + 3 * INTERVAL_S, 5.0)  # heard again since
    assert session.broker_lost
    assert len(broker.hellos) == 2  # one HELLO, not one per heartbeat
