"""Submit stamps on a real card (integration): a stamped task's modelled time starts at its
stamp, and a stamp that is garbage, in the future or absurdly old neither stalls nor breaks the
card (device/timing.py); a stamp that is not a number refuses the task with 107000.

One real card in a thread (modelled latency on) against the scripted broker of
:mod:`tests.integration.card_harness`.
"""

from __future__ import annotations

import math
import time

import pytest

from core.errors import ACL_ERROR_RT_PARAM_INVALID, ACL_SUCCESS
from core.protocol import TASK_STAMP
from device.timing import MAX_LEAD_S, MAX_STAMP_AGE_S
from tests.integration.card_harness import AddBuffers, CardHarness

pytestmark = pytest.mark.timeout(30)

MODELLED_S = 0.05


@pytest.fixture
def card():
    h = CardHarness(time_scale=1.0)
    try:
        h.start()
        handle = h.load_add(fixed_s=MODELLED_S)
        yield h, AddBuffers(h), handle
    finally:
        h.close()


def test_a_stamped_task_runs_from_its_stamp(card):
    h, buffers, handle = card
    stamp = time.monotonic() - 0.02  # as if the way to the card took 20 ms
    task_id = h.broker.task_id()
    h.broker.submit([buffers.task(task_id, handle, **{TASK_STAMP: stamp})])
    row = h.broker.completions([task_id])[task_id]
    arrived_s = time.monotonic()
    _, code, start_s, end_s, _, queued_s = row
    assert code == ACL_SUCCESS and queued_s == start_s == stamp
    assert end_s == pytest.approx(stamp + MODELLED_S)
    assert arrived_s >= end_s - MAX_LEAD_S  # sent at most the lead before its modelled end
    buffers.check_output()


@pytest.mark.parametrize(
    "stamp, old",
    [(1e300, False), (math.nan, False), (math.inf, False), (-1e300, True), (0, True), (-5, True)],
    ids=["future", "nan", "inf", "past", "zero", "negative"],
)
def test_an_odd_stamp_neither_stalls_nor_breaks_the_card(card, stamp, old):
    """A stamp in the future (or not finite) counts as the receipt; one far in the past as the
    receipt minus MAX_STAMP_AGE_S, so a task longer than that would still run its tail."""
    h, buffers, handle = card
    before = time.monotonic()
    task_id = h.broker.task_id()
    h.broker.submit([buffers.task(task_id, handle, **{TASK_STAMP: stamp})])
    _, code, start_s, end_s, _, queued_s = h.broker.completions([task_id])[task_id]
    after = time.monotonic()
    assert code == ACL_SUCCESS and queued_s == start_s
    if old:  # its modelled end is long past: ended on arrival
        assert before - MAX_STAMP_AGE_S <= start_s <= after - MAX_STAMP_AGE_S
        assert before <= end_s <= after
    else:
        assert before <= start_s and end_s == pytest.approx(start_s + MODELLED_S)
    assert after - before < 1.0  # never held for the stamp's sake
    buffers.check_output()
    assert h.alive()


def test_a_stamp_that_is_not_a_number_refuses_the_task(card):
    h, buffers, handle = card
    bad, good = h.broker.task_id(), h.broker.task_id()
    h.broker.submit(
        [
            buffers.task(bad, handle, **{TASK_STAMP: "yesterday"}),
            buffers.task(good, handle, stream=1, **{TASK_STAMP: time.monotonic()}),
        ]
    )
    rows = h.broker.completions([bad, good])
    assert rows[bad][1] == ACL_ERROR_RT_PARAM_INVALID
    assert rows[good][1] == ACL_SUCCESS
    assert h.card.stats["malformed"] == 1 and h.alive()


def test_a_batch_of_stamped_tasks_gives_the_lead_one_sample_each(card):
    """One SUBMIT of 16 stamped tasks: 16 transport samples (the lead's median is recomputed
    every 16), each its task's receipt minus its own stamp; an unstamped task gives none."""
    h, buffers, handle = card
    lead = h.card.runner.lead
    assert lead.transport._count == 0
    stamp = time.monotonic() - 0.02  # as if the way to the card took 20 ms
    ids = [h.broker.task_id() for _ in range(17)]
    tasks = [buffers.task(t, handle, i % 4, **{TASK_STAMP: stamp}) for i, t in enumerate(ids)]
    del tasks[-1][TASK_STAMP]
    h.broker.submit(tasks)
    rows = h.broker.completions(ids, timeout_s=10.0)
    assert all(row[1] == ACL_SUCCESS for row in rows.values())
    assert lead.transport._count == 16 and h.card.stats["submitted"] == 17
    assert 0.02 <= lead.transport.value < 0.5
    assert lead.value == MAX_LEAD_S  # (capped)
