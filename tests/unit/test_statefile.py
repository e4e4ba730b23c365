"""Unit tests for core.statefile: atomic write/read, stale pids, address resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import FarmConfig
from core.statefile import (
    STATE_VERSION,
    find_farm,
    make_state,
    pid_alive,
    read_state,
    remove_state,
    resolve_address,
    state_path,
    write_state,
)

__all__: list[str] = []


def dead_pid() -> int:
    """A pid that existed and has been reaped (so it is almost surely free)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def sample_state(pid: int | None = None, endpoint: str = "ipc:///tmp/x.sock") -> dict[str, object]:
    return {
        "name": "default",
        "endpoint": endpoint,
        "pid": os.getpid() if pid is None else pid,
        "started_at": 1700000000.0,
        "cards": [
            {"device_id": 0, "pid": 1, "epoch": 1, "shm_name": "npufarm-0", "hbm_bytes": 1 << 30}
        ],
        "version": STATE_VERSION,
    }


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "rt" / "default.json"
    state = sample_state()
    write_state(path, state)
    assert read_state(path) == state
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["default.json"]  # no temp file left


def test_write_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    write_state(path, sample_state(endpoint="ipc:///tmp/a.sock"))
    inode = path.stat().st_ino
    write_state(path, sample_state(endpoint="ipc:///tmp/b.sock"))
    assert read_state(path)["endpoint"] == "ipc:///tmp/b.sock"  # type: ignore[index]
    assert path.stat().st_ino != inode  # a new file was renamed over the old one


def test_failed_write_leaves_old_state(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    write_state(path, sample_state())
    with pytest.raises(TypeError):
        write_state(path, {"pid": os.getpid(), "bad": object()})
    assert read_state(path) == sample_state()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default.json"]


def test_read_missing_or_garbage(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    assert read_state(path) is None
    path.write_text("{not json")
    assert read_state(path) is None
    path.write_text("[1, 2]")
    assert read_state(path) is None
    path.write_text(json.dumps({"endpoint": "ipc:///x"}))  # no pid
    assert read_state(path) is None
    path.write_text(json.dumps({**sample_state(), "version": 99}))
    assert read_state(path) is None


def test_dead_pid_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    write_state(path, sample_state(pid=dead_pid()))
    assert read_state(path) is None
    assert path.exists()  # reading never deletes; the farm or `npufarm down` does


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0)
    assert not pid_alive(-5)
    assert not pid_alive(dead_pid())


def test_zombie_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        if Path("/proc").is_dir():
            assert not pid_alive(proc.pid)
    finally:
        proc.wait()


def test_remove_state(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    write_state(path, sample_state())
    remove_state(path)
    assert not path.exists()
    remove_state(path)  # missing is fine


def test_state_path_and_make_state(tmp_path: Path) -> None:
    config = FarmConfig(name="f2", runtime_dir=str(tmp_path))
    assert state_path(config) == tmp_path / "f2.json"
    state = make_state(config, cards=[{"device_id": 0, "pid": 1}], started_at=5.0)
    assert state == {
        "name": "f2",
        "endpoint": f"ipc://{tmp_path}/f2.sock",
        "pid": os.getpid(),
        "started_at": 5.0,
        "cards": [{"device_id": 0, "pid": 1}],
        "version": STATE_VERSION,
    }


def test_find_farm(tmp_path: Path) -> None:
    assert find_farm("default", tmp_path) is None
    write_state(tmp_path / "lab.json", sample_state())
    assert find_farm("lab", tmp_path) == sample_state()
    assert find_farm("default", tmp_path) is None


def test_resolve_address_prefers_env(tmp_path: Path) -> None:
    write_state(tmp_path / "default.json", sample_state(endpoint="ipc:///tmp/file.sock"))
    env = {"NPUFARM_ADDRESS": "tcp://127.0.0.1:6000", "NPUFARM_RUNTIME_DIR": str(tmp_path)}
    assert resolve_address(env) == "tcp://127.0.0.1:6000"


def test_resolve_address_from_state_file(tmp_path: Path) -> None:
    env = {"NPUFARM_RUNTIME_DIR": str(tmp_path)}
    assert resolve_address(env) is None
    write_state(tmp_path / "default.json", sample_state(endpoint="ipc:///tmp/file.sock"))
    assert resolve_address(env) == "ipc:///tmp/file.sock"
    write_state(tmp_path / "default.json", sample_state(pid=dead_pid()))
    assert resolve_address(env) is None
    assert resolve_address({**env, "NPUFARM_ADDRESS": ""}) is None


def test_resolve_address_uses_xdg_runtime_dir(tmp_path: Path) -> None:
    (tmp_path / "npufarm").mkdir(mode=0o700)
    write_state(tmp_path / "npufarm" / "default.json", sample_state(endpoint="ipc:///tmp/x.sock"))
    assert resolve_address({"XDG_RUNTIME_DIR": str(tmp_path)}) == "ipc:///tmp/x.sock"


def test_resolve_address_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPUFARM_ADDRESS", "ipc:///tmp/from-env.sock")
    assert resolve_address() == "ipc:///tmp/from-env.sock"
