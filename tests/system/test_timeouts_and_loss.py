"""Sync timeouts with the real codes, and a lost card: sticky 507010 until reset, then recovery."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from farm.admin import query_status
from tests.conftest import poll_for
from tests.system.conftest import start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H = 1, 2
SLOW_S = 0.6

SLOW_MODEL = f"""
[model]
name = "slow"
kind = "scale"
seed = 1
[model.params]
scale = 3.0
[[inputs]]
name = "x"
dtype = "float32"
shape = [1, 64]
[[outputs]]
name = "y"
dtype = "float32"
shape = [1, 64]
[latency]
fixed_s = {SLOW_S}
"""


@pytest.fixture(scope="module")
def timed_farm():
    """A farm whose models take their modelled time (time_scale 1)."""
    running = start_farm(cards=2, extra=["--time-scale", "1"])
    yield running
    stop_and_check(running)


class SlowModel:
    def __init__(self, acl, tmp_path):
        path = tmp_path / "slow.toml"
        path.write_text(SLOW_MODEL)
        self.acl = acl
        self.model_id, ret = acl.mdl.load_from_file(str(path))
        assert ret == 0
        self.n = 64 * 4
        self.d_in, _ = acl.rt.malloc(self.n, 0)
        self.d_out, _ = acl.rt.malloc(self.n, 0)
        self.x = np.arange(64, dtype=np.float32)
        acl.rt.memcpy(self.d_in, self.n, acl.util.numpy_to_ptr(self.x), self.n, H2D)
        self.inputs, self.outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(self.inputs, acl.create_data_buffer(self.d_in, self.n))
        acl.mdl.add_dataset_buffer(self.outputs, acl.create_data_buffer(self.d_out, self.n))

    def submit(self, stream, config=None):
        if config is None:
            return self.acl.mdl.execute_async(self.model_id, self.inputs, self.outputs, stream)
        return self.acl.mdl.execute_async_v2(
            self.model_id, self.inputs, self.outputs, stream, config
        )

    def result(self):
        y = np.empty(64, np.float32)
        self.acl.rt.memcpy(self.acl.util.numpy_to_ptr(y), self.n, self.d_out, self.n, D2H)
        return y


def _timed(call):
    started = time.monotonic()
    return call(), time.monotonic() - started


def test_stream_sync_timeout_then_success(timed_farm, acl_on, tmp_path):
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        model = SlowModel(acl, tmp_path)
        assert model.submit(stream) == 0
        assert acl.rt.stream_query(stream) == (1, 0)  # not ready
        code, waited_s = _timed(lambda: acl.rt.synchronize_stream_with_timeout(stream, 50))
        assert code == 507046
        assert 0.04 <= waited_s < SLOW_S
        assert acl.rt.synchronize_stream(stream) == 0  # the task kept running and finished
        assert acl.rt.stream_query(stream) == (0, 0)
        np.testing.assert_array_equal(model.result(), 3.0 * model.x)
        # the exec-config timeout (ACL_MDL_STREAM_SYNC_TIMEOUT) applies to the next sync
        config = acl.mdl.create_exec_config_handle()
        assert acl.mdl.set_exec_config_opt(config, 0, 50) == 0
        assert model.submit(stream, config) == 0
        code, waited_s = _timed(lambda: acl.rt.synchronize_stream(stream))
        assert code == 507046 and waited_s < SLOW_S
        assert acl.rt.synchronize_stream(stream) == 0
        # execute_v2 (synchronous) returns the sync timeout code unchanged
        assert acl.mdl.execute_v2(model.model_id, model.inputs, model.outputs, stream, config) == (
            507046
        )
        assert acl.rt.synchronize_device_with_timeout(30) == 507046
        assert acl.rt.synchronize_device() == 0
        assert acl.rt.reset_device(0) == 0


def test_event_sync_timeout(timed_farm, acl_on, tmp_path):
    with acl_on(timed_farm) as acl:
        assert acl.rt.set_device(1) == 0
        stream, _ = acl.rt.create_stream()
        model = SlowModel(acl, tmp_path)
        event, _ = acl.rt.create_event()
        assert model.submit(stream) == 0
        assert acl.rt.record_event(event, stream) == 0
        assert acl.rt.query_event_status(event) == (0, 0)
        assert acl.rt.synchronize_event_with_timeout(event, 50) == 507047
        assert acl.rt.synchronize_event(event) == 0
        assert acl.rt.query_event_status(event) == (1, 0)
        config = acl.mdl.create_exec_config_handle()
        assert acl.mdl.set_exec_config_opt(config, 1, 40) == 0  # ACL_MDL_EVENT_SYNC_TIMEOUT
        assert model.submit(stream, config) == 0
        assert acl.rt.record_event(event, stream) == 0
        assert acl.rt.synchronize_event(event) == 507047
        assert acl.rt.synchronize_stream(stream) == 0
        assert acl.rt.reset_device(1) == 0


def test_killed_card_is_sticky_lost_until_reset(fresh_farm, acl_on, tmp_path):
    with acl_on(fresh_farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        ptr, _ = acl.rt.malloc(4096, 0)
        host = np.zeros(4096, np.uint8)
        card_pid = fresh_farm.state["cards"][0]["pid"]
        os.kill(card_pid, signal.SIGKILL)
        # a sync with no timeout still ends, with 507010, once the loss is seen
        poll_for(lambda: acl.rt.query_device_status(0) == (1, 0), 5.0)
        assert acl.rt.synchronize_stream(stream) == 507010
        assert acl.rt.malloc(64, 0) == (0, 507010)
        assert acl.rt.memcpy(ptr, 4096, acl.util.numpy_to_ptr(host), 4096, H2D) == 507010
        assert acl.rt.create_stream()[1] == 0  # host-side handles still work
        # the other card is unaffected
        assert acl.rt.set_device(1) == 0
        other, ret = acl.rt.malloc(64, 0)
        assert ret == 0 and acl.rt.free(other) == 0
        states = [c["state"] for c in query_status(fresh_farm.address)["cards"]]
        assert states == ["lost", "ready"]
        # reset + set_device attach to a restarted card (new epoch, empty memory)
        assert acl.rt.create_context(0) == (0, 507010)
        assert acl.rt.reset_device(0) == 0
        assert acl.rt.set_device(0) == 0, acl.get_recent_err_msg()
        assert acl.rt.query_device_status(0) == (0, 0)
        card = query_status(fresh_farm.address)["cards"][0]
        assert card["state"] == "ready" and card["epoch"] == 2
        assert acl.rt.memcpy(ptr, 4096, acl.util.numpy_to_ptr(host), 4096, H2D) == 107000
        model = SlowModel(acl, tmp_path)
        new_stream, _ = acl.rt.create_stream()
        assert model.submit(new_stream) == 0
        assert acl.rt.synchronize_stream(new_stream) == 0
        np.testing.assert_array_equal(model.result(), 3.0 * model.x)
        assert acl.rt.reset_device(0) == 0
        assert acl.rt.reset_device(1) == 0
