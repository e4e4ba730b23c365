"""Unit tests for core.faults' fault log (event JSON lines, replay keys, reading a log back) and
its corruption patterns (bitflip, nan, zero, stale) with their input checks and seeded RNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from core.faults import (
    FaultEvent,
    FaultInjector,
    FaultPlan,
    FaultRule,
    corrupt_bytes,
    read_fault_log,
)
from tests.unit.faults_helpers import EXEC, plan_of

__all__: list[str] = []


# --------------------------------------------------------------------------------- the fault log


def test_event_json_line_and_replay_key(tmp_path: Path) -> None:
    injector = FaultInjector(plan_of(FaultRule("corrupt", pattern="nan", name="n")), 3, epoch=2)
    (fired,) = injector.evaluate(EXEC, 1.23456789, stream=5, api="execute")
    line = fired.event.to_json_line()
    data = json.loads(line)
    assert list(data) == ["call", "card", "code", "detail", "epoch", "hook", "kind", "rule", "t_s"]
    assert data == {
        "t_s": 1.234568,
        "card": 3,
        "epoch": 2,
        "hook": EXEC,
        "call": 0,
        "kind": "corrupt",
        "code": 0,
        "rule": 0,
        "detail": {"pattern": "nan", "stream": 5, "api": "execute", "name": "n"},
    }
    back = FaultEvent.from_json_line(line)
    assert back.replay_key() == fired.event.replay_key()
    later = FaultEvent(**{**back.__dict__, "t_s": 99.0})
    assert later.replay_key() == back.replay_key() and hash(later) != 0
    log = tmp_path / "faults.jsonl"
    log.write_text(line + "\n\n" + line + "\n")
    assert [e.replay_key() for e in read_fault_log(log)] == [back.replay_key()] * 2
    log.write_text("{}\n")
    with pytest.raises(ConfigError, match="faults.jsonl:1: bad fault log line"):
        read_fault_log(log)


# ------------------------------------------------------------------------------------ corruption


def test_corrupt_bitflip_flips_one_bit() -> None:
    data = np.arange(64, dtype=np.uint8)
    view = data.copy()
    corrupt_bytes(view, np.dtype(np.float32), "bitflip", np.random.default_rng(1))
    diff = np.unpackbits(view ^ data)
    assert diff.sum() == 1


def test_corrupt_nan_zero_stale() -> None:
    floats = np.ones(8, dtype=np.float16)
    corrupt_bytes(floats.view(np.uint8), floats.dtype, "nan", np.random.default_rng(0))
    assert np.isnan(floats).all()
    odd = np.zeros(10, dtype=np.uint8)  # two float32 + a 2-byte tail
    corrupt_bytes(odd, np.dtype(np.float32), "nan", np.random.default_rng(0))
    assert np.isnan(odd[:8].view(np.float32)).all() and (odd[8:] == 0xFF).all()
    ints = np.arange(6, dtype=np.int32)
    corrupt_bytes(ints.view(np.uint8), ints.dtype, "nan", np.random.default_rng(0))
    assert (ints == -1).all()
    grid = np.full((4, 4), 7, dtype=np.uint8)
    corrupt_bytes(grid, np.dtype(np.uint8), "zero", np.random.default_rng(0))
    assert not grid.any()
    stale = np.full(16, 3, dtype=np.uint8)
    corrupt_bytes(stale, np.dtype(np.uint8), "stale", np.random.default_rng(0))
    assert (stale == 3).all()
    corrupt_bytes(np.zeros(0, np.uint8), np.dtype(np.float32), "bitflip", np.random.default_rng(0))


def test_corrupt_bytes_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown corrupt pattern"):
        corrupt_bytes(np.zeros(4, np.uint8), np.dtype(np.uint8), "flip", rng)
    with pytest.raises(ValueError, match="writable uint8"):
        corrupt_bytes(np.zeros(4, np.float32), np.dtype(np.float32), "zero", rng)
    frozen = np.zeros(4, np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writable uint8"):
        corrupt_bytes(frozen, np.dtype(np.uint8), "zero", rng)
    with pytest.raises(ValueError, match="contiguous"):
        corrupt_bytes(np.zeros(8, np.uint8)[::2], np.dtype(np.uint8), "zero", rng)


def test_corrupt_rng_is_deterministic() -> None:
    views = []
    for _ in range(2):
        injector = FaultInjector(FaultPlan(seed=5), card=1, epoch=0)
        view = np.zeros(256, np.uint8)
        for _ in range(5):
            corrupt_bytes(view, np.dtype(np.float32), "bitflip", injector.corrupt_rng)
        views.append(view)
    assert np.array_equal(*views) and views[0].any()
