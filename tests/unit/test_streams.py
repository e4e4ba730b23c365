"""Unit tests for device.streams.StreamScheduler: per-stream FIFO, slots, fairness, waits."""

from __future__ import annotations

import itertools

import pytest

from device.streams import StreamScheduler, Task

pytestmark = pytest.mark.timeout(30)

A = b"client-a"
B = b"client-b"


class Builder:
    """Tasks shaped like the protocol's task maps, with client-wide increasing task ids."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def _task(self, client: bytes, stream: int, body: dict) -> Task:
        task_id = next(self._ids)
        body = {"t": task_id, "s": stream, **body}
        return Task(client, stream, task_id, body, submitted_s=0.0)

    def exec(self, stream: int, client: bytes = A) -> Task:
        return self._task(client, stream, {"k": "exec", "m": 1, "i": [], "o": []})

    def record(self, stream: int, client: bytes = A) -> Task:
        return self._task(client, stream, {"k": "record"})

    def wait(self, stream: int, ws: int, wt: int, client: bytes = A) -> Task:
        return self._task(client, stream, {"k": "wait", "ws": ws, "wt": wt})


@pytest.fixture
def make() -> Builder:
    return Builder()


def ids(tasks: list[Task]) -> list[int]:
    return [t.task_id for t in tasks]


def submit_all(scheduler: StreamScheduler, *tasks: Task) -> None:
    for task in tasks:
        scheduler.submit(task)


def test_needs_at_least_one_slot():
    with pytest.raises(ValueError):
        StreamScheduler(0)


def test_empty_scheduler_starts_nothing():
    scheduler = StreamScheduler(2)
    assert scheduler.take_startable() == []
    assert scheduler.queued == 0
    assert scheduler.running == 0
    assert scheduler.stream_count() == 0


def test_fifo_one_running_task_per_stream(make):
    scheduler = StreamScheduler(4)
    t1, t2, t3 = make.exec(1), make.exec(1), make.exec(1)
    submit_all(scheduler, t1, t2, t3)
    assert scheduler.stream_count() == 1
    assert scheduler.queued == 3
    assert scheduler.take_startable() == [t1]  # free slots do not run a stream's tasks at once
    assert scheduler.take_startable() == []
    assert scheduler.running == 1
    assert scheduler.queued == 2
    scheduler.finish(t1)
    assert scheduler.take_startable() == [t2]
    scheduler.finish(t2)
    assert scheduler.take_startable() == [t3]
    scheduler.finish(t3)
    assert scheduler.take_startable() == []
    stream = scheduler.streams[(A, 1)]
    assert stream.done == 3
    assert stream.last_done == t3.task_id
    assert scheduler.running_slots == 0


def test_submit_while_running_waits_for_finish(make):
    scheduler = StreamScheduler(2)
    t1 = make.exec(1)
    scheduler.submit(t1)
    assert scheduler.take_startable() == [t1]
    t2 = make.exec(1)
    scheduler.submit(t2)
    assert scheduler.take_startable() == []
    scheduler.finish(t1)
    assert scheduler.take_startable() == [t2]


def test_same_stream_id_of_different_clients_are_different_streams(make):
    scheduler = StreamScheduler(4)
    a, b = make.exec(1, client=A), make.exec(1, client=B)
    submit_all(scheduler, a, b)
    assert scheduler.stream_count() == 2
    assert scheduler.take_startable() == [a, b]


def test_slot_limit_across_streams(make):
    scheduler = StreamScheduler(2)
    s1, s2, s3 = make.exec(1), make.exec(2), make.exec(3)
    submit_all(scheduler, s1, s2, s3)
    assert scheduler.take_startable() == [s1, s2]
    assert scheduler.running_slots == 2
    assert scheduler.take_startable() == []  # the third stream waits for a slot
    scheduler.finish(s2)
    assert scheduler.running_slots == 1
    assert scheduler.take_startable() == [s3]
    assert scheduler.running_slots == 2
    scheduler.finish(s1)
    scheduler.finish(s3)
    assert scheduler.running_slots == 0
    assert scheduler.running == 0


def test_round_robin_fairness(make):
    """With one slot, three busy streams take turns instead of one stream draining first."""
    scheduler = StreamScheduler(1)
    for _ in range(3):
        submit_all(scheduler, make.exec(1), make.exec(2), make.exec(3))
    order = []
    while started := scheduler.take_startable():
        assert len(started) == 1
        order.append(started[0].stream)
        scheduler.finish(started[0])
    assert order == [1, 2, 3] * 3


def test_round_robin_with_two_slots(make):
    scheduler = StreamScheduler(2)
    for _ in range(2):
        submit_all(scheduler, make.exec(1), make.exec(2), make.exec(3))
    first = scheduler.take_startable()
    assert [t.stream for t in first] == [1, 2]
    scheduler.finish(first[0])  # stream 1 goes to the back, behind stream 3
    second = scheduler.take_startable()
    assert [t.stream for t in second] == [3]
    scheduler.finish(first[1])
    scheduler.finish(second[0])
    third = scheduler.take_startable()
    assert [t.stream for t in third] == [1, 2]


def test_record_and_wait_take_no_slot(make):
    scheduler = StreamScheduler(1)
    busy = make.exec(1)
    scheduler.submit(busy)
    assert scheduler.take_startable() == [busy]
    assert scheduler.running_slots == 1
    blocked = make.exec(2)
    rec = make.record(3)
    wait = make.wait(4, ws=9, wt=1)  # stream 9 does not exist: nothing to wait for
    submit_all(scheduler, blocked, rec, wait)
    # no slot for the exec, but the slot-free heads behind it go on
    assert scheduler.take_startable() == [rec, wait]
    assert scheduler.running_slots == 1
    scheduler.finish(rec)
    scheduler.finish(wait)
    assert scheduler.running_slots == 1
    assert scheduler.take_startable() == []
    scheduler.finish(busy)
    assert scheduler.take_startable() == [blocked]


def test_wait_blocks_until_awaited_record_finishes(make):
    scheduler = StreamScheduler(4)
    e1 = make.exec(1)
    rec = make.record(1)
    scheduler.submit(e1)
    scheduler.submit(rec)
    wait = make.wait(2, ws=1, wt=rec.task_id)
    after = make.exec(2)
    submit_all(scheduler, wait, after)
    assert scheduler.take_startable() == [e1]  # the wait holds stream 2
    assert scheduler.take_startable() == []
    scheduler.finish(e1)
    assert scheduler.take_startable() == [rec]  # the record is still running: still held
    assert scheduler.take_startable() == []
    scheduler.finish(rec)  # releases the waiter
    assert scheduler.take_startable() == [wait]
    scheduler.finish(wait)
    assert scheduler.take_startable() == [after]


def test_wait_ignores_later_tasks_on_the_awaited_stream(make):
    scheduler = StreamScheduler(4)
    rec = make.record(1)
    scheduler.submit(rec)
    assert scheduler.take_startable() == [rec]
    scheduler.finish(rec)
    later = make.exec(1)  # id > wt: not part of what was recorded
    scheduler.submit(later)
    wait = make.wait(2, ws=1, wt=rec.task_id)
    scheduler.submit(wait)
    assert scheduler.take_startable() == [later, wait]


def test_wait_on_a_running_task_with_higher_id_is_satisfied(make):
    scheduler = StreamScheduler(4)
    wait_first = make.wait(2, ws=1, wt=0)  # awaits "nothing yet recorded" on stream 1
    big = make.exec(1)
    submit_all(scheduler, big, wait_first)
    assert scheduler.take_startable() == [big, wait_first]


def test_wait_released_only_when_every_task_up_to_wt_is_done(make):
    scheduler = StreamScheduler(1)
    e1, e2 = make.exec(1), make.exec(1)
    rec = make.record(1)
    submit_all(scheduler, e1, e2, rec)
    wait = make.wait(2, ws=1, wt=rec.task_id)
    scheduler.submit(wait)
    assert scheduler.take_startable() == [e1]
    scheduler.finish(e1)  # waiter re-checked: e2 and the record are still queued
    assert scheduler.take_startable() == [e2]
    scheduler.finish(e2)
    assert scheduler.take_startable() == [rec]
    scheduler.finish(rec)
    assert scheduler.take_startable() == [wait]


def test_several_streams_wait_on_one_record(make):
    scheduler = StreamScheduler(4)
    e1 = make.exec(1)
    rec = make.record(1)
    submit_all(scheduler, e1, rec)
    waits = [make.wait(s, ws=1, wt=rec.task_id) for s in (2, 3, 4)]
    submit_all(scheduler, *waits)
    assert scheduler.take_startable() == [e1]
    scheduler.finish(e1)
    assert scheduler.take_startable() == [rec]
    scheduler.finish(rec)
    assert scheduler.take_startable() == waits


def test_wait_on_another_clients_stream_id_is_not_confused(make):
    """Stream ids are per client: client B's wait on ws=1 looks at B's stream 1 only."""
    scheduler = StreamScheduler(4)
    a1 = make.exec(1, client=A)
    scheduler.submit(a1)
    assert scheduler.take_startable() == [a1]
    wait = make.wait(2, ws=1, wt=a1.task_id, client=B)
    scheduler.submit(wait)
    assert scheduler.take_startable() == [wait]


def test_drop_client_frees_slots_and_removes_streams(make):
    scheduler = StreamScheduler(2)
    a1, a2, a3 = make.exec(1, A), make.exec(2, A), make.exec(1, A)
    b1 = make.exec(1, B)
    submit_all(scheduler, a1, a2, a3, b1)
    assert scheduler.take_startable() == [a1, a2]
    assert scheduler.take_startable() == []  # b1 has no slot
    dropped = scheduler.drop_client(A)
    assert dropped == [a3]  # the queued ones; running ones are abandoned by the card
    assert scheduler.running_slots == 0
    assert set(scheduler.streams) == {(B, 1)}
    assert scheduler.take_startable() == [b1]
    # a late finish of a dropped task is ignored and does not corrupt the slot count
    scheduler.finish(a1)
    assert scheduler.running_slots == 1
    scheduler.finish(b1)
    assert scheduler.running_slots == 0


def test_drop_client_forgets_its_waiters(make):
    scheduler = StreamScheduler(2)
    e1 = make.exec(1, A)
    rec = make.record(1, A)
    submit_all(scheduler, e1, rec)
    wait = make.wait(2, ws=1, wt=rec.task_id, client=A)
    scheduler.submit(wait)
    assert scheduler.take_startable() == [e1]
    scheduler.drop_client(A)
    assert scheduler.stream_count() == 0
    assert scheduler.queued == 0
    scheduler.finish(e1)
    assert scheduler.take_startable() == []
    b1 = make.exec(1, B)
    scheduler.submit(b1)
    assert scheduler.take_startable() == [b1]


def test_drop_unknown_client_is_harmless(make):
    scheduler = StreamScheduler(1)
    t = make.exec(1)
    scheduler.submit(t)
    assert scheduler.drop_client(b"nobody") == []
    assert scheduler.take_startable() == [t]


def test_finish_of_a_task_that_is_not_running_is_ignored(make):
    scheduler = StreamScheduler(1)
    t1, t2 = make.exec(1), make.exec(1)
    submit_all(scheduler, t1, t2)
    assert scheduler.take_startable() == [t1]
    scheduler.finish(t2)  # queued, not running
    assert scheduler.running_slots == 1
    assert scheduler.take_startable() == []
    scheduler.finish(t1)
    scheduler.finish(t1)  # twice
    assert scheduler.running_slots == 0
    assert scheduler.take_startable() == [t2]


def test_counters(make):
    scheduler = StreamScheduler(1)
    submit_all(scheduler, make.exec(1), make.exec(1), make.exec(2))
    assert scheduler.queued == 3
    started = scheduler.take_startable()
    assert scheduler.queued == 2
    assert scheduler.running == 1
    scheduler.finish(started[0])
    assert scheduler.running == 0


def test_put_back_undoes_take_startable(make):
    scheduler = StreamScheduler(2)
    a1, b1, c1 = make.exec(1), make.exec(2), make.record(3)
    a2 = make.exec(1)
    submit_all(scheduler, a1, b1, c1, a2)
    taken = scheduler.take_startable()
    assert taken == [a1, b1, c1]
    scheduler.put_back(taken)
    assert scheduler.running_slots == 0
    assert scheduler.running == 0
    assert scheduler.queued == 4
    assert scheduler.take_startable() == [a1, b1, c1]  # same tasks, same order
    scheduler.finish(a1)
    assert scheduler.take_startable() == [a2]


def test_put_back_ignores_tasks_that_are_not_running(make):
    scheduler = StreamScheduler(1)
    t1, t2 = make.exec(1), make.exec(1)
    submit_all(scheduler, t1, t2)
    assert scheduler.take_startable() == [t1]
    scheduler.put_back([t2])  # queued, never taken
    assert scheduler.running_slots == 1
    assert scheduler.queued == 1
    scheduler.finish(t1)
    assert scheduler.take_startable() == [t2]
