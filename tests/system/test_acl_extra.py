"""The remaining pyACL calls real inference programs use, against a real farm: event timing,
exception-info callbacks (an injected task error, a card loss), dynamic-shape queries and
setters on static models, and the small device/model queries samples call first."""

from __future__ import annotations

import threading

import pytest

from client import RUNTIME
from tests.conftest import poll_for
from tests.system.conftest import REPO, start_farm, stop_and_check
from tests.system.test_faults import NBYTES, Model, fault_farm

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

U32_INVALID = 0xFFFFFFFF
MATMUL = str(REPO / "configs" / "models" / "matmul.toml")


@pytest.fixture(scope="module")
def timed_farm():
    """A 1-card farm with real modelled latency (time scale 1), for event timing."""
    running = start_farm(cards=1, extra=["--time-scale", "1"])
    yield running
    stop_and_check(running)


@pytest.fixture
def exception_callback():
    """Collects the fields of every exception info the runtime delivers; the callback is
    process-wide, so it is always cleared afterwards."""
    import acl

    seen: list[dict] = []

    def on_exception(info: int) -> None:
        seen.append(
            {
                "task": acl.rt.get_task_id_from_exception_info(info),
                "stream": acl.rt.get_stream_id_from_exception_info(info),
                "thread": acl.rt.get_thread_id_from_exception_info(info),
                "device": acl.rt.get_device_id_from_exception_info(info),
                "code": acl.rt.get_error_code_from_exception_info(info),
                "on": threading.get_native_id(),
            }
        )

    assert acl.rt.set_exception_info_callback(on_exception) == 0
    try:
        yield seen
    finally:
        assert acl.rt.set_exception_info_callback(None) == 0


# --------------------------------------------------------------------------------------------
# event_elapsed_time


def test_event_elapsed_time_measures_the_card_clock(timed_farm, acl_on, tmp_path):
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        model = Model(acl, tmp_path, fixed_s=0.05)
        start, _ = acl.rt.create_event()
        end, _ = acl.rt.create_event_with_flag(acl.constants.ACL_EVENT_TIME_LINE)
        assert acl.rt.event_elapsed_time(start, end) == (0.0, 507000)  # never recorded
        assert acl.rt.record_event(start, stream) == 0
        assert model.submit(stream) == 0
        assert acl.rt.record_event(end, stream) == 0
        ms, ret = acl.rt.event_elapsed_time(start, end)
        assert (ms, ret) == (0.0, 107006)  # the end record has not completed yet
        assert acl.rt.synchronize_event(end) == 0
        ms, ret = acl.rt.event_elapsed_time(start, end)
        assert ret == 0 and isinstance(ms, float)
        assert 45.0 <= ms <= 1000.0, ms  # the 50 ms task ran between the two records
        back, ret = acl.rt.event_elapsed_time(end, start)
        assert ret == 0 and back == pytest.approx(-ms, abs=1e-3)
        # an empty interval on another stream is (nearly) zero
        other, _ = acl.rt.create_stream()
        assert acl.rt.record_event(start, other) == 0
        assert acl.rt.record_event(end, other) == 0
        assert acl.rt.synchronize_stream(other) == 0
        ms, ret = acl.rt.event_elapsed_time(start, end)
        assert ret == 0 and 0.0 <= ms < 20.0
        # bad handles, as the other event calls
        assert acl.rt.event_elapsed_time(0, end) == (0.0, 100000)
        assert acl.rt.event_elapsed_time(start, 12345) == (0.0, 107000)
        assert acl.rt.destroy_event(end) == 0
        assert acl.rt.event_elapsed_time(start, end) == (0.0, 107000)
        assert acl.rt.destroy_event(start) == 0
        assert RUNTIME.record_times == {}  # nothing kept for destroyed events
        assert acl.rt.reset_device(0) == 0


# --------------------------------------------------------------------------------------------
# exception-info callback


