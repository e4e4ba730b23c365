"""The CLI (up/status/down, Ctrl-C, tcp endpoint) and the embedded farm of ``acl.init()``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from farm.admin import query_status
from tests.conftest import npufarm_segments, poll_for
from tests.system.conftest import CI_CONFIG, REPO, _alive

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]


def _npufarm(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "npufarm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,
    )


@pytest.fixture
def runtime_dir():
    path = Path(tempfile.mkdtemp(prefix="nfc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_status_down_over_tcp(runtime_dir):
    port = _free_port()
    common = ["--config", str(CI_CONFIG), "--runtime-dir", str(runtime_dir), "--name", "cli"]
    farm = subprocess.Popen(
        [sys.executable, "-m", "npufarm", "up", *common, "--endpoint", f"tcp://127.0.0.1:{port}"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    try:
        state_file = runtime_dir / "cli.json"
        poll_for(state_file.exists, 30.0)
        state = json.loads(state_file.read_text())
        assert state["endpoint"] == f"tcp://127.0.0.1:{port}"
        status = _npufarm("status", *common)
        assert status.returncode == 0, status.stderr
        for word in ("card", "epoch", "ready", "Ascend910B"):
            assert word in status.stdout
        farm_id = f"cli-{farm.pid}"
        assert any(s.startswith(f"npufarm-{farm_id}-") for s in npufarm_segments())
        down = _npufarm("down", *common)
        assert down.returncode == 0, down.stderr
        assert farm.wait(timeout=15) == 0
        assert not any(s.startswith(f"npufarm-{farm_id}-") for s in npufarm_segments())
        assert not state_file.exists()
        assert _npufarm("status", *common).returncode != 0  # nothing running: clear error
    finally:
        if farm.poll() is None:
            farm.kill()
            farm.wait()


def test_ctrl_c_to_the_process_group_stops_cleanly(runtime_dir):
    """A terminal's Ctrl-C signals the farm, its forkserver and every card at once."""
    farm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "npufarm",
            "up",
            "--config",
            str(CI_CONFIG),
            "--runtime-dir",
            str(runtime_dir),
            "--name",
            "cc",
            "--cards",
            "3",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        poll_for((runtime_dir / "cc.json").exists, 30.0)
        pids = [c["pid"] for c in query_status(f"ipc://{runtime_dir}/cc.sock")["cards"]]
        os.killpg(farm.pid, signal.SIGINT)
        assert farm.wait(timeout=15) == 0
        for pid in pids:
            poll_for(lambda pid=pid: not _alive(pid), 5.0)
        assert not any(s.startswith(f"npufarm-cc-{farm.pid}-") for s in npufarm_segments())
        assert not list(runtime_dir.glob("*.sock"))
    finally:
        if farm.poll() is None:
            os.killpg(farm.pid, signal.SIGKILL)
            farm.wait()


_EMBEDDED = r"""
import json, os, sys
import numpy as np
import acl
assert acl.init() == 0
from client import RUNTIME
farm_pid = RUNTIME.session.farm["pid"]
assert acl.rt.set_device(1) == 0
ptr, ret = acl.rt.malloc(1024, 0)
x = np.arange(256, dtype=np.float32); y = np.empty_like(x)
acl.rt.memcpy(ptr, 1024, acl.util.numpy_to_ptr(x), 1024, 1)
acl.rt.memcpy(acl.util.numpy_to_ptr(y), 1024, ptr, 1024, 2)
print(json.dumps({"farm_pid": farm_pid, "ok": bool((x == y).all())}), flush=True)
if sys.argv[1] == "finalize":
    assert acl.finalize() == 0
"""


def _segments_of(farm_pid: int, before: set[str]) -> set[str]:
    """New segments of the farm with this pid (its id is ``<name>-<pid>``; its cards' HBM and
    its clients' pinned memory carry it), whatever other farms on the box do meanwhile."""
    return {s for s in npufarm_segments() - before if f"-{farm_pid}-" in s}


