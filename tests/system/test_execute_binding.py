"""The client's per-task fast paths against a real farm.

* ``execute_async`` reuses a checked binding (model, input and output datasets): it must never
  send addresses that a buffer, dataset, allocation, model or session change made stale; the
  outputs land where the datasets point *now*, and a freed or destroyed buffer fails the call.
* A submit/sync round trip leaves from the API thread with no wake-up of the I/O thread, a
  burst is still batched, and completions nobody waits for are still drained.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import client.outbox as outbox_mod
from client.session import Session
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_ERROR_RT_PARAM_INVALID
from core.protocol import Cmd
from tests.system.conftest import MODELS, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

H2D, D2H = 1, 2
FLOATS = 1024  # identity.toml: float32 [1, 1024] in and out
NBYTES = FLOATS * 4


def _ok(result):
    *values, ret = result
    assert ret == 0, ret
    return values[0] if len(values) == 1 else tuple(values)


class Bench:
    """identity.toml on device 0 with its own stream, input and output datasets."""

    def __init__(self, acl) -> None:
        self.acl = acl
        assert acl.rt.set_device(0) == 0
        self.stream = _ok(acl.rt.create_stream())
        self.model = _ok(acl.mdl.load_from_file(str(MODELS / "identity.toml")))
        self.in_ptr = _ok(acl.rt.malloc(NBYTES, 0))
        self.out_ptr = _ok(acl.rt.malloc(NBYTES, 0))
        self.in_buf = acl.create_data_buffer(self.in_ptr, NBYTES)
        self.out_buf = acl.create_data_buffer(self.out_ptr, NBYTES)
        self.inputs = acl.mdl.create_dataset()
        self.outputs = acl.mdl.create_dataset()
        _ok(acl.mdl.add_dataset_buffer(self.inputs, self.in_buf))
        _ok(acl.mdl.add_dataset_buffer(self.outputs, self.out_buf))

    def write(self, ptr: int, value: float) -> None:
        host = np.full(FLOATS, value, np.float32)
        ret = self.acl.rt.memcpy(ptr, NBYTES, self.acl.util.numpy_to_ptr(host), NBYTES, H2D)
        assert ret == 0

    def read(self, ptr: int) -> np.ndarray:
        host = np.empty(FLOATS, np.float32)
        ret = self.acl.rt.memcpy(self.acl.util.numpy_to_ptr(host), NBYTES, ptr, NBYTES, D2H)
        assert ret == 0
        return host

    def run(self, inputs: int | None = None, outputs: int | None = None) -> int:
        inputs = self.inputs if inputs is None else inputs
        outputs = self.outputs if outputs is None else outputs
        ret = self.acl.mdl.execute_async(self.model, inputs, outputs, self.stream)
        if ret == 0:
            assert self.acl.rt.synchronize_stream(self.stream) == 0
        return ret


def test_outputs_follow_an_updated_buffer(farm, acl_on) -> None:
    with acl_on(farm) as acl:
        bench = Bench(acl)
        bench.write(bench.in_ptr, 1.0)
        for _ in range(3):  # the binding is cached from here on
            assert bench.run() == 0
        assert (bench.read(bench.out_ptr) == 1.0).all()
        other = _ok(acl.rt.malloc(NBYTES, 0))
        bench.write(other, -7.0)
        assert acl.update_data_buffer(bench.out_buf, other, NBYTES) == 0
        bench.write(bench.in_ptr, 2.0)
        assert bench.run() == 0
        assert (bench.read(other) == 2.0).all()  # written where the dataset points now
        assert (bench.read(bench.out_ptr) == 1.0).all()  # the old buffer is untouched
        # and an input moved the same way is read from its new place
        moved_in = _ok(acl.rt.malloc(NBYTES, 0))
        bench.write(moved_in, 3.0)
        assert acl.update_data_buffer(bench.in_buf, moved_in, NBYTES) == 0
        assert bench.run() == 0
        assert (bench.read(other) == 3.0).all()


def test_a_freed_or_destroyed_buffer_fails_after_cached_runs(farm, acl_on) -> None:
    with acl_on(farm) as acl:
        bench = Bench(acl)
        for _ in range(3):
            assert bench.run() == 0
        assert acl.rt.free(bench.out_ptr) == 0
        assert bench.run() == ACL_ERROR_RT_PARAM_INVALID  # not sent to a freed address
        fresh = _ok(acl.rt.malloc(NBYTES, 0))
        assert acl.update_data_buffer(bench.out_buf, fresh, NBYTES) == 0
        assert bench.run() == 0
        assert acl.destroy_data_buffer(bench.in_buf) == 0
        assert bench.run() == ACL_ERROR_INVALID_PARAM


def test_a_swapped_dataset_and_another_model_are_their_own_bindings(farm, acl_on) -> None:
    with acl_on(farm) as acl:
        bench = Bench(acl)
        bench.write(bench.in_ptr, 4.0)
        assert bench.run() == 0
        second_out = _ok(acl.rt.malloc(NBYTES, 0))
        outputs2 = acl.mdl.create_dataset()
        _ok(acl.mdl.add_dataset_buffer(outputs2, acl.create_data_buffer(second_out, NBYTES)))
        assert bench.run(outputs=outputs2) == 0
        assert (bench.read(second_out) == 4.0).all()
        assert acl.mdl.unload(bench.model) == 0
        assert bench.run() != 0  # an unloaded model is not run from a cached binding
        bench.model = _ok(acl.mdl.load_from_file(str(MODELS / "identity.toml")))
        bench.write(bench.in_ptr, 5.0)
        assert bench.run(outputs=outputs2) == 0
        assert (bench.read(second_out) == 5.0).all()


def test_a_new_session_does_not_reuse_the_last_ones_bindings(farm, acl_on) -> None:
    with acl_on(farm) as acl:
        bench = Bench(acl)
        assert bench.run() == 0
        first = (bench.model, bench.inputs, bench.outputs, bench.out_ptr)
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        _ok(acl.rt.malloc(NBYTES, 0))  # shift the allocations of this session
        bench = Bench(acl)
        assert bench.model == first[0]  # model ids restart with each session
        bench.write(bench.in_ptr, 6.0)
        bench.write(bench.out_ptr, 0.0)
        assert bench.run() == 0
        assert (bench.read(bench.out_ptr) == 6.0).all()


class _Counts:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wakes = 0
        self.submits = 0
        wake, send = Session._wake, outbox_mod.send_message

        def counted_wake(session: Session) -> None:
            self.wakes += 1
            wake(session)

        def counted_send(socket, cmd: bytes, route: bytes, body: bytes) -> None:
            self.submits += cmd == Cmd.SUBMIT
            send(socket, cmd, route, body)

        monkeypatch.setattr(Session, "_wake", counted_wake)
        monkeypatch.setattr(outbox_mod, "send_message", counted_send)


def test_round_trips_wake_nobody_and_bursts_are_batched(farm, acl_on, monkeypatch) -> None:
    counts = _Counts(monkeypatch)
    with acl_on(farm) as acl:
        bench = Bench(acl)
        assert bench.run() == 0
        counts.wakes = counts.submits = 0
        rounds = 200
        for _ in range(rounds):
            assert bench.run() == 0
        assert counts.submits == rounds
        assert counts.wakes <= rounds // 4, counts.wakes  # the base code woke 2-3 per round
        counts.submits = 0
        burst = 64
        args = (bench.model, bench.inputs, bench.outputs, bench.stream)
        for _ in range(burst):
            assert acl.mdl.execute_async(*args) == 0
        assert acl.rt.synchronize_stream(bench.stream) == 0
        assert counts.submits <= burst // 4, counts.submits


def test_completions_nobody_waits_for_are_drained(farm, acl_on) -> None:
    """After a sync the I/O thread steps aside; it must come back on its own (no wake-up) and
    drain what finishes later, so a polled event turns complete."""
    with acl_on(farm) as acl:
        bench = Bench(acl)
        assert bench.run() == 0  # this thread received last
        event = _ok(acl.rt.create_event())
        assert acl.mdl.execute_async(bench.model, bench.inputs, bench.outputs, bench.stream) == 0
        assert acl.rt.record_event(event, bench.stream) == 0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            status = _ok(acl.rt.query_event_status(event))
            if status == 1:
                break
            time.sleep(0.0005)
        assert status == 1
        assert acl.rt.destroy_event(event) == 0


@pytest.fixture
def timed_farm():
    """One card that honours modelled latency (the ci config scales it to 0)."""
    running = start_farm(cards=1, extra=["--time-scale", "1"])
    yield running
    stop_and_check(running)


def test_a_long_sync_does_not_keep_the_io_thread_looking(timed_farm, acl_on, monkeypatch, tmp_path):
    """While a thread waits long (a slow model, a hang), the stepped-aside I/O thread looks
    once, ``_LONG_WAIT_S`` into the wait, then sleeps until the waiter's exit wakes it: a 0.3 s
    sync costs it a few turns (heartbeat pings included), not ~150."""
    import threading

    import zmq

    slow = tmp_path / "slow.toml"
    slow.write_text((MODELS / "identity.toml").read_text().replace("0.0005", "0.3"))
    turns = []
    poll = zmq.Poller.poll

    def counted_poll(self, timeout=None):
        if threading.current_thread().name == "npufarm-io":
            turns.append(time.monotonic())
        return poll(self, timeout)

    monkeypatch.setattr(zmq.Poller, "poll", counted_poll)
    with acl_on(timed_farm) as acl:
        bench = Bench(acl)
        model = _ok(acl.mdl.load_from_file(str(slow)))
        assert bench.run() == 0
        start = time.monotonic()
        assert acl.mdl.execute_async(model, bench.inputs, bench.outputs, bench.stream) == 0
        assert acl.rt.synchronize_stream(bench.stream) == 0
        end = time.monotonic()
        assert end - start >= 0.29
        during = [t for t in turns if start <= t <= end]
        assert len(during) <= 30, len(during)
        assert (bench.read(bench.out_ptr) == bench.read(bench.in_ptr)).all()
