"""client.memory.HostPool: pinned segment names are unique for the life of the process (a card
keeps mapped segments by name), and a free unlinks, closes and reports the segment."""

from __future__ import annotations

import os

import pytest

from client.memory import HostPool
from core.errors import ACL_ERROR_RT_MEMORY_ALLOCATION, AclError


def test_names_never_repeat_across_pools_and_free_reports_them():
    freed: list[str] = []
    names = []
    for _ in range(2):  # two acl.init sessions of one process
        pool = HostPool("unit-hostpool", on_free=freed.append)
        ptr = pool.malloc(10)
        name, offset = pool.locate(ptr, 10)
        assert offset == 0 and f"-h{os.getpid()}-" in name
        assert os.path.exists(f"/dev/shm/{name}")
        names.append(name)
        pool.close()
        assert not os.path.exists(f"/dev/shm/{name}") and len(pool) == 0
    assert len(set(names)) == 2 and freed == names


def test_a_failing_on_free_still_frees():
    def boom(name: str) -> None:
        raise RuntimeError(name)

    pool = HostPool("unit-hostpool", on_free=boom)
    ptr = pool.malloc(1)
    name = pool.locate(ptr, 1)[0]
    assert pool.free(ptr) and not pool.free(ptr)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_shm_failure_is_an_allocation_error(monkeypatch):
    from client import memory

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(memory.HbmSegment, "create", no_space)
    with pytest.raises(AclError) as raised:
        HostPool("unit-hostpool").malloc(4096)
    assert raised.value.code == ACL_ERROR_RT_MEMORY_ALLOCATION
