"""Unit tests for benchmarks.raw: tiny parameters, sane structure, nothing left behind."""

import glob
import multiprocessing
import os
import threading
import time

import pytest

from benchmarks import raw

pytestmark = pytest.mark.timeout(60)

ECHO_KEYS = {"in_flight", "batch", "duration_s", "round_trips", "tasks_per_s", "msgs_per_s"}
RTT_KEYS = {"p50_us", "p90_us", "p99_us", "mean_us"}


def _leftover_shm() -> list[str]:
    return glob.glob(os.path.join(raw.SHM_DIR, raw.SHM_PREFIX + "*"))


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    yield
    assert multiprocessing.active_children() == []
    assert _leftover_shm() == []


def test_echo_rate_single_tasks():
    res = raw.raw_echo_rate(4, duration_s=0.2)
    assert res.keys() >= ECHO_KEYS
    assert res["in_flight"] == 4 and res["batch"] == 1
    assert res["round_trips"] > 0
    assert res["duration_s"] > 0.15
    assert res["msgs_per_s"] > 0 and res["tasks_per_s"] == res["msgs_per_s"]
    assert 30 <= res["payload_bytes"] <= 60
    assert res["broker_cpu_us_per_round_trip"] is None or res["broker_cpu_us_per_round_trip"] >= 0


def test_echo_rate_batched_counts_tasks():
    res = raw.raw_echo_rate(2, duration_s=0.2, batch=4)
    assert res["batch"] == 4 and res["round_trips"] > 0
    assert res["tasks_per_s"] == pytest.approx(4 * res["msgs_per_s"], rel=1e-3)


def test_rtt_percentiles_ordered():
    res = raw.raw_rtt(200)
    assert res.keys() >= RTT_KEYS
    assert res["samples"] == 200 and res["hops"] == 3
    assert 0 < res["p50_us"] <= res["p90_us"] <= res["p99_us"]
    assert res["mean_us"] > 0


def test_direct_rtt():
    res = raw.raw_direct_rtt(200)
    assert res.keys() >= RTT_KEYS
    assert res["hops"] == 1
    assert 0 < res["p50_us"] <= res["p90_us"] <= res["p99_us"]


def test_shared_rig_serves_several_measurements_and_cleans_up():
    with raw.EchoRig() as rig:
        tmpdir = rig.tmpdir
        pids = dict(rig.pids)
        assert set(pids) == {"broker", "worker"}
        assert os.path.isdir(tmpdir)
        assert raw.raw_rtt(50, rig=rig)["p50_us"] > 0
        assert raw.raw_echo_rate(8, duration_s=0.1, rig=rig)["round_trips"] > 0
        # the rig drains every outstanding reply, so a second run starts clean
        assert raw.raw_rtt(50, rig=rig)["p50_us"] > 0
        with pytest.raises(ValueError):
            raw.raw_direct_rtt(10, rig=rig)
    assert not os.path.exists(tmpdir)
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid}")


def test_rig_cleans_up_on_exception():
    with pytest.raises(RuntimeError, match="boom"), raw.EchoRig(direct=True) as rig:
        tmpdir = rig.tmpdir
        raise RuntimeError("boom")
    assert not os.path.exists(tmpdir)


def test_copy_rate_1mib():
    res = raw.raw_copy_rate(raw.MIB, repeats=3)
    assert res["size_bytes"] == raw.MIB and res["repeats"] == 3
    for key in (
        "host_to_shm_gbps_best",
        "host_to_shm_gbps_median",
        "shm_to_host_gbps_best",
        "shm_to_host_gbps_median",
        "cold_host_to_shm_gbps",
    ):
        assert res[key] > 0, key
    assert res["host_to_shm_gbps_best"] >= res["host_to_shm_gbps_median"]
    assert res["shm_to_host_gbps_best"] >= res["shm_to_host_gbps_median"]


def test_copy_rate_unlinks_segment_on_error(monkeypatch):
    def fail(*_args):
        raise RuntimeError("copy failed")

    monkeypatch.setattr(raw, "_measure_copies", fail)
    with pytest.raises(RuntimeError, match="copy failed"):
        raw.raw_copy_rate(raw.MIB)


def test_bad_arguments_rejected():
    with pytest.raises(ValueError):
        raw.raw_copy_rate(0)
    with pytest.raises(ValueError):
        raw.raw_echo_rate(0, duration_s=0.1)
    with pytest.raises(ValueError):
        raw.process_cpu_percent(os.getpid(), 0)


def test_process_cpu_percent_sees_a_busy_thread():
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin)
    t.start()
    try:
        busy = raw.process_cpu_percent(os.getpid(), 0.3)
    finally:
        stop.set()
        t.join()
    assert busy > 30.0


def test_process_cpu_percent_missing_pid():
    with open("/proc/sys/kernel/pid_max") as f:
        missing = int(f.read()) + 1
    with pytest.raises(ProcessLookupError):
        raw.process_cpu_percent(missing, 0.01)


def test_idle_process_cpu():
    t = time.perf_counter()
    res = raw.idle_process_cpu(0.3)
    assert time.perf_counter() - t >= 0.3
    assert res["seconds"] == 0.3
    assert 0.0 <= res["broker_cpu_percent"] < 50.0
    assert 0.0 <= res["worker_cpu_percent"] < 50.0
