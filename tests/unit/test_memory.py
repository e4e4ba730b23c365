"""Unit tests for device.memory: pointer encoding, the allocator and the shm segment."""

from __future__ import annotations

import logging
import os
import random
import uuid

import numpy as np
import pytest

from core.errors import NpuFarmError
from device import memory
from device.memory import (
    Allocator,
    HbmSegment,
    check_shm_capacity,
    decode_ptr,
    encode_ptr,
    is_device_ptr,
    rounded_alloc_size,
    segment_name,
    shm_free_bytes,
)

__all__: list[str] = []

logger = logging.getLogger(__name__)

MIB = 1 << 20


def _test_name() -> str:
    return f"npufarm-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- pointers


@pytest.mark.parametrize(
    ("device_id", "epoch", "offset"),
    [(0, 0, 0), (3, 1, 64), (4095, 255, (1 << 40) - 1), (17, 9, 123_456_789)],
)
def test_pointer_round_trip(device_id: int, epoch: int, offset: int) -> None:
    ptr = encode_ptr(device_id, epoch, offset)
    assert ptr >> 60 == 0xA
    assert ptr != 0
    assert decode_ptr(ptr) == (device_id, epoch, offset)
    assert is_device_ptr(ptr)


def test_epoch_is_masked_to_eight_bits() -> None:
    assert decode_ptr(encode_ptr(1, 257, 0)) == (1, 1, 0)


@pytest.mark.parametrize(
    "ptr", [0, 1, 0x7FFF_FFFF_F000, (1 << 48) - 1, -1, 1 << 64, 0xB << 60, 0x9 << 60]
)
def test_non_device_addresses_decode_to_none(ptr: int) -> None:
    assert decode_ptr(ptr) is None
    assert not is_device_ptr(ptr)


@pytest.mark.parametrize(("device_id", "offset"), [(-1, 0), (4096, 0), (0, -1), (0, 1 << 40)])
def test_encode_rejects_out_of_range(device_id: int, offset: int) -> None:
    with pytest.raises(ValueError):
        encode_ptr(device_id, 0, offset)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("size", "rounded"), [(1, 64), (32, 64), (33, 96), (64, 96), (100, 160)])
def test_rounded_alloc_size(size: int, rounded: int) -> None:
    assert rounded_alloc_size(size) == rounded


@pytest.mark.parametrize("size", [0, -5])
def test_nonpositive_sizes_are_rejected(size: int) -> None:
    with pytest.raises(ValueError):
        rounded_alloc_size(size)
    with pytest.raises(ValueError):
        Allocator(1024).alloc(size)


# --------------------------------------------------------------------------- allocator


def test_allocations_are_aligned_and_disjoint() -> None:
    allocator = Allocator(64 * 1024)
    sizes = [1, 31, 32, 33, 63, 64, 65, 100, 1000, 7]
    offsets = [allocator.alloc(size) for size in sizes]
    assert all(offset is not None and offset % 64 == 0 for offset in offsets)
    spans = sorted(
        (offset, offset + rounded_alloc_size(size)) for offset, size in zip(offsets, sizes)
    )
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    assert allocator.live_blocks == len(sizes)
    assert allocator.used_bytes + allocator.free_bytes == allocator.capacity_bytes


def test_out_of_memory_returns_none() -> None:
    allocator = Allocator(1024)
    assert allocator.alloc(2000) is None
    offsets = []
    while (offset := allocator.alloc(100)) is not None:
        offsets.append(offset)
    assert len(offsets) == 1024 // 192  # 100 B reserve 192 B
    assert allocator.alloc(1) == 960  # the last 64 bytes still hold a tiny block
    assert allocator.alloc(1) is None
    assert allocator.free_bytes == 0


def test_free_coalesces_into_one_large_range() -> None:
    allocator = Allocator(1024)
    offsets = [allocator.alloc(32) for _ in range(16)]
    assert allocator.alloc(1) is None
    for offset in offsets[::2]:
        allocator.free(offset)
    assert allocator.alloc(100) is None  # 512 bytes free, but in 64-byte holes
    for offset in offsets[1::2]:
        assert allocator.free(offset) == 64
    assert allocator.used_bytes == 0
    big = allocator.alloc(1024 - 32)
    assert big == 0
    assert allocator.free_bytes == 0


def test_freed_range_is_reused_before_fresh_memory() -> None:
    allocator = Allocator(MIB)
    first = allocator.alloc(1000)
    middle = allocator.alloc(1000)
    allocator.alloc(1000)
    high_water = allocator.high_water
    allocator.free(middle)
    assert allocator.alloc(500) == middle
    assert allocator.high_water == high_water
    assert first == 0


