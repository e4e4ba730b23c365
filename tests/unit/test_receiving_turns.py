"""client.receiving.Turns: a notify wakes only the followers with a reason to wake (their task is
done, or one of them to take over a free receive socket); plain waiters always wake."""

from __future__ import annotations

import threading
import time

from client.receiving import Turns


class _Rig:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.vacant = False
        self.cond = Turns(self.lock, lambda: self.vacant)
        self.done: dict[str, bool] = {}
        self.woken: list[str] = []

    def follower(self, name: str, timeout_s: float = 5.0) -> threading.Thread:
        self.done[name] = False

        def run() -> None:
            with self.cond:
                if self.cond.wait_turn(lambda: self.done[name], timeout_s):
                    self.woken.append(name)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def settle(self, count: int) -> None:
        deadline = time.monotonic() + 2.0
        while len(self.cond._waiters) != count and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(self.cond._waiters) == count


def test_a_follower_whose_task_runs_is_not_woken() -> None:
    rig = _Rig()
    threads = [rig.follower("a"), rig.follower("b")]
    rig.settle(2)
    with rig.cond:
        rig.cond.notify_all()  # the leader drained something, nobody's task is done
    time.sleep(0.05)
    assert rig.woken == []
    with rig.cond:
        rig.done["b"] = True
        rig.cond.notify_all()
    threads[1].join(2.0)
    assert rig.woken == ["b"]
    with rig.cond:
        rig.done["a"] = True
        rig.cond.notify_all()
    threads[0].join(2.0)
    assert rig.woken == ["b", "a"]


def test_a_free_socket_wakes_one_follower_to_take_it_over() -> None:
    rig = _Rig()
    threads = [rig.follower("a"), rig.follower("b")]
    rig.settle(2)
    with rig.cond:
        rig.vacant = True
        rig.cond.notify_all()
    rig.settle(1)
    time.sleep(0.05)
    assert len(rig.woken) == 1
    with rig.cond:
        rig.cond.notify_all()  # still free: the next one
    for thread in threads:
        thread.join(2.0)
    assert sorted(rig.woken) == ["a", "b"]


def test_plain_waiters_and_timeouts() -> None:
    rig = _Rig()
    woken = []

    def plain() -> None:
        with rig.cond:
            woken.append(rig.cond.wait(5.0))

    thread = threading.Thread(target=plain)
    thread.start()
    rig.settle(1)
    with rig.cond:
        rig.cond.notify_all()
    thread.join(2.0)
    assert woken == [True]
    late = rig.follower("late", timeout_s=0.02)
    late.join(2.0)
    assert rig.woken == [] and not rig.cond._waiters and not rig.cond._reasons


def test_a_failing_predicate_wakes_its_waiter() -> None:
    rig = _Rig()
    calls = []

    def broken() -> bool:
        calls.append(1)
        if len(calls) > 1:
            raise KeyError("gone")
        return False

    result = []

    def run() -> None:
        with rig.cond:
            result.append(rig.cond.wait_turn(broken, 5.0))

    thread = threading.Thread(target=run)
    thread.start()
    rig.settle(1)
    with rig.cond:
        calls.append(0)  # the next check raises
        rig.cond.notify_all()
    thread.join(2.0)
    assert result == [True]
