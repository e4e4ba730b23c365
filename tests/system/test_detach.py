"""``npufarm up --detach`` (a daemon farm per node: state file, log file, ready before it
returns), ``npufarm status`` and ``npufarm down`` on it, two farms on one box, and the clear
refusals: a second farm on the same name or address, a farm that does not come up in time.
Every test checks that nothing is left: no farm or card process, shm segment, socket or state
file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core import statefile
from tests.conftest import npufarm_segments, poll_for
from tests.system.conftest import CI_CONFIG, REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def npufarm(runtime_dir: Path, *args: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    """``python -m npufarm ARGS`` with the CI config in ``runtime_dir`` (no address set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
    command = [sys.executable, "-m", "npufarm", *args]
    if args[0] in ("up", "down", "status"):
        command += ["--config", str(CI_CONFIG), "--runtime-dir", str(runtime_dir)]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )


@pytest.fixture
def runtime_dir():
    """A short runtime directory (ipc paths are limited); any farm still running in it at the
    end is killed, and the test fails if one was."""
    path = Path(tempfile.mkdtemp(prefix="nfd", dir="/tmp"))
    yield path
    survivors = [s for s in map(statefile.read_state, path.glob("*.json")) if s is not None]
    for state in survivors:  # stopped as `down` stops them (cards and segments too), else killed
        if npufarm(path, "down", "--name", state["name"], timeout_s=30.0).returncode != 0:
            os.kill(state["pid"], signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not survivors, f"farms left running: {survivors}"


def assert_gone(runtime_dir: Path, state: dict) -> None:
    """The farm of ``state`` and everything it had are gone (``down`` waited for it all)."""
    assert not statefile.pid_alive(state["pid"])
    for card in state["cards"]:
        assert not statefile.pid_alive(card["pid"]), card
    prefix = f"npufarm-{state['name']}-{state['pid']}-"
    assert not {s for s in npufarm_segments() if s.startswith(prefix)}
    assert not list(runtime_dir.glob(f"{state['name']}*.sock"))
    assert not (runtime_dir / f"{state['name']}.json").exists()


def up_detached(runtime_dir: Path, name: str, cards: int, *extra: str) -> dict:
    done = npufarm(runtime_dir, "up", "--detach", "--name", name, "--cards", str(cards), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    state = statefile.read_state(runtime_dir / f"{name}.json")
    assert state is not None, done.stdout
    assert f"ready at {state['endpoint']}: {cards} cards" in done.stdout
    assert f"export NPUFARM_ADDRESS={state['endpoint']}" in done.stdout.splitlines()
    assert f"log {runtime_dir / name}.log" in done.stdout
    return state


def test_up_detach_status_down(runtime_dir):
    state = up_detached(runtime_dir, "default", 2)
    log = runtime_dir / "default.log"
    # the daemon's own output goes to its log (its ready line follows the state file: poll)
    poll_for(lambda: "ready at" in log.read_text(), 10.0)
    status = npufarm(runtime_dir, "status", "--name", "default")
    assert status.returncode == 0 and "Ascend910B" in status.stdout, status.stderr
    # a process of the node finds the default farm through its state file, before acl.init
    probe = subprocess.run(
        [sys.executable, "-c", "import acl; print(acl.rt.get_device_count())"],
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")},
            "NPUFARM_RUNTIME_DIR": str(runtime_dir),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "(2, 0)", probe.stderr
    down = npufarm(runtime_dir, "down", "--name", "default")
    assert down.returncode == 0, down.stderr
    assert_gone(runtime_dir, state)
    again = npufarm(runtime_dir, "down", "--name", "default")
    assert again.returncode == 1 and "no running farm" in again.stderr


def test_two_farms_on_one_box_and_the_refusals(runtime_dir):
    first = up_detached(runtime_dir, "node1", 2)
    second = up_detached(runtime_dir, "node2", 3)
    assert first["endpoint"] != second["endpoint"]
    same_name = npufarm(runtime_dir, "up", "--detach", "--name", "node1", "--cards", "1")
    assert same_name.returncode != 0
    assert "'node1' is already running" in same_name.stderr, same_name.stderr
    same_address = npufarm(
        runtime_dir, "up", "--detach", "--name", "node3", "--endpoint", first["endpoint"]
    )
    assert same_address.returncode != 0
    assert f"is already running at {first['endpoint']}" in same_address.stderr
    # the first farm was not disturbed: same pid, still answering
    assert statefile.read_state(runtime_dir / "node1.json")["pid"] == first["pid"]
    status = npufarm(runtime_dir, "status", "--name", "node1")
    assert status.returncode == 0, status.stderr
    for name, state in (("node1", first), ("node2", second)):
        down = npufarm(runtime_dir, "down", "--name", name)
        assert down.returncode == 0, down.stderr
        assert_gone(runtime_dir, state)


def test_a_farm_that_is_not_ready_in_time_is_stopped_and_reported(runtime_dir):
    done = npufarm(runtime_dir, "up", "--detach", "--name", "slow", "--ready-timeout-s", "0.01")
    assert done.returncode == 1
    assert "was not up within 0.01s" in done.stderr and "slow.log" in done.stderr
    assert not (runtime_dir / "slow.json").exists()
    poll_for(lambda: not list(runtime_dir.glob("slow*.sock")), 10.0)
    assert not {s for s in npufarm_segments() if s.startswith("npufarm-slow-")}


def test_foreground_up_refuses_a_running_farm_name(runtime_dir):
    state = up_detached(runtime_dir, "busy", 2)
    done = npufarm(runtime_dir, "up", "--name", "busy", "--cards", "2", timeout_s=30)
    assert done.returncode != 0 and "'busy' is already running" in done.stderr
    assert npufarm(runtime_dir, "down", "--name", "busy").returncode == 0
    assert_gone(runtime_dir, state)
