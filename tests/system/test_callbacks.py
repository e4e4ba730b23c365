"""Host callbacks, pyACL style: a report thread started with acl.util.start_thread loops on
process_report; callbacks launched on a stream run on it, in stream order, with their user data;
a blocking callback holds the stream's later tasks until it returns."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H, D2D = 1, 2, 3


def _report_loop(args_list):
    acl, stop = args_list
    while not stop.is_set():
        acl.rt.process_report(50)  # 507012 on an idle tick: keep looping


def test_callbacks_run_on_the_report_thread_in_stream_order(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        n = 4096
        src, _ = acl.rt.malloc(n, 0)
        dst, _ = acl.rt.malloc(n, 0)
        stop = threading.Event()
        tid, ret = acl.util.start_thread(_report_loop, [acl, stop])
        assert ret == 0
        assert acl.rt.launch_callback(print, None, 0, stream) == 107015  # nobody subscribed
        assert acl.rt.subscribe_report(tid, stream) == 0
        assert acl.rt.subscribe_report(tid, stream) == 100033
        seen = []

        def record(data):
            seen.append((data, threading.get_ident()))

        def overwrite_src(value):
            # runs on the report thread; the copy queued after this blocking callback must see it
            host = np.full(n, value, np.uint8)
            acl.rt.memcpy(src, n, acl.util.numpy_to_ptr(host), n, H2D)
            seen.append((f"wrote {value}", threading.get_ident()))

        assert acl.rt.memset_async(src, n, 1, n, stream) == 0
        assert acl.rt.launch_callback(record, "first", 0, stream) == 0
        assert acl.rt.launch_callback(overwrite_src, 9, 1, stream) == 0
        assert acl.rt.memcpy_async(dst, n, src, n, D2D, stream) == 0  # held until it returns
        assert acl.rt.launch_callback(record, {"k": 3}, 0, stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0  # waits for the callbacks too
        assert [item for item, _ in seen] == ["first", "wrote 9", {"k": 3}]
        assert {thread for _, thread in seen} == {tid}
        out = np.empty(n, np.uint8)
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, dst, n, D2H) == 0
        assert (out == 9).all()
        assert acl.rt.unsubscribe_report(tid, stream) == 0
        stop.set()
        assert acl.util.stop_thread(tid) == 0
        assert acl.rt.process_report(10) == 107012  # this thread subscribed to nothing
        assert acl.rt.reset_device(0) == 0


def test_process_report_times_out_with_507012(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(1) == 0
        stream, _ = acl.rt.create_stream()
        result = {}

        def subscriber():
            result["subscribe"] = acl.rt.subscribe_report(threading.get_ident(), stream)
            result["idle"] = acl.rt.process_report(30)

        thread = threading.Thread(target=subscriber)
        thread.start()
        thread.join(10)
        assert result == {"subscribe": 0, "idle": 507012}
        assert acl.rt.reset_device(1) == 0
