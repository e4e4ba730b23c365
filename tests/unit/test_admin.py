"""farm.admin, the one admin client: its address lookup order and its reply wait."""

from __future__ import annotations

import time

import pytest
import zmq

from core.config import FarmConfig
from core.errors import NpuFarmError
from farm import admin


def test_a_set_address_needs_no_config(monkeypatch):
    monkeypatch.setenv("NPUFARM_ADDRESS", "  ipc:///tmp/somewhere.sock ")

    def no_config() -> FarmConfig:
        raise AssertionError("the config was loaded although NPUFARM_ADDRESS is set")

    assert admin.find_address(no_config) == "ipc:///tmp/somewhere.sock"


def test_a_blank_address_falls_back_to_the_named_farm(monkeypatch, tmp_path):
    """Blank counts as unset, as for statefile.resolve_address: the named farm's state file is
    looked up (none here: a one-line error naming the farm)."""
    monkeypatch.setenv("NPUFARM_ADDRESS", "  ")
    config = FarmConfig(name="nobody", runtime_dir=str(tmp_path))
    with pytest.raises(NpuFarmError, match="no running farm named 'nobody'"):
        admin.find_address(lambda: config)


@pytest.mark.parametrize("timeout_s", [0.0009, 0.0149])
def test_a_silent_farm_is_waited_for_the_whole_timeout(tmp_path, timeout_s):
    """A fractional timeout is waited in full (a float given to socket.poll is truncated to
    whole milliseconds: 0.9 ms would not wait at all)."""
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    address = f"ipc://{tmp_path}/silent.sock"
    silent.bind(address)
    try:
        start_s = time.monotonic()
        with pytest.raises(NpuFarmError, match="no farm answered"):
            admin.query_status(address, timeout_s=timeout_s)
        waited_s = time.monotonic() - start_s
    finally:
        silent.close(0)
        ctx.term()
    assert waited_s >= timeout_s
