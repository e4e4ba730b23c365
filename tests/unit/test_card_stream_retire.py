"""Unit tests for StreamScheduler.retire (the card side of ``destroy_stream``): a destroyed
stream's entry goes at once when idle, else when its last task finishes, so entries do not grow
without bound over a long client's life."""

from __future__ import annotations

import pytest

from device.streams import StreamScheduler
from tests.unit.test_streams import A, B, Builder

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def make() -> Builder:
    return Builder()


def test_an_idle_stream_goes_at_once():
    scheduler = StreamScheduler(2)
    assert scheduler.retire((A, 3)) is True  # never seen: nothing to keep
    assert scheduler.stream_count() == 0


def test_a_busy_stream_goes_when_drained(make):
    scheduler = StreamScheduler(1)
    first, second, other = make.exec(1), make.exec(1), make.exec(2, client=B)
    for task in (first, second, other):
        scheduler.submit(task)
    assert scheduler.take_startable() == [first]
    assert scheduler.retire((A, 1)) is False
    scheduler.finish(first)
    assert (A, 1) in scheduler.streams  # the second task is still queued
    finished = []
    while started := scheduler.take_startable():
        for task in started:
            finished.append(task)
            scheduler.finish(task)
    assert sorted(t.task_id for t in finished) == [second.task_id, other.task_id]
    assert list(scheduler.streams) == [(B, 2)]
    assert scheduler.running_slots == 0


def test_a_reused_id_is_not_retired(make):
    scheduler = StreamScheduler(2)
    first = make.exec(1)
    scheduler.submit(first)
    scheduler.take_startable()
    scheduler.retire((A, 1))
    again = make.exec(1)
    scheduler.submit(again)  # the client created a stream with the same id
    scheduler.finish(first)
    assert scheduler.take_startable() == [again]
    scheduler.finish(again)
    assert (A, 1) in scheduler.streams


def test_a_wait_on_a_retiring_stream_is_released(make):
    scheduler = StreamScheduler(2)
    record = make.record(1)
    scheduler.submit(make.exec(1))
    scheduler.submit(record)
    wait = make.wait(2, ws=1, wt=record.task_id)
    scheduler.submit(wait)
    running = scheduler.take_startable()
    scheduler.retire((A, 1))
    for task in running:
        scheduler.finish(task)
    scheduler.finish(*scheduler.take_startable())  # the record
    assert (A, 1) not in scheduler.streams
    assert scheduler.take_startable() == [wait]


def test_a_departing_client_forgets_its_retiring_streams(make):
    scheduler = StreamScheduler(1)
    task = make.exec(1)
    scheduler.submit(task)
    scheduler.take_startable()
    scheduler.retire((A, 1))
    scheduler.drop_client(A)
    assert scheduler.stream_count() == 0 and scheduler.running_slots == 0
    scheduler.submit(make.exec(1))
    assert scheduler.stream_count() == 1
