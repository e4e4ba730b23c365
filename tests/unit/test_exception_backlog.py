"""A stuck exception-info callback does not grow the client without bound."""

from __future__ import annotations

import threading

from client.exceptions import ExceptionInfo, ExceptionReporter


def test_infos_waiting_for_a_stuck_callback_are_bounded_and_counted():
    release, entered = threading.Event(), threading.Event()
    delivered: list[int] = []

    def stuck(handle: int) -> None:
        entered.set()
        release.wait(10)
        delivered.append(handle)

    reporter = ExceptionReporter(idle_s=0.05, backlog=8)
    reporter.set_callback(stuck)
    first = reporter.report(ExceptionInfo.device_lost(0))
    assert entered.wait(5)  # the dispatcher is inside the first call now
    handles = [reporter.report(ExceptionInfo.task_failed(i, 1, 2, 0, 507015)) for i in range(100)]
    assert len(reporter._pending) == 8 and reporter.dropped == 92
    release.set()
    assert reporter.drain(5)
    assert delivered == [first, *handles[-8:]]  # the newest infos, in order
