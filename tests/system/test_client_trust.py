"""The client never lies (issue 9, client side): pinned host segments are unique per process
lifetime, so a card never copies from a stale mapping after re-init; a card lost before a
program connected gives 507010 (never an exception) and restarts on reset + set_device."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from farm.admin import query_status
from tests.conftest import npufarm_segments, poll_for
from tests.system.conftest import REPO, _alive

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H = 1, 2
LOST = 507010
NBYTES = 4096


def _round_trip(acl, fill: int) -> tuple[bytes, list[int]]:
    """init, pinned buffer filled with ``fill``, async H2D, sync, D2H, finalize."""
    codes = [acl.init()]
    codes.append(acl.rt.set_device(0))
    stream, ret = acl.rt.create_stream()
    codes.append(ret)
    host, ret = acl.rt.malloc_host(NBYTES)
    codes.append(ret)
    ctypes.memset(host, fill, NBYTES)
    dev, ret = acl.rt.malloc(NBYTES, 0)
    codes.append(ret)
    codes.append(acl.rt.memcpy_async(dev, NBYTES, host, NBYTES, H2D, stream))
    codes.append(acl.rt.synchronize_stream(stream))
    out = np.zeros(NBYTES, np.uint8)
    codes.append(acl.rt.memcpy(acl.util.numpy_to_ptr(out), NBYTES, dev, NBYTES, D2H))
    codes.append(acl.rt.free(dev))
    codes.append(acl.rt.free_host(host))
    codes.append(acl.rt.destroy_stream(stream))
    codes.append(acl.rt.reset_device(0))
    codes.append(acl.finalize())
    return out.tobytes(), codes


def test_reinit_rounds_read_their_own_bytes(farm, monkeypatch):
    """Defect 3: three init/finalize rounds each read back the byte they wrote."""
    import acl

    monkeypatch.setenv("NPUFARM_ADDRESS", farm.address)
    seen = []
    for fill in (0xAA, 0xBB, 0xCC):
        data, codes = _round_trip(acl, fill)
        assert codes == [0] * len(codes)
        seen.append(set(data))
    assert seen == [{0xAA}, {0xBB}, {0xCC}]
    mine = {s for s in npufarm_segments() if f"-h{os.getpid()}-" in s}
    assert not mine, f"pinned segments left behind: {mine}"


def test_free_host_unlinks_and_names_never_repeat(farm, acl_on):
    from client import RUNTIME

    names = set()
    for _ in range(2):
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            for _ in range(3):
                host, ret = acl.rt.malloc_host(100)
                assert ret == 0
                name, _ = RUNTIME.host.locate(host, 100)
                assert os.path.exists(f"/dev/shm/{name}")
                assert name not in names
                names.add(name)
                assert acl.rt.free_host(host) == 0
                assert not os.path.exists(f"/dev/shm/{name}")
            kept, ret = acl.rt.malloc_host(100)  # left for finalize to free
            assert ret == 0
            kept_name = RUNTIME.host.locate(kept, 100)[0]
            names.add(kept_name)
        assert not os.path.exists(f"/dev/shm/{kept_name}")
    assert len(names) == 8


def test_a_program_that_skips_finalize_leaves_no_pinned_segment(farm):
    source = textwrap.dedent(
        """
        import json, os
        import acl
        from client import RUNTIME
        acl.init()
        host, ret = acl.rt.malloc_host(4096)
        print(json.dumps({"pid": os.getpid(), "name": RUNTIME.host.locate(host, 1)[0]}))
        """
    )  # exits without acl.finalize
    out = _run_program(farm, source)
    assert f"-h{out['pid']}-" in out["name"]
    assert not os.path.exists(f"/dev/shm/{out['name']}")


# -- a card lost before the program connected ------------------------------------------------

_LOST_PROGRAM = textwrap.dedent(
    """
    import json, sys
    import acl
    out = {"init": acl.init()}
    out["set"] = acl.rt.set_device(1)
    out["set_again"] = acl.rt.set_device(1)
    out["status"] = list(acl.rt.query_device_status(1))
    out["other"] = acl.rt.set_device(0)
    out["reset"] = acl.rt.reset_device(1)
    out["restart"] = acl.rt.set_device(1)
    out["status_after"] = list(acl.rt.query_device_status(1))
    ptr, ret = acl.rt.malloc(64, 0)
    out["malloc_after"] = ret
    out["free_after"] = acl.rt.free(ptr)
    out["finalize"] = acl.finalize()
    print(json.dumps(out))
    """
)


def _run_program(farm, source: str) -> dict:
    env = {**os.environ, "NPUFARM_ADDRESS": farm.address}
    done = subprocess.run(
        [sys.executable, "-c", source],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_new_program_sees_a_silent_card_lost_then_restarts_it(fresh_farm):
    """Defect 9: a card lost by heartbeat loss gives a new program 507010 and abnormal status
    (no exception); reset_device + set_device restarts it (a new epoch that works)."""
    from tests.system.test_faults import npufarm_cli

    done = npufarm_cli(fresh_farm, "inject", "kind=heartbeat_loss", "card=1")
    assert done.returncode == 0, done.stderr
    poll_for(lambda: query_status(fresh_farm.address)["cards"][1]["state"] == "lost", 10.0)
    out = _run_program(fresh_farm, _LOST_PROGRAM)
    assert out == {
        "init": 0,
        "set": LOST,
        "set_again": LOST,
        "status": [1, 0],
        "other": 0,
        "reset": 0,
        "restart": 0,
        "status_after": [0, 0],
        "malloc_after": 0,
        "free_after": 0,
        "finalize": 0,
    }
    card = query_status(fresh_farm.address)["cards"][1]
    assert card["state"] == "ready" and card["epoch"] == 2


# -- argument and file checks come before the context check (defect 7) -----------------------


def test_model_checks_come_before_the_context_check(farm, acl_on, tmp_path):
    """CANN reads and parses a model before it asks for the current device."""
    from tests.system.test_faults import scale_model_file

    garbage = tmp_path / "garbage.om"
    garbage.write_bytes(b"\x00\x01not a model")
    good = str(scale_model_file(tmp_path))
    no_context = {}

    def probe(acl) -> None:  # a thread that never called set_device
        no_context["missing"] = acl.mdl.load_from_file(str(tmp_path / "nope.om"))[1]
        no_context["garbage"] = acl.mdl.load_from_file(str(garbage))[1]
        data = np.frombuffer(b"\x00\x01not a model", np.uint8).copy()
        no_context["mem_garbage"] = acl.mdl.load_from_mem(acl.util.numpy_to_ptr(data), 13)[1]
        no_context["mem_null"] = acl.mdl.load_from_mem(0, 13)[1]
        no_context["good"] = acl.mdl.load_from_file(good)[1]
        no_context["execute_bad_id"] = acl.mdl.execute(999, 0, 0)
        no_context["execute_async_bad_id"] = acl.mdl.execute_async(999, 0, 0, 0)
        no_context["malloc_zero"] = acl.rt.malloc(0, 0)[1]
        no_context["malloc"] = acl.rt.malloc(64, 0)[1]

    import threading

    with acl_on(farm) as acl:
        worker = threading.Thread(target=probe, args=(acl,), name="trust-no-context")
        worker.start()
        worker.join(30)
    assert no_context == {
        "missing": 145002,
        "garbage": 145006,
        "mem_garbage": 145006,
        "mem_null": 100000,
        "good": 107002,
        "execute_bad_id": 145003,
        "execute_async_bad_id": 145003,
        "malloc_zero": 100000,
        "malloc": 107002,
    }


# -- one device's recovery does not stall another's calls (found by reading, 4a) -------------


def _other_device_work(acl) -> list[int]:
    """A burst of calls on device 1 (each one takes the runtime lock somewhere)."""
    codes = [acl.rt.set_device(1)]
    ptr, ret = acl.rt.malloc(256, 0)
    codes.append(ret)
    stream, ret = acl.rt.create_stream()
    codes.append(ret)
    context, ret = acl.rt.create_context(1)
    codes += [ret, acl.rt.set_context(context), acl.rt.destroy_context(context)]
    codes += [acl.rt.destroy_stream(stream), acl.rt.free(ptr), acl.rt.reset_device(1)]
    return codes


def test_a_slow_restart_does_not_stall_other_devices(fresh_farm, acl_on):
    import threading

    from client import RUNTIME
    from tests.system.test_faults import npufarm_cli

    with acl_on(fresh_farm) as acl:
        assert acl.rt.set_device(0) == 0
        done = npufarm_cli(fresh_farm, "inject", "kind=heartbeat_loss", "card=0")
        assert done.returncode == 0, done.stderr
        poll_for(lambda: acl.rt.query_device_status(0) == (1, 0), 10.0)
        assert acl.rt.reset_device(0) == 0
        session = RUNTIME.session
        real_request, in_restart, release = session.request, threading.Event(), threading.Event()

        def slow_request(device_id, op, /, **kwargs):  # the restart RPC takes its time
            if op == "restart":
                in_restart.set()
                release.wait(20.0)
            return real_request(device_id, op, **kwargs)

        session.request = slow_request
        result = {}
        restarter = threading.Thread(
            target=lambda: result.setdefault("restart", acl.rt.set_device(0)),
            name="trust-restarter",
        )
        restarter.start()
        try:
            assert in_restart.wait(10.0)
            other = threading.Thread(
                target=lambda: result.setdefault("other", _other_device_work(acl)),
                name="trust-other-device",
            )
            other.start()
            other.join(10.0)
            assert not other.is_alive(), "device 1's calls wait for device 0's restart"
            assert result["other"] == [0] * 9
            assert restarter.is_alive()  # still restarting meanwhile
        finally:
            release.set()
            restarter.join(20.0)
            session.request = real_request
        assert result["restart"] == 0
        assert acl.rt.query_device_status(0) == (0, 0)
        assert acl.rt.reset_device(0) == 0


def test_reset_waiting_for_a_hung_stream_does_not_stall_other_devices(tmp_path, acl_on):
    import threading

    from tests.system.test_faults import Model, fault_farm

    rule = {"kind": "hang", "card": 0, "api": "execute", "duration_s": 20.0}
    with fault_farm(tmp_path, rule) as farm, acl_on(farm) as acl:
        result = {}

        def reset_hung() -> None:
            assert acl.rt.set_device(0) == 0
            model = Model(acl, tmp_path)
            assert model.submit(0) == 0  # on the default stream: hangs
            result["submitted"] = True
            result["reset"] = acl.rt.reset_device(0)  # waits 4x the expiry for it

        resetter = threading.Thread(target=reset_hung, name="trust-resetter")
        resetter.start()
        poll_for(lambda: result.get("submitted"), 10.0)
        codes = _other_device_work(acl)
        assert resetter.is_alive(), "device 1's calls waited for device 0's reset"
        resetter.join(10.0)
        assert codes == [0] * 9 and result["reset"] == 0


# -- a broker that stalls past the expiry and speaks again (found by reading, 4b) -------------


def test_client_recovers_when_a_stalled_broker_speaks_again(fresh_farm, acl_on, tmp_path):
    import signal
    import threading

    from client import RUNTIME
    from tests.system.test_faults import Model

    with acl_on(fresh_farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        model = Model(acl, tmp_path, fixed_s=0.05)
        assert model.submit(stream) == 0 and acl.rt.synchronize_stream(stream) == 0
        session = RUNTIME.session
        card_pids = fresh_farm.card_pids()
        fresh_farm.process.send_signal(signal.SIGSTOP)  # the broker loop stalls
        try:
            assert model.submit(stream) == 0  # pending while the broker is silent
            waited = {}
            waiter = threading.Thread(
                target=lambda: waited.setdefault("code", acl.rt.synchronize_stream(stream)),
                name="trust-stalled-sync",
            )
            waiter.start()
            poll_for(lambda: session.broker_lost, 10.0)
            waiter.join(10.0)
            assert waited == {"code": LOST}  # a -1 sync ends with 507010, as for a dead farm
            assert acl.rt.query_device_status(1) == (1, 0)
            # the cards give up on a silent broker too: both are lost when it speaks again
            for pid in card_pids:
                poll_for(lambda pid=pid: not _alive(pid), 10.0)
        finally:
            fresh_farm.process.send_signal(signal.SIGCONT)
        poll_for(lambda: not session.broker_lost, 10.0)  # the broker answers: resumed
        assert acl.rt.get_device_count() == (2, 0)
        poll_for(lambda: set(session.lost) == {0, 1}, 10.0)
        assert acl.rt.set_device(1) == LOST  # sticky, though this process never used it
        assert acl.rt.synchronize_stream(stream) == LOST
        # reset + set_device restarts each card (a new epoch that works)
        for device_id in (0, 1):
            assert acl.rt.reset_device(device_id) == 0
            assert acl.rt.set_device(device_id) == 0, acl.get_recent_err_msg()
            other = Model(acl, tmp_path)
            stream, _ = acl.rt.create_stream()
            assert other.submit(stream) == 0
            assert acl.rt.synchronize_stream(stream) == 0, acl.get_recent_err_msg()
            other.check()
            assert acl.rt.query_device_status(device_id) == (0, 0)


# -- no growth per context or per model (found by reading, 4d) -------------------------------


def test_contexts_and_models_leave_no_bookkeeping_behind(fresh_farm, acl_on, tmp_path):
    from client import RUNTIME
    from tests.system.test_faults import Model, scale_model_file

    with acl_on(fresh_farm) as acl:
        ret = acl.rt.set_device(0)
        assert ret == 0, (acl.get_recent_err_msg(), query_status(fresh_farm.address)["cards"][0])
        model = Model(acl, tmp_path)
        default, _ = acl.rt.get_context()
        for _ in range(20):
            context, ret = acl.rt.create_context(0)
            assert ret == 0
            assert acl.mdl.execute(model.model_id, model.inputs, model.outputs) == 0
            assert acl.rt.destroy_context(context) == 0
        assert len(RUNTIME.sync_tracks) == 0
        assert acl.rt.set_context(default) == 0
        ids = []
        for _ in range(3):
            model_id, ret = acl.mdl.load_from_file(str(scale_model_file(tmp_path)))
            assert ret == 0
            ids.append(model_id)
            assert acl.mdl.unload(model_id) == 0
        assert len(set(ids)) == 3 and model.model_id not in ids  # never reused
        assert acl.rt.reset_device(0) == 0


def test_free_host_makes_the_card_let_go_of_the_segment(farm, acl_on):
    from client import RUNTIME
    from tests.conftest import mapped_segments

    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        host, _ = acl.rt.malloc_host(NBYTES)
        dev, _ = acl.rt.malloc(NBYTES, 0)
        name = RUNTIME.host.locate(host, NBYTES)[0]
        assert acl.rt.memcpy_async(dev, NBYTES, host, NBYTES, H2D, stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        assert name in mapped_segments()  # this process and the card that copied from it
        assert acl.rt.free_host(host) == 0
        poll_for(lambda: name not in mapped_segments(), 5.0)  # the card was told (detach_host)
        assert acl.rt.free(dev) == 0
        assert acl.rt.destroy_stream(stream) == 0
        assert acl.rt.reset_device(0) == 0
