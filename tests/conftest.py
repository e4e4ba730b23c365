"""Shared test helpers and the session-wide leak check (processes, sockets, /dev/shm)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SHM_DIR = Path("/dev/shm")


def poll_for(predicate: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.01):
    """Wait until ``predicate()`` is truthy; return its value or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {predicate}")
        time.sleep(interval_s)


def npufarm_segments() -> set[str]:
    return {p.name for p in SHM_DIR.iterdir() if p.name.startswith("npufarm-")}


_RUNTIME_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
#: fds a fixture found a library keeps for the life of the process (Ray's gRPC state after
#: ray.shutdown: tests/system/test_ray_*.py), not npufarm's: the leak check ignores them
FOREIGN_FDS: set[str] = set()


def mapped_segments() -> set[str]:
    """npufarm segments some live process still has mapped (a running farm's, not a leak)."""
    mapped = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            maps = (entry / "maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            if "/dev/shm/npufarm-" in line:
                mapped.add(line.rsplit("/", 1)[1].split(" ")[0])
    return mapped


def child_pids() -> set[int]:
    """Live (non-zombie) child processes of this test process, except multiprocessing's own
    process-lifetime helpers (resource tracker, forkserver)."""
    me = os.getpid()
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != me or fields[0] == "Z":
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if not any(helper in cmdline for helper in _RUNTIME_HELPERS):
            children.add(int(entry.name))
    return children


def socket_fds() -> set[str]:
    """Open fds of this process that are sockets, eventfds or epoll instances (ZeroMQ's)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "anon_inode:[eventfd]", "anon_inode:[eventpoll]")):
            found.add(f"{fd}->{target}")
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaks():
    """Fail the run if the suite leaves npufarm processes, shm segments or sockets behind."""
    segments_before = npufarm_segments()
    sockets_before = socket_fds()
    yield
    try:
        poll_for(lambda: not child_pids(), 10.0)
    except AssertionError:
        pass
    leftover_children = child_pids()
    leftover_segments = npufarm_segments() - segments_before - mapped_segments()
    leftover_sockets = socket_fds() - sockets_before - FOREIGN_FDS
    assert not leftover_children, f"leaked child processes: {leftover_children}"
    assert not leftover_segments, f"leaked /dev/shm segments: {sorted(leftover_segments)}"
    assert not leftover_sockets, f"leaked sockets/eventfds: {sorted(leftover_sockets)}"
