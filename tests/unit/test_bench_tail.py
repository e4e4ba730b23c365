"""benchmarks/tail_stages.py's decomposition (pure) and the card's optional stage times in its
completion rows (device/runner.py ``diag``, on a fake clock): the stages add up to the
end-to-end latency, the tail's excess is found in the stage that holds it, the run-queue
figures are per second of run, and a card without diagnostics sends its rows as before."""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.tail_stages import (
    INFO,
    RECORD,
    STAGES,
    decompose,
    run_queue,
    schedstat_ns,
    stages,
    table,
)
from core.errors import ACL_SUCCESS
from device.runner import TaskRunner, TurnStats
from device.streams import StreamScheduler, Task
from tests.unit.test_card_timing import Clock, FakeExecutor, Faults, spec

pytestmark = pytest.mark.timeout(30)

MS = 1e-3


def _record(late_s: float = 0.0, back_s: float = 0.0, client_rq_s: float = 0.0) -> tuple:
    """A 5 ms request: 20 µs input copy, 0.3 ms each way, a lead of 0.4 ms, timers 0.1 ms late;
    ``late_s`` more timer lateness, ``back_s`` more on the way back."""
    start = 100.0
    stamp = start + 20e-6
    m_end = stamp + 5 * MS
    due = m_end - 0.4 * MS
    fired = due + 0.1 * MS + late_s
    flushed = fired + 40e-6
    receipt = flushed + 0.3 * MS + back_s
    sync_ret = receipt + 30e-6
    times = (start, stamp, stamp, m_end, stamp + 0.3 * MS, due, fired, flushed, receipt)
    return (*times, sync_ret, sync_ret + 30e-6, 0.0, 0.0, client_rq_s, False, False)


def test_the_stages_add_up_to_the_end_to_end_latency():
    records = np.array([_record(), _record(late_s=2 * MS, back_s=1 * MS)], RECORD)
    parts = stages(records)
    total = sum(parts[name] for name in STAGES)
    assert total == pytest.approx(parts["e2e"])
    assert parts["model_run"] == pytest.approx([5.0, 5.0])
    assert parts["lead"] == pytest.approx([-0.4, -0.4])
    assert parts["timer_late"] == pytest.approx([0.1, 2.1])
    assert parts["way_in"] == pytest.approx([0.3, 0.3])
    assert parts["e2e"][0] == pytest.approx(0.02 + 5.0 - 0.4 + 0.1 + 0.04 + 0.3 + 0.03 + 0.03)


@pytest.mark.parametrize(
    ("kind", "stage"), [("late", "timer_late"), ("back", "way_back")], ids=["timer", "back"]
)
def test_the_tail_excess_is_found_where_it_is(kind, stage):
    slow = {"late": {"late_s": 3 * MS}, "back": {"back_s": 3 * MS, "client_rq_s": 2.5 * MS}}
    rows = [_record() for _ in range(990)] + [_record(**slow[kind]) for _ in range(10)]
    result = decompose(np.array(rows, RECORD), modelled_ms=5.0)
    assert result["requests"] == 1000
    p99 = result["bands"]["p99"]
    assert p99["top"] == stage
    assert p99["excess_ms"][stage] == pytest.approx(3.0, rel=0.01)
    assert result["ratio"]["p99.9"] == pytest.approx(result["e2e_ms"]["p99.9"] / 5.0, rel=1e-3)
    others = [name for name in STAGES if name != stage]
    assert all(abs(p99["excess_ms"][name]) < 1e-6 for name in others)
    if kind == "back":  # the client's run-queue wait explains most of it
        assert p99["excess_ms"]["client_rq"] == pytest.approx(2.5, rel=0.01)
    assert result["median_ms"]["e2e"] == pytest.approx(5.12, abs=1e-3)
    text = table({"1card": result})
    assert "| 1card | p99 |" in text and stage in text.splitlines()[4]


def test_no_requests_no_figures():
    assert decompose(np.array([], RECORD)) == {"requests": 0}
    assert set(INFO) >= {"way_in", "client_rq"}


def test_run_queue_waits_per_second_of_run():
    before = {"cards": {1: (1_000_000, 10), 2: (0, 0)}, "broker": {3: (0, 0)}}
    after = {"cards": {1: (21_000_000, 110), 2: (10_000_000, 100)}, "broker": {3: (0, 5)}}
    out = run_queue(before, after, wall_s=10.0)
    assert out["cards"] == {"processes": 2, "wait_ms_per_s": 3.0, "wait_us_per_slice": 150.0}
    assert out["broker"]["wait_ms_per_s"] == 0.0
    waited, slices = schedstat_ns(os.getpid())
    assert waited >= 0 and slices > 0
    assert schedstat_ns(2**22 + 12345) == (0, 0)  # (no such process)