@pytest.mark.parametrize("ending", ["finalize", "exit"])
def test_embedded_farm_starts_at_init_and_stops(ending, runtime_dir):
    env = {k: v for k, v in os.environ.items() if k != "NPUFARM_ADDRESS"}
    env.update(NPUFARM_CONFIG=str(CI_CONFIG), NPUFARM_RUNTIME_DIR=str(runtime_dir))
    before = npufarm_segments()
    done = subprocess.run(
        [sys.executable, "-c", _EMBEDDED, ending],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"]
    poll_for(lambda: not _alive(result["farm_pid"]), 10.0)
    poll_for(lambda: not _segments_of(result["farm_pid"], before), 5.0)


_CTRL_C = r"""
import json, time
import acl
assert acl.init() == 0
from client import RUNTIME
assert acl.rt.set_device(0) == 0
try:
    print("ready", flush=True)
    time.sleep(30)
except KeyboardInterrupt:  # the program's own Ctrl-C handling still talks to the farm
    ptr, ret = acl.rt.malloc(64, 0)
    status, _ = acl.rt.query_device_status(0)
    print(json.dumps({"farm_pid": RUNTIME.session.farm["pid"], "malloc": ret,
                      "status": status, "free": acl.rt.free(ptr)}), flush=True)
    assert acl.finalize() == 0
"""


def test_ctrl_c_at_a_terminal_reaches_the_program_not_its_embedded_farm(runtime_dir):
    """The terminal sends SIGINT to its whole foreground process group; the embedded farm runs
    in a session of its own, so the program can still clean up through it."""
    env = {k: v for k, v in os.environ.items() if k != "NPUFARM_ADDRESS"}
    env.update(NPUFARM_CONFIG=str(CI_CONFIG), NPUFARM_RUNTIME_DIR=str(runtime_dir))
    before = npufarm_segments()
    program = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert program.stdout.readline().strip() == "ready"
        os.killpg(program.pid, signal.SIGINT)  # what Ctrl-C at the terminal does
        out, err = program.communicate(timeout=30)
    finally:
        if program.poll() is None:
            os.killpg(program.pid, signal.SIGKILL)
            program.wait()
    assert program.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["malloc"], result["status"], result["free"]) == (0, 0, 0)
    poll_for(lambda: not _alive(result["farm_pid"]), 10.0)
    poll_for(lambda: not _segments_of(result["farm_pid"], before), 5.0)