def test_exception_callback_reports_an_injected_task_error(tmp_path, acl_on, exception_callback):
    rule = {
        "kind": "error",
        "card": 1,
        "api": "execute",
        "after_tasks": 1,
        "count": 1,
        "code": 507015,
    }
    with fault_farm(tmp_path, rule) as farm, acl_on(farm) as acl:
        assert acl.rt.set_device(1) == 0
        stream, _ = acl.rt.create_stream()
        model = Model(acl, tmp_path)
        assert model.submit(stream) == 0  # task index 0 runs
        assert acl.rt.synchronize_stream(stream) == 0
        assert exception_callback == []
        assert model.submit(stream) == 0  # index 1 fails on the card
        assert acl.rt.synchronize_stream(stream) == 507015
        poll_for(lambda: exception_callback, 5.0)
        RUNTIME.exception_reporter.drain(5.0)
        assert len(exception_callback) == 1
        info = exception_callback[0]
        assert info["code"] == 507015
        assert info["device"] == 1
        assert info["stream"] == stream & U32_INVALID
        assert info["thread"] == threading.get_native_id()  # the submitting thread
        assert 0 < info["task"] < U32_INVALID
        assert info["on"] != threading.get_native_id()  # delivered on a client thread
        # later tasks run; cleared callback: no more infos
        assert acl.rt.set_exception_info_callback(None) == 0
        assert model.submit(stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        model.check()
        # getters on unknown infos, as CANN's ACL_ERROR_INVALID_EXCEPTION_INFO
        assert acl.rt.get_task_id_from_exception_info(0) == U32_INVALID
        assert acl.rt.get_error_code_from_exception_info(42) == U32_INVALID
        assert acl.rt.set_exception_info_callback("not callable") == 100000
        assert acl.rt.reset_device(1) == 0


def test_exception_callback_reports_a_card_loss_once(tmp_path, acl_on, exception_callback):
    rule = {"kind": "crash", "card": 0, "api": "execute", "after_tasks": 1}
    with fault_farm(tmp_path, rule) as farm, acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        model = Model(acl, tmp_path)
        assert model.submit(stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        for _ in range(3):  # the first crashes the card, the others are failed with it
            assert model.submit(stream) == 0
        assert acl.rt.synchronize_stream(stream) == 507010
        poll_for(lambda: exception_callback, 5.0)
        RUNTIME.exception_reporter.drain(5.0)
        assert exception_callback == [
            {
                "task": U32_INVALID,
                "stream": U32_INVALID,
                "thread": U32_INVALID,
                "device": 0,
                "code": U32_INVALID,
                "on": exception_callback[0]["on"],
            }
        ]
        assert acl.rt.reset_device(0) == 0


# --------------------------------------------------------------------------------------------
# dynamic shapes on static models


def test_dynamic_shape_queries_and_setters_on_a_static_model(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        model_id, ret = acl.mdl.load_from_file(MATMUL)
        assert ret == 0
        desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(desc, model_id) == 0
        assert acl.mdl.get_dynamic_batch(desc) == ({"batchCount": 0, "batch": []}, 0)
        assert acl.mdl.get_dynamic_hw(desc, -1) == ({"hwCount": 0, "hw": []}, 0)
        assert acl.mdl.get_dynamic_hw(desc, 0) == ({"hwCount": 0, "hw": []}, 0)
        assert acl.mdl.get_input_dynamic_gear_count(desc, -1) == (0, 0)
        assert acl.mdl.get_input_dynamic_gear_count(desc, 0) == (0, 100000)  # must be -1
        assert acl.mdl.get_input_dynamic_dims(desc, -1, 0) == ([], 0)
        assert acl.mdl.get_dynamic_batch(0) == ({}, 100000)
        assert acl.mdl.get_dynamic_hw(987654, -1) == ({}, 100000)
        # setters: acl-layer checks first (100000), then the model layer (145xxx)
        d_in, _ = acl.rt.malloc(NBYTES, 0)
        inputs = acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, NBYTES))
        assert acl.mdl.set_dynamic_batch_size(model_id, inputs, 0, 4) == 145013
        assert acl.mdl.set_dynamic_hw_size(model_id, inputs, 0, 224, 224) == 145013
        dims = {"name": "x", "dimCount": 2, "dims": [4, 256]}
        assert acl.mdl.set_input_dynamic_dims(model_id, inputs, 0, dims) == 145012
        assert acl.mdl.set_dynamic_batch_size(model_id, inputs, 0, 0) == 100000
        assert acl.mdl.set_dynamic_batch_size(model_id, inputs, 1, 4) == 100000  # no buffer 1
        assert acl.mdl.set_dynamic_batch_size(model_id, 0, 0, 4) == 100000
        assert acl.mdl.set_dynamic_batch_size(model_id + 99, inputs, 0, 4) == 145003
        assert acl.mdl.set_dynamic_hw_size(model_id, inputs, 0, 0, 224) == 100000
        assert acl.mdl.set_input_dynamic_dims(model_id, inputs, 0, {"dimCount": 0, "dims": []}) == (
            100000
        )
        tiny = acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(tiny, acl.create_data_buffer(d_in, 2))
        assert acl.mdl.set_dynamic_batch_size(model_id, tiny, 0, 4) == 145012  # < 4 bytes
        null = acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(null, acl.create_data_buffer(0, 8))
        assert acl.mdl.set_dynamic_batch_size(model_id, null, 0, 4) == 100000
        assert "set_dynamic_batch_size" in acl.get_recent_err_msg()
        assert acl.mdl.unload(model_id) == 0
        assert acl.rt.reset_device(0) == 0


# --------------------------------------------------------------------------------------------
# small queries samples call first


def test_run_mode_soc_name_recent_error_and_tensor_queries(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.get_run_mode() == (acl.constants.ACL_HOST, 0)
        assert acl.rt.set_device(1) == 0
        assert acl.rt.get_soc_name() == "Ascend910B"
        assert acl.get_recent_err_msg() == ""
        assert acl.rt.malloc(0, 0) == (0, 100000)
        message = acl.get_recent_err_msg()
        assert "malloc" in message and "100000" in message
        assert acl.get_recent_err_msg() == ""  # cleared on read
        model_id, ret = acl.mdl.load_from_file(MATMUL)
        assert ret == 0
        desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(desc, model_id) == 0
        assert acl.mdl.get_input_name_by_index(desc, 0) == "x"
        assert acl.mdl.get_output_name_by_index(desc, 0) == "y"
        assert acl.mdl.get_input_name_by_index(desc, 5) == ""
        assert acl.mdl.get_input_format(desc, 0) == acl.constants.ACL_FORMAT_ND
        assert acl.mdl.get_output_format(desc, 0) == acl.constants.ACL_FORMAT_ND
        assert acl.mdl.get_input_data_type(desc, 0) == acl.constants.ACL_FLOAT
        cur, ret = acl.mdl.get_cur_output_dims(desc, 0)
        assert ret == 0 and cur == {"name": "y", "dimCount": 2, "dims": [1, 256]}
        assert acl.mdl.get_cur_output_dims(desc, 3)[1] == 100000
        assert acl.mdl.unload(model_id) == 0
        assert acl.mdl.destroy_desc(desc) == 0
        assert acl.rt.reset_device(1) == 0


# --------------------------------------------------------------------------------------------
# calls ais_bench makes: AIPP queries, the overflow mode, error texts after a failed sync


def test_aipp_queries_on_a_model_without_aipp(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        model_id, ret = acl.mdl.load_from_file(MATMUL)
        assert ret == 0
        # every input: ACL_DATA_WITHOUT_AIPP, ACL_INVALID_NODE_INDEX
        assert acl.mdl.get_aipp_type(model_id, 0) == (0, U32_INVALID, 0)
        assert acl.get_recent_err_msg() == ""
        assert acl.mdl.get_aipp_type(model_id + 99, 0) == (0, U32_INVALID, 145003)
        assert "get_aipp_type" in acl.get_recent_err_msg()
        assert acl.mdl.get_aipp_type(model_id, 1) == (0, U32_INVALID, 500002)  # one input
        assert acl.mdl.get_aipp_type(model_id, -1)[2] == 500002
        assert acl.mdl.get_first_aipp_info(model_id, 0) == ({}, 145015)
        assert acl.mdl.get_first_aipp_info(model_id + 99, 0) == ({}, 145003)
        assert acl.mdl.get_aipp_data_size(1) == (160, 0)
        assert acl.mdl.get_aipp_data_size(4) == (64 + 4 * 96, 0)
        assert acl.mdl.get_aipp_data_size(0) == (0, 100000)
        assert acl.mdl.unload(model_id) == 0
        assert acl.mdl.get_aipp_type(model_id, 0)[2] == 145003
        assert acl.rt.reset_device(0) == 0


def test_device_sat_mode_is_kept_per_device_until_reset(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.get_device_sat_mode() == (0, 107002)  # no context
        assert acl.rt.set_device_sat_mode(0) == 107002
        assert acl.rt.set_device(0) == 0
        assert acl.rt.get_device_sat_mode() == (1, 0)  # ACL_RT_OVERFLOW_MODE_INFNAN
        assert acl.rt.set_device_sat_mode(0) == 0
        assert acl.rt.get_device_sat_mode() == (0, 0)
        for bad in (2, -1, 7):
            assert acl.rt.set_device_sat_mode(bad) == 100000
        assert acl.rt.get_device_sat_mode() == (0, 0)
        assert acl.rt.set_device(1) == 0  # another device keeps its own mode
        assert acl.rt.get_device_sat_mode() == (1, 0)
        assert acl.rt.set_device(0) == 0
        assert acl.rt.get_device_sat_mode() == (0, 0)
        assert acl.rt.reset_device(1) == 0
        assert acl.rt.reset_device(0) == 0  # set twice: still open
        assert acl.rt.get_device_sat_mode() == (0, 0)
        assert acl.rt.reset_device(0) == 0
        assert acl.rt.set_device(0) == 0  # a reset device starts over
        assert acl.rt.get_device_sat_mode() == (1, 0)
        assert acl.rt.reset_device(0) == 0


def test_a_failed_sync_leaves_its_text_and_sync_execute_has_a_real_stream_id(
    tmp_path, acl_on, exception_callback
):
    rule = {"kind": "error", "card": 1, "api": "execute", "after_tasks": 1, "count": 2}
    rule["code"] = 507015
    with fault_farm(tmp_path, rule) as farm, acl_on(farm) as acl:
        assert acl.rt.set_device(1) == 0
        stream, _ = acl.rt.create_stream()
        model = Model(acl, tmp_path)
        assert acl.mdl.execute(model.model_id, model.inputs, model.outputs) == 0  # index 0
        assert acl.get_recent_err_msg() == ""
        # index 1 fails: the synchronous execute returns it with its text
        assert acl.mdl.execute(model.model_id, model.inputs, model.outputs) == 507015
        message = acl.get_recent_err_msg()
        assert message.startswith("execute: task ") and "on device 1 stream " in message
        assert "failed with 507015" in message
        poll_for(lambda: exception_callback, 5.0)
        RUNTIME.exception_reporter.drain(5.0)
        sync_stream_id = exception_callback[0]["stream"]
        assert exception_callback[0]["code"] == 507015
        assert sync_stream_id < 0x8000_0000  # a real id, not the old -handle (0xFFFFFFD0)
        assert sync_stream_id != stream & U32_INVALID
        assert f"stream {sync_stream_id} " in message
        # index 2 fails on an explicit stream: the sync that reports it gets the text
        assert model.submit(stream) == 0
        assert acl.rt.synchronize_stream(stream) == 507015
        message = acl.get_recent_err_msg()
        assert message.startswith("synchronize_stream: task ")
        assert f"stream {stream & U32_INVALID} failed with 507015" in message
        assert acl.get_recent_err_msg() == ""
        # the next sync execute uses the same implicit stream; no error, no text
        assert acl.mdl.execute(model.model_id, model.inputs, model.outputs) == 0
        assert acl.get_recent_err_msg() == ""
        RUNTIME.exception_reporter.drain(5.0)
        assert [info["stream"] for info in exception_callback] == [
            sync_stream_id,
            stream & U32_INVALID,
        ]
        assert acl.rt.reset_device(1) == 0
