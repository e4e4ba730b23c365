"""farm.client_table: who is alive, judged by pid (local) or silence (remote), with fakes."""

from __future__ import annotations

import os

from farm.client_table import ClientTable, proc_start_ticks, silence_limit_s


class FakeProc:
    def __init__(self) -> None:
        self.start: dict[int, int] = {}

    def __call__(self, pid: int) -> int | None:
        return self.start.get(pid)


def test_a_local_client_is_judged_by_its_process_not_its_silence():
    proc = FakeProc()
    proc.start[100] = 5
    table = ClientTable("here", probe=proc)
    table.hello(b"a", {"pid": 100, "host": "here"}, now=0.0)
    table.hello(b"b", {"pid": 101}, now=0.0)  # no such process here: judged by silence
    assert table.clients[b"a"].watched and not table.clients[b"b"].watched
    assert table.due(now=1000.0, silence_s=1.0) == [(b"b", "silent", "silent for 1000.00s")]
    table.forget(b"b")
    proc.start[100] = 6  # the pid now names another process: ours has exited
    assert table.due(now=0.5, silence_s=1.0) == [(b"a", "exited", "process 100 exited")]
    del proc.start[100]
    assert [c for c, _, _ in table.due(now=0.5, silence_s=1.0)] == [b"a"]


def test_a_remote_or_odd_hello_is_judged_by_silence():
    proc = FakeProc()
    proc.start[7] = 1
    table = ClientTable("here", probe=proc)
    for identity, body in (
        (b"r", {"pid": 7, "host": "there"}),
        (b"x", {"pid": True}),
        (b"y", [1]),
        (b"z", {"pid": -3, "host": 5}),
    ):
        table.hello(identity, body, now=0.0)
        assert not table.clients[identity].watched
    table.seen(b"r", now=0.9)
    assert sorted(c for c, _, _ in table.due(now=1.5, silence_s=1.0)) == [b"x", b"y", b"z"]


def test_an_expired_client_is_barred_until_it_resets_each_device():
    table = ClientTable("here")
    table.expire(b"a", {0, 1})
    table.expire(b"b", set())  # held nothing: nothing to tell
    assert dict(table.expired) == {b"a": {0, 1}}
    table.told.add(b"a")
    table.reset(b"a", 0)
    assert table.expired[b"a"] == {1} and b"a" in table.told
    table.reset(b"a", 1)
    assert b"a" not in table.expired and b"a" not in table.told


def test_silence_limit_and_proc_probe():
    assert silence_limit_s(0.2) == 1.0 and silence_limit_s(1.0) == 2.0
    assert isinstance(proc_start_ticks(os.getpid()), int)
    assert proc_start_ticks(2**22 + 12345) is None