_KILLED_CLIENT = r"""
import os, signal
import acl
assert acl.init() == 0
assert acl.rt.set_device(0) == 0
ptr, ret = acl.rt.malloc(64 << 20, 0)
assert ret == 0
print("allocated", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_client_has_its_memory_released(farm):
    """A client that dies without acl.finalize stops pinging; the broker releases its HBM."""
    env = {**os.environ, "NPUFARM_ADDRESS": farm.address}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_CLIENT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "allocated" in done.stdout and done.returncode == -signal.SIGKILL

    def used() -> int:
        return query_status(farm.address)["cards"][0]["stats"].get("hbm_used", 0)

    poll_for(lambda: used() >= 64 << 20 or used() == 0, 5.0)
    poll_for(lambda: used() == 0, 20.0)


def test_status_watch_refreshes_until_ctrl_c(farm):
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "npufarm",
            "status",
            "--watch",
            "--interval-s",
            "0.1",
            "--runtime-dir",
            str(farm.runtime_dir),
            "--name",
            farm.name,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        first = ""
        for _ in range(200):  # read one whole table (it ends with the ledger line)
            first += watch.stdout.readline()
            if "tasks:" in first:
                break
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 130, err
    assert "ready" in first + out and "tasks:" in first + out


def test_an_idle_live_client_keeps_its_resources(farm, acl_on):
    """Past the client expiry (2 s here) a live, idle client keeps its memory and models: its
    pings count, whichever of its two sockets they leave from."""
    import time

    import numpy as np

    from tests.system.conftest import MODELS

    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        model_id, _ = acl.mdl.load_from_file(str(MODELS / "identity.toml"))
        n = 1024 * 4
        a, b = acl.rt.malloc(n, 0)[0], acl.rt.malloc(n, 0)[0]
        inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(a, n))
        acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(b, n))
        x = np.arange(1024, dtype=np.float32)
        acl.rt.memcpy(a, n, acl.util.numpy_to_ptr(x), n, 1)
        time.sleep(2.6)  # the scenario itself: the client does nothing past the expiry
        assert acl.mdl.execute(model_id, inputs, outputs) == 0
        y = np.empty_like(x)
        acl.rt.memcpy(acl.util.numpy_to_ptr(y), n, b, n, 2)
        np.testing.assert_array_equal(x, y)
        assert acl.rt.reset_device(0) == 0


def test_up_makes_a_missing_runtime_dir_and_says_when_ready_and_stopped(runtime_dir):
    missing = runtime_dir / "new" / "dir"
    common = ["--config", str(CI_CONFIG), "--runtime-dir", str(missing), "--name", "rd"]
    farm = subprocess.Popen(
        [sys.executable, "-m", "npufarm", "up", *common],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert farm.stdout is not None
        ready = farm.stdout.readline()
        assert ready == (
            f"npufarm: farm 'rd' ready at ipc://{missing}/rd.sock: 2 cards, "
            f"state file {missing}/rd.json\n"
        ), farm.stderr
        assert (missing.stat().st_mode & 0o777) == 0o700
        assert _npufarm("down", *common).returncode == 0
        out, err = farm.communicate(timeout=15)
    finally:
        if farm.poll() is None:
            farm.kill()
            farm.wait()
    assert farm.returncode == 0, err
    assert out == "npufarm: farm 'rd' stopped\n" and "Traceback" not in err


def test_up_with_an_unusable_runtime_dir_is_one_line(runtime_dir):
    (runtime_dir / "file").write_text("")
    done = _npufarm(
        "up", "--config", str(CI_CONFIG), "--runtime-dir", str(runtime_dir / "file" / "x")
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("npufarm: runtime_dir: cannot create ")
    assert len(done.stderr.strip().splitlines()) == 1


def _cli(farm, *args: str) -> subprocess.CompletedProcess:
    return _npufarm(*args, "--runtime-dir", str(farm.runtime_dir), "--name", farm.name)


def test_trace_of_an_idle_farm_says_metadata_only(fresh_farm, tmp_path):
    done = _cli(fresh_farm, "trace", str(tmp_path / "t.json"))
    assert done.returncode == 0, done.stderr
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert {e["ph"] for e in events} == {"M"}
    assert done.stdout.startswith(
        f"{len(events)} trace events written to {tmp_path / 't.json'}: metadata only, no tasks"
    )


def test_a_refused_trace_is_one_line_and_the_farm_stays_up(farm):
    done = _cli(farm, "trace", "/no/dir/t.json")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("npufarm: trace: ") and "/no/dir/t.json" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert all(c["state"] == "ready" for c in query_status(farm.address)["cards"])


def test_status_lists_the_rules_injected_now(fresh_farm):
    done = _cli(fresh_farm, "status")
    assert done.returncode == 0 and "active fault rules: none" in done.stdout, done.stdout
    done = _cli(fresh_farm, "inject", "kind=slow", "card=1", "factor=3", "name=lag")
    assert done.returncode == 0, done.stderr
    status = _cli(fresh_farm, "status").stdout
    assert "active fault rules: 1" in status, status
    (rule,) = [line.strip() for line in status.splitlines() if line.startswith("  #")]
    assert rule.split(" ", 1)[1].startswith("slow card 1: ") and "factor=3.0" in rule
    assert _cli(fresh_farm, "recover").returncode == 0
    status = _cli(fresh_farm, "status").stdout
    assert "active fault rules: none" in status and "  #" not in status, status
