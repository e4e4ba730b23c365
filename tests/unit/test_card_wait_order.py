"""Unit tests of StreamScheduler.bad_wait: a wait is queued only when its record is an earlier
task of the client already submitted on the awaited stream, which keeps waits deadlock-free."""

from __future__ import annotations

from device.streams import StreamScheduler, Task

A, B = b"client-a", b"client-b"


def _submit(scheduler: StreamScheduler, client: bytes, stream: int, task_id: int, **body) -> None:
    body = {"k": "record", "t": task_id, "s": stream, **body}
    scheduler.submit(Task(client, stream, task_id, body, 0.0))


def _wait(task_id: int, awaited: int, record: int) -> dict:
    return {"k": "wait", "t": task_id, "s": 9, "ws": awaited, "wt": record}


def test_a_wait_must_name_an_earlier_task():
    scheduler = StreamScheduler(slots=1)
    _submit(scheduler, A, 1, 5)
    assert scheduler.bad_wait(A, _wait(5, 1, 5)) is not None  # itself
    assert scheduler.bad_wait(A, _wait(4, 1, 5)) is not None  # a later task
    assert scheduler.bad_wait(A, _wait(6, 1, 5)) is None


def test_the_record_must_have_been_submitted_on_the_awaited_stream():
    scheduler = StreamScheduler(slots=1)
    _submit(scheduler, A, 1, 1)
    _submit(scheduler, A, 2, 2)
    assert scheduler.bad_wait(A, _wait(3, 1, 2)) is not None  # task 2 is on stream 2
    assert scheduler.bad_wait(A, _wait(3, 2, 2)) is None
    assert scheduler.bad_wait(B, _wait(3, 1, 1)) is not None  # another client's record


def test_a_retired_stream_still_satisfies_a_wait_on_its_record():
    scheduler = StreamScheduler(slots=1)
    _submit(scheduler, A, 1, 1)
    (task,) = scheduler.take_startable()
    scheduler.finish(task)
    assert scheduler.retire((A, 1))
    assert scheduler.bad_wait(A, _wait(2, 1, 1)) is None  # drained and destroyed: passes
    assert scheduler.bad_wait(A, _wait(3, 1, 2)) is not None  # never submitted at all
    scheduler.drop_client(A)
    assert scheduler.bad_wait(A, _wait(3, 1, 1)) is not None  # the client left: nothing known
