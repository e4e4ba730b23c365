"""The hybrid wait on a real card (integration, device/pacing.py): before a due completion the
card stops sleeping a window early and spins; meanwhile it still takes messages at once, the
completion keeps its modelled times and is not sent before its planned time, an idle card does
not spin, and ``timer_spin_s = 0`` never spins.

One real card in a thread (modelled latency on) against the scripted broker of
:mod:`tests.integration.card_harness`; the spin window is forced wide (as if the host's sleeps
woke that late, and its CPU were free) so that it can be seen on a loaded test box.
"""

from __future__ import annotations

import time

import pytest

from core.errors import ACL_SUCCESS
from core.protocol import TASK_STAMP
from device.timing import MAX_LEAD_S
from tests.integration.card_harness import CLIENT, AddBuffers, CardHarness

pytestmark = pytest.mark.timeout(30)

MODELLED_S = 0.3
WINDOW_S = 0.2


def open_card(spin_s: float):
    h = CardHarness(time_scale=1.0, timer_spin_s=spin_s)
    h.start()
    handle = h.load_add(fixed_s=MODELLED_S)
    return h, AddBuffers(h), handle


def force_window(h: CardHarness, window_s: float) -> None:
    """As if this host's sleeps woke ``window_s`` late at the p99 and its CPU were free."""
    spin = h.card.spin
    spin._pressure = lambda: None  # (no PSI: never contended)
    spin.cap_s = window_s
    spin.lateness.add_many([window_s] * spin.lateness.window)
    spin._update()
    assert spin.value == window_s


@pytest.fixture
def spinning():
    h, buffers, handle = open_card(0.001)
    try:
        force_window(h, WINDOW_S)
        yield h, buffers, handle
    finally:
        h.close()


def test_a_spinning_card_takes_messages_at_once_and_keeps_the_modelled_times(spinning):
    h, buffers, handle = spinning
    stamp = time.monotonic()
    ids = [h.broker.task_id() for _ in range(2)]  # one stream: back to back in the model
    h.broker.submit([buffers.task(t, handle, **{TASK_STAMP: stamp}) for t in ids])
    time.sleep(MODELLED_S - WINDOW_S / 2)  # the card spins by now (the first completion's)
    asked_s = time.monotonic()
    reply = h.broker.request("mem_info", CLIENT)
    answered_s = time.monotonic()
    assert reply["code"] == ACL_SUCCESS
    assert answered_s - asked_s < WINDOW_S / 2, "a spinning card must still answer at once"
    assert h.card.spin.spun_s > 0.0
    rows = {}
    for task_id in ids:
        rows.update(h.broker.completions([task_id]))
        arrived_s = time.monotonic()
        _, code, start_s, end_s, _, _ = rows[task_id]
        assert code == ACL_SUCCESS
        assert arrived_s >= end_s - h.card.runner.lead.value - 0.001  # not before its plan
    first, second = (rows[t] for t in ids)
    assert first[2] == stamp and first[3] == pytest.approx(stamp + MODELLED_S)
    assert second[2] == first[3] and second[3] == pytest.approx(stamp + 2 * MODELLED_S)
    assert h.card.runner.lead.value <= MAX_LEAD_S
    buffers.check_output()
    # it spun about the window before each completion, not the whole task
    assert 0.5 * WINDOW_S < h.card.spin.spun_s < 2 * WINDOW_S + 0.1
    assert h.card.runner.timing()["flush_us"] >= 0.0


def test_an_idle_card_does_not_spin(spinning):
    h, buffers, handle = spinning
    task_id = h.broker.task_id()
    h.broker.submit([buffers.task(task_id, handle, **{TASK_STAMP: time.monotonic()})])
    assert h.broker.completions([task_id])[task_id][1] == ACL_SUCCESS
    spun_s = h.card.spin.spun_s
    deadline = time.monotonic() + 0.6  # heartbeats, no completion due
    while time.monotonic() < deadline:
        h.broker.pump()  # (the broker's beats keep the card alive)
    assert h.card.spin.spun_s == spun_s
    assert len(h.broker.heartbeats) >= 5
    assert h.alive()


def test_timer_spin_s_zero_never_spins():
    h, buffers, handle = open_card(0.0)
    try:
        h.card.spin._pressure = lambda: None
        h.card.spin.lateness.add_many([WINDOW_S] * h.card.spin.lateness.window)
        h.card.spin._update()
        assert h.card.spin.value == 0.0
        task_id = h.broker.task_id()
        h.broker.submit([buffers.task(task_id, handle, **{TASK_STAMP: time.monotonic()})])
        assert h.broker.completions([task_id])[task_id][1] == ACL_SUCCESS
        assert h.card.spin.spun_s == 0.0
        assert h.card.stats_body()["timing"]["spin_us"] == 0.0
    finally:
        h.close()