# -- the card's optional stage times -------------------------------------------------------------
def _runner(diag: bool) -> tuple[TaskRunner, StreamScheduler, Clock]:
    clock = Clock()
    scheduler = StreamScheduler(4)
    runner = TaskRunner(
        spec(),
        scheduler,
        FakeExecutor(clock),
        Faults(),
        {"done": 0, "failed": 0},
        lambda: None,
        clock,
    )
    if diag:
        runner.diag = {}
    return runner, scheduler, clock


@pytest.mark.parametrize("diag", [False, True], ids=["plain", "diag"])
def test_the_card_adds_its_stage_times_only_when_asked(diag):
    runner, scheduler, clock = _runner(diag)
    stamp = clock.now
    clock.now += 0.3 * MS  # the way in
    body = {"t": 7, "s": 1, "k": "exec", "m": 1, "d": 5 * MS}
    scheduler.submit(Task(b"c", 1, 7, body, stamp))
    if diag:
        runner.received(b"c", 7, clock.now)
    runner.start_ready()
    due = runner.next_deadline(math.inf)
    clock.now = due + 0.2 * MS  # the timer fires 0.2 ms late
    runner.fire_timers(clock.now)
    (row,) = runner.outbox[b"c"]
    assert row[:2] == [7, ACL_SUCCESS] and row[5] == stamp
    if not diag:
        assert len(row) == 6
        return
    device, received, planned, fired, rq_s, gc_s = row[6:]
    assert (device, received, planned) == (0, stamp + 0.3 * MS, due)
    assert fired == pytest.approx(due + 0.2 * MS)
    assert (rq_s, gc_s) == (0.0, 0.0)  # (no loop stats on a fake card)
    assert runner.diag == {}  # nothing kept once the row is out


def test_the_loop_stats_read_this_threads_run_queue_wait():
    turns = TurnStats()
    try:
        turns.before_sleep()
        turns.after_sleep()
        assert turns.rq_s >= 0.0 and turns.waited_s() >= 0.0
        turns._on_gc("start", {})
        turns._on_gc("stop", {})
        assert turns.gc_since_fired() >= 0.0
        assert turns.gc_since_fired() == 0.0  # counted once
    finally:
        gc.callbacks.remove(turns._on_gc)
        os.close(turns._fd)


@pytest.mark.system
@pytest.mark.timeout(120)
def test_a_short_real_run_splits_every_request(tmp_path):
    """A real farm with the diagnostics on, 1 card, 1 s: every measured request has its card
    stage times, the stages add up, the model's 5 ms is in the middle, nothing is left over."""
    from benchmarks.tail import run_case

    before = set(os.listdir("/dev/shm"))
    raw = tmp_path / "r.npy"
    result = run_case("1", duration_s=1.0, warmup_s=0.3, records_out=raw)
    assert result["requests"] > 100
    records = np.load(raw)
    parts = stages(records)
    assert sum(parts[name] for name in STAGES) == pytest.approx(parts["e2e"])
    # the modelled run is 5 ms, longer only for a task that reached its card after its modelled
    # end (it ends when its compute is done: a way in over 5 ms, seen on a loaded box)
    late = records["received"] - records["stamp"] > 0.004  # (1 ms left for the compute)
    assert np.all(parts["model_run"][~late] == pytest.approx(5.0))
    assert np.all(parts["model_run"][late] >= 5.0 - 1e-6) and late.mean() < 0.1
    assert np.all(records["received"] >= records["stamp"])
    assert np.all(records["flushed"] >= records["fired"])
    assert 4.5 < result["e2e_ms"]["p50"] < 7.0
    groups = {"broker", "cards", "clients", "tail"}
    assert set(result["run_queue_ms"]) - {"host"} == groups  # (host: where there is PSI)
    assert result["run_queue_ms"]["cards"]["cpu_ms_per_s"] > 0.0
    assert set(os.listdir("/dev/shm")) <= before


def test_the_farm_config_overrides_the_card_profile(tmp_path):
    """--profile-set: the default config, its profile an inline table on the 910b; it loads."""
    from benchmarks.tail import farm_config
    from core.config import load_config

    assert farm_config({}) == (Path(__file__).parents[2] / "configs/default.toml").read_text()
    path = tmp_path / "farm.toml"
    path.write_text(farm_config({"timer_spin_s": "0.0", "exec_slots": "2"}))
    profile = load_config(path, env={}).cards[0].profile
    assert profile.timer_spin_s == 0.0 and profile.exec_slots == 2
    assert profile.soc_name == "Ascend910B" and profile.op_timeout_s == 1091.0  # (the 910b's)