def test_contains_and_block_at() -> None:
    allocator = Allocator(4096)
    a = allocator.alloc(100)
    b = allocator.alloc(200)
    assert allocator.block_at(a + 99) == (a, 100)
    assert allocator.block_at(a + 100) is None  # padding is not user memory
    assert allocator.contains(a, 100)
    assert allocator.contains(a + 10, 90)
    assert allocator.contains(a + 5, 0)
    assert not allocator.contains(a, 101)  # crosses the block end
    assert not allocator.contains(a + 50, b - a)  # spans two blocks
    assert not allocator.contains(a, -1)
    allocator.free(b)
    assert not allocator.contains(b, 1)
    assert allocator.block_at(b) is None
    assert allocator.blocks() == [(a, 100)]


def test_double_free_and_interior_free_return_none() -> None:
    allocator = Allocator(4096)
    offset = allocator.alloc(128)
    assert allocator.free(offset + 64) is None
    assert allocator.free(offset) == 192
    assert allocator.free(offset) is None
    assert allocator.free(12345) is None
    assert allocator.live_blocks == 0


def test_random_alloc_free_keeps_invariants() -> None:
    rng = random.Random(5)
    allocator = Allocator(256 * 1024)
    live: dict[int, int] = {}
    for _ in range(600):
        if live and rng.random() < 0.45:
            offset = rng.choice(list(live))
            assert allocator.free(offset) is not None
            del live[offset]
            continue
        size = rng.randint(1, 8000)
        offset = allocator.alloc(size)
        if offset is not None:
            assert offset % 64 == 0
            live[offset] = size
    assert allocator.blocks() == sorted(live.items())
    spans = sorted((o, o + rounded_alloc_size(s)) for o, s in live.items())
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))
    for offset in list(live):
        allocator.free(offset)
    assert allocator.used_bytes == 0
    assert allocator.alloc(256 * 1024 - 32) == 0


# --------------------------------------------------------------------------- shm segment


def test_segment_name_format_and_validation() -> None:
    assert segment_name("f1", 3, 2) == "npufarm-f1-card3-e2"
    with pytest.raises(ValueError):
        segment_name("a/b", 0, 0)
    with pytest.raises(ValueError):
        segment_name("ok", -1, 0)
    with pytest.raises(ValueError):
        HbmSegment.attach("../etc/passwd")


def test_segment_round_trip_between_two_handles() -> None:
    name = _test_name()
    owner = HbmSegment.create(name, 2 * MIB)
    try:
        with HbmSegment.attach(name) as peer:
            assert peer.size_bytes == owner.size_bytes == 2 * MIB
            assert os.path.exists(f"/dev/shm/{name}")
            owner.prefault(100, 3 * 4096)
            owner.view(4096, 8)[:] = np.arange(8, dtype=np.uint8)
            assert peer.view(4096, 8).tolist() == list(range(8))
            peer.view(MIB, 4).view(np.float32)[0] = 1.5
            assert owner.view(MIB, 4).view(np.float32)[0] == 1.5
            assert owner.view(10, 0).size == 0
            assert peer.view(4096, 1).ctypes.data == peer.base_address + 4096
            with pytest.raises(ValueError):
                owner.view(2 * MIB - 4, 8)
            with pytest.raises(ValueError):
                owner.view(-1, 1)
            kept = peer.view(0, 16)
        assert peer.closed  # close with an exported view must not raise
        assert kept.size == 16
        owner.close()
        owner.close()
        with pytest.raises(ValueError):
            owner.view(0, 1)
    finally:
        owner.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")
    owner.unlink()  # second unlink is quiet
    with pytest.raises(FileNotFoundError):
        HbmSegment.attach(name)


def test_create_refuses_existing_name() -> None:
    name = _test_name()
    segment = HbmSegment.create(name, 4096)
    try:
        with pytest.raises(FileExistsError):
            HbmSegment.create(name, 4096)
    finally:
        segment.close()
        segment.unlink()


def test_prefault_fallback_touches_only_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_populate_supported", False)
    name = _test_name()
    segment = HbmSegment.create(name, 64 * 1024)
    try:
        segment.view(0, 64 * 1024).fill(7)
        segment.prefault(4000, 9000)
        data = segment.view(0, 64 * 1024)
        assert (data[:4000] == 7).all()
        assert (data[13000:] == 7).all()
        assert data[4000] == 0 and data[4096] == 0 and data[12288] == 0
        del data
    finally:
        segment.close()
        segment.unlink()


# --------------------------------------------------------------------------- capacity


def test_shm_capacity_check() -> None:
    free = shm_free_bytes()
    assert free > 0
    assert check_shm_capacity(1) == free
    with pytest.raises(NpuFarmError) as info:
        check_shm_capacity(free + (1 << 50), cards=64, hbm_bytes=1 << 44)
    message = str(info.value)
    assert "64 cards × 16384.00 GiB HBM need" in message
    assert "lower hbm_bytes or the card count" in message
