"""The submitting thread's native id (exception infos name it) is asked of the kernel once per
thread, and each thread gets its own."""

from __future__ import annotations

import threading

from client.session import _native_thread_id


def test_each_thread_sees_its_own_native_id():
    seen: dict[str, tuple[int, int]] = {}
    together = threading.Barrier(3)  # all alive at once: no thread id is reused

    def look(name: str) -> None:
        seen[name] = (_native_thread_id(), _native_thread_id())
        together.wait(5.0)

    threads = [threading.Thread(target=look, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen["main"] = (_native_thread_id(), _native_thread_id())
    assert seen["main"] == (threading.get_native_id(),) * 2
    ids = {first for first, second in seen.values() if first == second}
    assert len(ids) == 4  # one per thread, stable within it
