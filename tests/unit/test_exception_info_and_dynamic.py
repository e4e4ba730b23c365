"""Pure parts of the exception-info callback (the reporter) and of the dynamic-shape queries
(static models: zero gears)."""

from __future__ import annotations

import threading

from client.dynamic import DynamicShapeApi
from client.exceptions import INFO_INVALID, ExceptionInfo, ExceptionReporter
from client.handles import HandleTables
from tests.conftest import poll_for


def test_infos_are_kept_only_while_a_callback_is_set():
    reporter = ExceptionReporter()
    assert reporter.report(ExceptionInfo.task_failed(1, 2, 3, 0, 507015)) == 0
    seen = []
    reporter.set_callback(lambda info: seen.append((info, threading.get_ident())))
    handle = reporter.report(ExceptionInfo.task_failed(7, 0x5000_0000_0010, 42, 1, 507015))
    assert handle != 0
    assert reporter.drain(5.0)
    assert seen == [(handle, seen[0][1])] and seen[0][1] != threading.get_ident()
    assert reporter.field(handle, "task_id") == 7
    assert reporter.field(handle, "stream_id") == 0x10  # low 32 bits of the handle
    assert reporter.field(handle, "thread_id") == 42
    assert reporter.field(handle, "device_id") == 1
    assert reporter.field(handle, "error_code") == 507015
    for junk in (0, handle + 1, "x", None, True, 1.5):
        assert reporter.field(junk, "task_id") == INFO_INVALID


def test_device_lost_info_marks_everything_but_the_device_abnormal():
    info = ExceptionInfo.device_lost(3)
    assert info == ExceptionInfo(INFO_INVALID, INFO_INVALID, INFO_INVALID, 3, INFO_INVALID)
    assert ExceptionInfo.task_failed(2**40 + 5, -1, 0, 0, 1).task_id == 5
    assert ExceptionInfo.task_failed(1, -1, 0, 0, 1).stream_id == INFO_INVALID


def test_history_is_bounded_and_a_raising_callback_does_not_stop_delivery(caplog):
    reporter = ExceptionReporter(history=2, idle_s=0.05)
    delivered = []

    def callback(info):
        delivered.append(info)
        if len(delivered) == 1:
            raise RuntimeError("user bug")

    reporter.set_callback(callback)
    handles = [reporter.report(ExceptionInfo.device_lost(d)) for d in range(3)]
    assert reporter.drain(5.0)
    assert delivered == handles
    assert "raised" in caplog.text
    assert reporter.info(handles[0]) is None  # fell out of the history
    assert reporter.field(handles[2], "device_id") == 2
    poll_for(lambda: reporter._thread is None, 5.0)  # the idle dispatcher ends
    reporter.report(ExceptionInfo.device_lost(5))  # and is started again on demand
    assert reporter.drain(5.0) and len(delivered) == 4
    reporter.set_callback(None)
    assert reporter.report(ExceptionInfo.device_lost(6)) == 0


class _State:
    """The part of client.state.RuntimeState the dynamic-shape queries use."""

    def __init__(self) -> None:
        self.handles = HandleTables()
        self.errors = []

    def note_error(self, call, exc) -> None:
        self.errors.append((call, exc.code))


def test_dynamic_queries_report_no_gears_for_any_live_desc():
    state = _State()
    api = DynamicShapeApi(state)
    desc = state.handles.create_desc()  # unfilled: still a live description
    assert api.get_dynamic_batch(desc) == ({"batchCount": 0, "batch": []}, 0)
    assert api.get_dynamic_hw(desc, 0) == ({"hwCount": 0, "hw": []}, 0)
    assert api.get_input_dynamic_gear_count(desc, -1) == (0, 0)
    assert api.get_input_dynamic_gear_count(desc, 2**64 - 1) == (0, 0)  # -1 as pyACL passes it
    assert api.get_input_dynamic_gear_count(desc, 0) == (0, 100000)
    assert api.get_input_dynamic_dims(desc, -1, 2) == (
        [{"name": "", "dimCount": 0, "dims": []}] * 2,
        0,
    )
    assert api.get_input_dynamic_dims(desc, 0, 0) == ([], 100000)
    assert api.get_input_dynamic_dims(desc, -1, 5000) == (None, 100000)
    state.handles.destroy_desc(desc)
    assert api.get_dynamic_batch(desc) == ({}, 100000)
    assert api.get_dynamic_hw(0, -1) == ({}, 100000)
    assert api.get_input_dynamic_gear_count(None, -1) == (0, 100000)
    assert ("get_dynamic_batch", 100000) in state.errors
