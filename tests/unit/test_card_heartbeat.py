"""device.heartbeat.Heartbeat: the keeper thread ticks only for a late loop, and only while the
loop has let go of the socket lock (a real thread and short intervals; no socket)."""

from __future__ import annotations

import threading
import time

import pytest

from device.heartbeat import Heartbeat
from tests.conftest import poll_for

pytestmark = pytest.mark.timeout(30)

INTERVAL_S = 0.02


class Recorder:
    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.ticks: list[tuple[float, bool]] = []
        self.unlocked_ticks = 0

    def tick(self, now: float, from_loop: bool) -> None:
        if self.lock.acquire(blocking=False):  # the caller must hold it
            self.unlocked_ticks += 1
            self.lock.release()
        self.ticks.append((now, from_loop))


@pytest.fixture
def beat():
    lock = threading.Lock()
    recorder = Recorder(lock)
    heartbeat = Heartbeat(INTERVAL_S, recorder.tick, lock, "test-beat")
    heartbeat.recorder = recorder
    yield heartbeat
    heartbeat.stop()


def test_rejects_a_nonpositive_interval():
    with pytest.raises(ValueError):
        Heartbeat(0.0, lambda now, loop: None, threading.Lock(), "x")


def test_the_keeper_ticks_for_a_busy_loop(beat):
    beat.start()  # the loop "computes": it holds no lock and never ticks
    poll_for(lambda: len(beat.recorder.ticks) >= 5, 5.0)
    times = [t for t, _ in beat.recorder.ticks]
    assert all(not from_loop for _, from_loop in beat.recorder.ticks)
    assert beat.covered >= 5
    assert beat.recorder.unlocked_ticks == 0
    assert min(b - a for a, b in zip(times, times[1:])) >= INTERVAL_S * 0.9


def test_the_keeper_never_ticks_while_the_loop_holds_the_socket(beat):
    lock = beat.recorder.lock
    lock.acquire()  # the loop is at its socket (e.g. a blocking send)
    beat.next_s = time.monotonic() - 1.0  # and very late
    beat.start()
    deadline = time.monotonic() + 10 * INTERVAL_S
    while time.monotonic() < deadline:
        assert beat.recorder.ticks == []
        time.sleep(INTERVAL_S / 4)  # observing, not standing in for work
    lock.release()
    poll_for(lambda: beat.recorder.ticks, 5.0)


def test_a_punctual_loop_leaves_the_keeper_idle():
    interval_s = 0.2  # the keeper waits 50 ms past a due tick: room for a busy box's hiccups
    lock = threading.Lock()
    recorder = Recorder(lock)
    beat = Heartbeat(interval_s, recorder.tick, lock, "test-beat")
    beat.start()
    try:
        end = time.monotonic() + 6 * interval_s
        while time.monotonic() < end:
            now = time.monotonic()
            if beat.due(now):
                with lock:
                    beat.loop_tick(now)
            time.sleep(0.002)  # the loop's poll
    finally:
        beat.stop()
    assert beat.covered == 0
    assert len(recorder.ticks) >= 5
    assert all(from_loop for _, from_loop in recorder.ticks)


def test_stop_ends_the_keeper(beat):
    beat.start()
    thread = beat._thread
    beat.stop()
    assert not thread.is_alive()
    count = len(beat.recorder.ticks)
    time.sleep(5 * INTERVAL_S)
    assert len(beat.recorder.ticks) == count
