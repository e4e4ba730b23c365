"""A card losing its peers (integration): a client's DISCONNECT releases that client's memory
and models, the broker's DISCONNECT stops the card, and a silent broker makes it exit.

One real card in a thread against the scripted broker of :mod:`tests.integration.card_harness`.
"""

from __future__ import annotations

import time

import pytest

from core.errors import ACL_ERROR_GE_EXEC_MODEL_ID_INVALID, ACL_SUCCESS
from core.protocol import Cmd
from tests.integration.card_harness import (
    CLIENT,
    EXPIRY_S,
    HBM_BYTES,
    OTHER_CLIENT,
    SHM_DIR,
    TENSOR_BYTES,
    AddBuffers,
)

pytestmark = pytest.mark.timeout(30)


def test_disconnect_of_a_client_releases_its_memory_and_models(harness):
    h = harness
    h.start()
    mine = AddBuffers(h, client=CLIENT)
    handle = h.load_add(client=CLIENT)
    other = h.malloc(TENSOR_BYTES, client=OTHER_CLIENT)
    h.broker.send(Cmd.DISCONNECT, CLIENT, b"")
    info = h.broker.request("mem_info", OTHER_CLIENT)
    assert info["free"] < HBM_BYTES  # the other client's block is still there
    assert h.broker.request("free", OTHER_CLIENT, offset=other)["code"] == ACL_SUCCESS
    assert h.broker.request("mem_info", OTHER_CLIENT)["free"] == HBM_BYTES
    # the departed client's model and memory are gone
    task_id = h.broker.task_id()
    h.broker.submit([mine.task(task_id, handle)], client=CLIENT)
    row = h.broker.completions([task_id])[task_id]
    assert row[1] == ACL_ERROR_GE_EXEC_MODEL_ID_INVALID
    assert h.alive()


def test_disconnect_from_the_broker_stops_the_card(harness):
    h = harness
    h.start()
    h.broker.send(Cmd.DISCONNECT, b"", b"")
    h.broker.pump_for(lambda: not h.thread.is_alive())
    assert not h.errors


def test_card_exits_when_the_broker_goes_silent(harness):
    h = harness
    h.start()
    h.malloc(TENSOR_BYTES)
    h.broker.pump_for(lambda: len(h.broker.heartbeats) >= 2)
    h.broker.beating = False
    h.thread.join(timeout=EXPIRY_S + 5.0)
    assert not h.thread.is_alive(), "card did not notice the silent broker"
    silent_s = time.monotonic() - h.broker.last_beat
    assert silent_s > EXPIRY_S  # not before the expiry...
    assert silent_s < EXPIRY_S + 2.0  # ...and not long after it
    assert not h.errors
    assert h.card.running is False
    assert (SHM_DIR / h.shm_name).exists()  # unlinking is close()'s job (run_card calls it)
    h.shm.close()
    h.shm = None
    h.card.close()
    h.card = None  # closed: the fixture must not close it again
    assert not (SHM_DIR / h.shm_name).exists()
