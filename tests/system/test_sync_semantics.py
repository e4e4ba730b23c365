"""Synchronization semantics found wrong by reading the code (issue 9): a device sync with a
timeout keeps one deadline and loses no error; synchronous executes on one context from two
threads each get their own error; a lost card ends a -1 sync held by a host callback;
memset_async is a registered write; an exec-config timeout is consumed by a timed sync."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.conftest import poll_for
from tests.system.test_faults import fault_farm, scale_model_file, timed

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H = 1, 2
N = 64
NBYTES = N * 4
FAIL = 507015
LOST = 507010
TIMEOUT = 507046
BAD_RULE = {"kind": "error", "card": 0, "api": "execute", "model": "bad", "code": FAIL}


class Runner:
    """A model loaded on the current device with its own input and output buffers."""

    def __init__(self, acl, tmp_path, name: str = "good", fixed_s: float = 0.001) -> None:
        self.acl = acl
        model_file = scale_model_file(tmp_path, fixed_s, name, N)
        self.model_id, ret = acl.mdl.load_from_file(str(model_file))
        assert ret == 0, acl.get_recent_err_msg()
        self.d_in, _ = acl.rt.malloc(NBYTES, 0)
        self.d_out, _ = acl.rt.malloc(NBYTES, 0)
        x = np.arange(N, dtype=np.float32)
        assert acl.rt.memcpy(self.d_in, NBYTES, acl.util.numpy_to_ptr(x), NBYTES, H2D) == 0
        self.inputs, self.outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(self.inputs, acl.create_data_buffer(self.d_in, NBYTES))
        acl.mdl.add_dataset_buffer(self.outputs, acl.create_data_buffer(self.d_out, NBYTES))

    def submit(self, stream, config=None) -> int:
        if config is None:
            return self.acl.mdl.execute_async(self.model_id, self.inputs, self.outputs, stream)
        return self.acl.mdl.execute_async_v2(
            self.model_id, self.inputs, self.outputs, stream, config
        )

    def execute(self) -> int:
        return self.acl.mdl.execute(self.model_id, self.inputs, self.outputs)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("sync")


@pytest.fixture(scope="module")
def timed_farm(module_tmp):
    """Modelled latencies count (time_scale 1); model "bad" always fails on card 0."""
    with fault_farm(module_tmp, BAD_RULE, extra=["--time-scale", "1"]) as farm:
        yield farm


def test_device_sync_with_timeout_has_one_deadline(timed_farm, acl_on, tmp_path):
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        slow = Runner(acl, tmp_path, "slow", 0.25)
        streams = [acl.rt.create_stream()[0] for _ in range(3)]
        event, _ = acl.rt.create_event()
        for index, stream in enumerate(streams):  # a chain: done at 0.25, 0.5 and 0.75 s
            if index:
                assert acl.rt.stream_wait_event(stream, event) == 0
            assert slow.submit(stream) == 0
            assert acl.rt.record_event(event, stream) == 0
        code, waited_s = timed(lambda: acl.rt.synchronize_device_with_timeout(400))
        assert code == TIMEOUT and 0.35 <= waited_s < 0.6, (code, waited_s)
        assert acl.rt.synchronize_device() == 0
        assert acl.rt.reset_device(0) == 0


def test_device_sync_timeout_loses_no_error(timed_farm, acl_on, tmp_path):
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        bad, slow = Runner(acl, tmp_path, "bad"), Runner(acl, tmp_path, "slow", 0.5)
        failing, busy = acl.rt.create_stream()[0], acl.rt.create_stream()[0]
        assert bad.submit(failing) == 0
        poll_for(lambda: acl.rt.stream_query(failing) == (0, 0))
        assert slow.submit(busy) == 0
        assert acl.rt.synchronize_device_with_timeout(100) == TIMEOUT
        assert acl.rt.synchronize_stream(failing) == FAIL  # still there, reported once
        assert acl.rt.synchronize_stream(failing) == 0
        assert bad.submit(failing) == 0
        assert acl.rt.synchronize_device() == FAIL
        assert acl.rt.synchronize_device() == 0
        assert acl.rt.reset_device(0) == 0


def test_synchronous_executes_on_one_context_get_their_own_errors(timed_farm, acl_on, tmp_path):
    rounds = 40
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        context, _ = acl.rt.get_context()
        bad, good = Runner(acl, tmp_path, "bad"), Runner(acl, tmp_path, "good")
        codes: dict[str, list[int]] = {"bad": [], "good": []}
        start = threading.Barrier(2)

        def run(name: str, runner: Runner) -> None:
            assert acl.rt.set_context(context) == 0
            start.wait()
            for _ in range(rounds):
                codes[name].append(runner.execute())

        threads = [
            threading.Thread(target=run, args=item) for item in (("bad", bad), ("good", good))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert codes == {"bad": [FAIL] * rounds, "good": [0] * rounds}
        assert acl.rt.reset_device(0) == 0


def test_a_lost_card_ends_a_sync_held_by_a_host_callback(tmp_path, acl_on):
    with fault_farm(tmp_path) as farm:
        expiry_s = farm.state["heartbeat_interval_s"] * farm.state["heartbeat_liveness"]
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            subscribed, release = threading.Event(), threading.Event()

            def report_thread() -> None:  # subscribes, then is busy elsewhere: runs nothing
                acl.rt.subscribe_report(threading.get_ident(), stream)
                subscribed.set()
                release.wait(30)
                acl.rt.process_report(10)

            reporter = threading.Thread(target=report_thread)
            reporter.start()
            assert subscribed.wait(10)
            assert acl.rt.launch_callback(lambda _: None, None, 1, stream) == 0
            result = {}
            syncer = threading.Thread(
                target=lambda: result.setdefault("code", acl.rt.synchronize_stream(stream))
            )
            syncer.start()
            syncer.join(0.3)
            assert syncer.is_alive()  # the callback has not run: the sync waits for it
            started = time.monotonic()
            os.kill(farm.card_pids()[0], signal.SIGKILL)
            syncer.join(expiry_s + 5.0)
            assert result == {"code": LOST}
            assert time.monotonic() - started < expiry_s + 2.0
            release.set()
            reporter.join(10)
            assert acl.rt.reset_device(0) == 0


def test_memset_async_is_a_write_the_sanitizer_sees(timed_farm, acl_on, monkeypatch):
    from client import RUNTIME

    monkeypatch.setenv("NPUFARM_SANITIZER", "warn")
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        device, _ = acl.rt.malloc(NBYTES, 0)
        host = np.zeros(NBYTES, np.uint8)
        assert acl.rt.memset_async(device, NBYTES, 7, NBYTES, stream) == 0
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(host), NBYTES, device, NBYTES, D2H) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(host), NBYTES, device, NBYTES, D2H) == 0
        assert (host == 7).all()
        assert acl.rt.reset_device(0) == 0
    assert [(f.kind, f.call) for f in RUNTIME.last_findings] == [
        ("read_before_sync", "acl.rt.memcpy")
    ]
    assert "(acl.rt.memset_async)" in RUNTIME.last_findings[0].message


def test_a_timed_sync_consumes_the_exec_config_timeout(timed_farm, acl_on, tmp_path):
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        slow = Runner(acl, tmp_path, "slow", 0.3)
        config = acl.mdl.create_exec_config_handle()
        assert acl.mdl.set_exec_config_opt(config, 0, 50) == 0  # ACL_MDL_STREAM_SYNC_TIMEOUT
        assert slow.submit(stream, config) == 0
        assert acl.rt.synchronize_stream_with_timeout(stream, 5000) == 0  # its own timeout
        assert slow.submit(stream) == 0  # a plain execute_async: no exec-config timeout left
        code, waited_s = timed(lambda: acl.rt.synchronize_stream(stream))
        assert code == 0 and waited_s >= 0.25
        assert slow.submit(stream, config) == 0
        assert acl.rt.synchronize_device_with_timeout(5000) == 0  # a device sync consumes too
        assert slow.submit(stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        assert acl.rt.reset_device(0) == 0


def _report_loop(args_list):
    acl, stop = args_list
    while not stop.is_set():
        acl.rt.process_report(20)


def test_a_wait_on_a_record_held_behind_a_blocking_callback_waits(timed_farm, acl_on):
    """Stream A: a blocking callback, then record E (held in the client until the callback
    returns). Stream B waits for E, then fills the buffer the callback writes: B must not run
    before the callback returned and the record completed."""
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        a, b = acl.rt.create_stream()[0], acl.rt.create_stream()[0]
        buffer, _ = acl.rt.malloc(NBYTES, 0)
        stop, go, entered = threading.Event(), threading.Event(), threading.Event()
        tid, _ = acl.util.start_thread(_report_loop, [acl, stop])
        assert acl.rt.subscribe_report(tid, a) == 0
        ones = np.ones(NBYTES, np.uint8)

        def write_ones(_):
            entered.set()
            go.wait(10)
            acl.rt.memcpy(buffer, NBYTES, acl.util.numpy_to_ptr(ones), NBYTES, H2D)

        event, _ = acl.rt.create_event()
        assert acl.rt.launch_callback(write_ones, None, 1, a) == 0
        assert acl.rt.record_event(event, a) == 0  # held until write_ones returns
        assert acl.rt.stream_wait_event(b, event) == 0
        assert acl.rt.memset_async(buffer, NBYTES, 9, NBYTES, b) == 0
        assert entered.wait(10)
        assert acl.rt.synchronize_stream_with_timeout(b, 300) == TIMEOUT  # still waiting
        go.set()
        assert acl.rt.synchronize_stream(b) == 0
        host = np.zeros(NBYTES, np.uint8)
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(host), NBYTES, buffer, NBYTES, D2H) == 0
        assert (host == 9).all()
        assert acl.rt.synchronize_stream(a) == 0
        assert acl.rt.unsubscribe_report(tid, a) == 0
        stop.set()
        assert acl.util.stop_thread(tid) == 0
        assert acl.rt.reset_device(0) == 0


def test_destroy_stream_lets_the_card_forget_the_stream(timed_farm, acl_on, tmp_path):
    from client import RUNTIME

    def card_streams() -> int:
        return RUNTIME.session.request(0, "stats")["streams"]

    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        runner = Runner(acl, tmp_path, "good")
        before = card_streams()
        for _ in range(20):
            stream, _ = acl.rt.create_stream()
            assert runner.submit(stream) == 0
            assert acl.rt.destroy_stream(stream) == 0  # waits for the task first
        forced, _ = acl.rt.create_stream()
        assert Runner(acl, tmp_path, "slow", 0.2).submit(forced) == 0
        assert acl.rt.destroy_stream_force(forced) == 0  # its entry goes once drained
        poll_for(lambda: card_streams() <= before, 5.0)
        main, _ = acl.rt.get_context()
        for _ in range(5):  # a context's streams and its synchronous-execute queue go with it
            context, _ = acl.rt.create_context(0)
            stream, _ = acl.rt.create_stream()
            assert runner.submit(stream) == 0 and runner.execute() == 0
            assert acl.rt.synchronize_stream(stream) == 0
            assert acl.rt.destroy_context(context) == 0
            assert acl.rt.set_context(main) == 0
        poll_for(lambda: card_streams() <= before, 5.0)
        assert acl.rt.reset_device(0) == 0
