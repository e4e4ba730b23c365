"""A real farm for system tests: ``python -m npufarm up`` on an ipc endpoint in a short temp dir.

Each farm fixture checks on teardown that the farm's card processes are gone and its /dev/shm
segments and socket files were swept.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.admin import up_command
from tests.conftest import npufarm_segments, poll_for

REPO = Path(__file__).resolve().parents[2]
CI_CONFIG = REPO / "configs" / "ci.toml"
MODELS = REPO / "configs" / "models"


@dataclass
class RunningFarm:
    process: subprocess.Popen
    runtime_dir: Path
    name: str
    state: dict

    @property
    def address(self) -> str:
        return self.state["endpoint"]

    @property
    def farm_id(self) -> str:
        return f"{self.name}-{self.process.pid}"

    def card_pids(self) -> list[int]:
        """Pids of the cards now (restarts change them), as the farm reports them."""
        from farm.admin import query_status

        try:
            return [c["pid"] for c in query_status(self.address, timeout_s=2.0)["cards"]]
        except Exception:
            return [c["pid"] for c in self.state["cards"]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError("farm did not stop on SIGTERM") from None


def start_farm(cards: int = 2, extra: list[str] | None = None, config: Path = CI_CONFIG):
    runtime_dir = Path(tempfile.mkdtemp(prefix="nf", dir="/tmp"))
    name = f"t{os.getpid()}"
    cmd = up_command(config, runtime_dir, name, cards, *(extra or []))
    process = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL)
    state_file = runtime_dir / f"{name}.json"
    try:
        poll_for(lambda: state_file.exists() or process.poll() is not None, 30.0)
        if process.poll() is not None:
            raise AssertionError(f"farm exited with {process.returncode} before it was up")
        state = json.loads(state_file.read_text())
    except BaseException:
        process.kill()
        process.wait()
        shutil.rmtree(runtime_dir, ignore_errors=True)
        raise
    return RunningFarm(process, runtime_dir, name, state)


def stop_and_check(farm: RunningFarm) -> None:
    pids = farm.card_pids()
    farm.stop()
    try:
        assert farm.process.returncode == 0, f"farm exit code {farm.process.returncode}"
        for pid in pids:
            poll_for(lambda pid=pid: not _alive(pid), 5.0)
        leftover = {s for s in npufarm_segments() if s.startswith(f"npufarm-{farm.farm_id}-")}
        assert not leftover, f"farm left shm segments: {leftover}"
        assert not list(farm.runtime_dir.glob("*.sock")), "farm left socket files"
        assert not (farm.runtime_dir / f"{farm.name}.json").exists(), "farm left its state file"
    finally:
        shutil.rmtree(farm.runtime_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def farm():
    """A 2-card farm shared by the tests of one module."""
    running = start_farm(cards=2)
    yield running
    stop_and_check(running)


@pytest.fixture
def fresh_farm():
    """A 2-card farm of one's own (for tests that kill or break cards)."""
    running = start_farm(cards=2)
    yield running
    stop_and_check(running)


@pytest.fixture
def acl_on(monkeypatch):
    """``acl`` initialised against a farm: ``with acl_on(farm) as acl: ...``."""
    import contextlib

    import acl

    @contextlib.contextmanager
    def session(running: RunningFarm):
        monkeypatch.setenv("NPUFARM_ADDRESS", running.address)
        assert acl.init() == 0
        try:
            yield acl
        finally:
            assert acl.finalize() == 0

    return session
