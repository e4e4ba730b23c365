"""Unit tests for client.outbox: who sends a post (the posting thread at once, or the I/O thread
after a wake-up), batching of bursts, order with requests, the lock recheck, the submit stamp.

The socket is never touched: ``client.outbox.send_message`` is replaced by a recorder that notes
the sending thread and the decoded message.
"""

from __future__ import annotations

import threading
import time

import pytest

import client.outbox as outbox_mod
from client.outbox import DIRECT_GAP_S, MAX_BATCH, Outbox
from core import protocol as proto
from core.protocol import TASK_STAMP, Cmd

__all__: list[str] = []

pytestmark = pytest.mark.timeout(30)

ROUTE_A = proto.pack_route(0, 1)
ROUTE_B = proto.pack_route(1, 1)


class Recorder:
    """Stands in for ``send_message``: (thread name, cmd, route, unpacked body) per message."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, object]] = []
        self.gate: threading.Event | None = None  # set: sends block until it is set

    def __call__(self, socket: object, cmd: bytes, route: bytes, body: bytes) -> None:
        if self.gate is not None:
            self.gate.wait(5.0)
        self.sent.append((threading.current_thread().name, cmd, route, proto.unpack(body)))


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(outbox_mod, "send_message", recorder)
    return recorder


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _outbox() -> tuple[Outbox, Wakes]:
    wakes = Wakes()
    return Outbox(object(), wakes), wakes  # the socket is only handed to send_message


def _task(n: int) -> dict:
    return {"t": n, TASK_STAMP: float(n)}


def test_direct_post_is_sent_by_the_posting_thread_without_a_wake(rec: Recorder) -> None:
    box, wakes = _outbox()
    box.post(Cmd.SUBMIT, ROUTE_A, _task(1), direct=True)
    assert wakes.count == 0
    assert not box
    assert rec.sent == [(threading.current_thread().name, Cmd.SUBMIT, ROUTE_A, [_task(1)])]


def test_a_burst_is_batched_and_wakes_the_io_thread_once(rec: Recorder) -> None:
    box, wakes = _outbox()
    box.post(Cmd.SUBMIT, ROUTE_A, _task(1), direct=True)  # a round trip's first submit
    for n in range(2, 12):  # the rest of a burst, microseconds apart
        box.post(Cmd.SUBMIT, ROUTE_A, _task(n))
    assert wakes.count == 1  # once until the I/O thread reads it
    assert len(rec.sent) == 1 and box
    box.woken()
    box.flush_now()  # what the woken I/O thread (or a waiting thread) does
    assert [m[3] for m in rec.sent] == [[_task(1)], [_task(n) for n in range(2, 12)]]


def test_a_post_after_a_pause_is_sent_at_once(rec: Recorder) -> None:
    box, wakes = _outbox()
    box.post(Cmd.SUBMIT, ROUTE_A, _task(1))  # the first post ever follows a long pause
    time.sleep(2 * DIRECT_GAP_S)
    box.post(Cmd.SUBMIT, ROUTE_A, _task(2))
    assert wakes.count == 0 and not box
    assert [m[3] for m in rec.sent] == [[_task(1)], [_task(2)]]


def test_order_with_requests_and_max_batch(rec: Recorder) -> None:
    box, wakes = _outbox()
    box.post(Cmd.REQUEST, ROUTE_B, {"rid": 0}, direct=True)
    for n in range(MAX_BATCH + 3):
        box.post(Cmd.SUBMIT, ROUTE_A, _task(n))
    box.post(Cmd.SUBMIT, ROUTE_B, _task(100))
    box.post(Cmd.REQUEST, ROUTE_B, {"rid": 1})
    box.post(Cmd.SUBMIT, ROUTE_A, _task(200))
    box.flush_now()
    got = [(m[1], m[2], m[3]) for m in rec.sent]
    assert got == [
        (Cmd.REQUEST, ROUTE_B, {"rid": 0}),
        (Cmd.SUBMIT, ROUTE_A, [_task(n) for n in range(MAX_BATCH)]),
        (Cmd.SUBMIT, ROUTE_A, [_task(n) for n in range(MAX_BATCH, MAX_BATCH + 3)]),
        (Cmd.SUBMIT, ROUTE_B, [_task(100)]),
        (Cmd.REQUEST, ROUTE_B, {"rid": 1}),
        (Cmd.SUBMIT, ROUTE_A, [_task(200)]),
    ]


def test_a_post_while_another_thread_sends_is_taken_along(rec: Recorder) -> None:
    """The lock holder looks at the queue again after releasing it: nothing waits for a
    wake-up that may never be read (the I/O thread is not running here)."""
    box, wakes = _outbox()
    rec.gate = threading.Event()
    sender = threading.Thread(
        target=box.send, args=(Cmd.HEARTBEAT, ROUTE_B, proto.pack({})), name="holder"
    )
    sender.start()
    deadline = time.monotonic() + 5.0
    while not box.lock.locked() and time.monotonic() < deadline:
        time.sleep(0.001)
    box.post(Cmd.SUBMIT, ROUTE_A, _task(1), direct=True)  # lock busy: queued, I/O woken
    assert box and wakes.count == 1
    rec.gate.set()
    sender.join(5.0)
    assert not box
    assert [(m[0], m[1]) for m in rec.sent] == [("holder", Cmd.HEARTBEAT), ("holder", Cmd.SUBMIT)]


def test_concurrent_direct_posts_lose_nothing_and_keep_per_thread_order(rec: Recorder) -> None:
    box, _ = _outbox()
    threads_n, per_thread = 4, 200

    def run(index: int) -> None:
        for n in range(per_thread):
            box.post(Cmd.SUBMIT, ROUTE_A, {"t": index * 10_000 + n}, direct=n % 3 == 0)
        box.flush_now()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
    box.flush_now()
    tasks = [task["t"] for m in rec.sent for task in m[3]]
    assert len(tasks) == threads_n * per_thread
    for index in range(threads_n):
        mine = [t for t in tasks if t // 10_000 == index]
        assert mine == [index * 10_000 + n for n in range(per_thread)]


def test_no_send_after_stop(rec: Recorder) -> None:
    box, _ = _outbox()
    box.stop()
    box.post(Cmd.SUBMIT, ROUTE_A, _task(1), direct=True)
    box.flush_now()
    assert rec.sent == []


def test_submit_stamp(rec: Recorder) -> None:
    box, _ = _outbox()
    before = time.monotonic()
    box.post(Cmd.SUBMIT, ROUTE_A, {"t": 1}, direct=True)  # unstamped: stamped at post
    box.post(Cmd.SUBMIT, ROUTE_A, {"t": 2, TASK_STAMP: 5.0}, direct=True)  # kept
    stamps = [m[3][0][TASK_STAMP] for m in rec.sent]
    assert before <= stamps[0] <= time.monotonic()
    assert stamps[1] == 5.0
