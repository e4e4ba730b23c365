"""The card's latency model (device/timing.py) and the task runner that applies it, on a fake
clock: a task's modelled time starts at its submit stamp, a stream's next task where the
previous one ended, a slot's next task where the slot freed; transport longer than the model
ends a task at once; faults (slow, hang), the minimum delay and garbage stamps keep working."""

from __future__ import annotations

import math
import random

import pytest

from core.errors import ACL_ERROR_RT_STREAM_ABORT, ACL_SUCCESS
from core.protocol import TASK_STAMP, validate_task
from device.card_spec import CardSpec
from device.injection import TaskFault
from device.runner import TaskRunner
from device.streams import StreamScheduler, Task
from device.timing import (
    MAX_LEAD_S,
    MAX_STAMP_AGE_S,
    CompletionLead,
    RunningMedian,
    modelled_end,
    modelled_start,
    send_at,
    submitted_at,
)

pytestmark = pytest.mark.timeout(30)

A, B = b"c1-a", b"c2-b"
T0 = 1000.0
MS = 0.001
HANG_CODE = 507014


# -- the pure rules ------------------------------------------------------------------------------
def test_a_stamp_counts_within_its_window_and_is_clamped_outside_it():
    now = T0
    assert submitted_at(now - 0.0003, now) == now - 0.0003
    assert submitted_at(int(now), now) == now  # an int is a number too
    assert submitted_at(now + 5.0, now) == now  # in the future: another clock, garbage
    assert submitted_at(now - 3600.0, now) == now - MAX_STAMP_AGE_S  # absurdly old
    assert submitted_at(-1e308, now) == now - MAX_STAMP_AGE_S
    for garbage in (None, math.nan, math.inf, -math.inf, "1.0", True, [1.0]):
        assert submitted_at(garbage, now) == now


def test_the_protocol_refuses_a_stamp_that_is_not_a_number():
    task = {"t": 1, "s": 0, "k": "record"}
    assert validate_task({**task, TASK_STAMP: 12.5}) is None
    assert validate_task({**task, TASK_STAMP: 12}) is None
    assert validate_task(task) is None  # optional
    for garbage in ("12.5", None, True, [1], {"a": 1}):
        assert "ts" in validate_task({**task, TASK_STAMP: garbage})


def test_start_end_and_send_times():
    assert modelled_start(10.0, 12.0, 11.0) == 12.0
    assert modelled_start(13.0, 12.0, 11.0) == 13.0
    assert modelled_end(10.0, 0.005, 0.0, 10.001) == pytest.approx(10.005)
    assert modelled_end(10.0, 0.005, 0.0, 10.008) == 10.008  # compute took longer
    assert modelled_end(10.0, 0.001, 0.05, 10.0) == pytest.approx(10.05)  # the minimum delay
    assert send_at(10.0, 10.005, 0.0, 10.001, 0.0004) == pytest.approx(10.0046)
    assert send_at(10.0, 10.005, 0.0, 10.0048, 0.0004) == 10.0048  # never before compute done
    assert send_at(10.0, 10.05, 0.05, 10.0, 0.0004) == pytest.approx(10.05)  # the delay stays whole


def test_running_median_and_the_lead():
    median = RunningMedian(window=8, every=4)
    assert [median.add(x) for x in (5.0, 1.0, 3.0)] == [False] * 3 and median.value == 0.0
    assert median.add(100.0) and median.value == 5.0  # median of 1, 3, 5, 100 (upper middle)
    for _ in range(8):
        median.add(2.0)
    assert median.value == 2.0 and len(median.samples) == 8  # the window slid
    lead = CompletionLead(window=4, every=2)
    for _ in range(2):
        lead.arrived(T0, T0 + 300e-6)
        lead.fired(80e-6)
    assert lead.value == pytest.approx(380e-6)
    for _ in range(4):
        lead.arrived(T0, T0 + 0.5)  # a backlog: the lead is capped
    assert lead.value == MAX_LEAD_S
    for _ in range(4):
        lead.arrived(T0, T0)
        lead.fired(-1.0)  # (never negative)
    assert lead.value == 0.0


def test_running_median_takes_a_message_of_samples_at_once():
    one, many = RunningMedian(window=8, every=4), RunningMedian(window=8, every=4)
    chunks = [[5.0], [1.0, 3.0], [100.0, 7.0, 2.0], list(map(float, range(20))), [9.0, 8.0]]
    for chunk in chunks:
        before = many.value
        crossed = (one._count + len(chunk)) // 4 != one._count // 4
        for sample in chunk:
            one.add(sample)
        assert many.add_many(list(chunk)) == crossed
        assert sorted(many.samples) == sorted(one.samples)  # the same window
        if crossed:  # recomputed once, after the whole chunk
            assert many.value == sorted(one.samples)[len(one.samples) // 2]
        else:
            assert many.value == before
    assert not many.add_many([])
    lead = CompletionLead(window=4, every=2)
    lead.arrived_many([T0, T0 + 100e-6, T0 + 200e-6, T0 + 300e-6], T0 + 400e-6)
    assert lead.transport.value == pytest.approx(300e-6)  # of 100..400 µs: the upper middle
    lead.arrived_many([T0], T0 + 500e-6)  # (one task: the single-sample path)
    lead.arrived_many([T0], T0 + 500e-6)
    assert lead.transport.value == pytest.approx(500e-6)  # 200, 100, 500, 500 µs


# -- the runner on a fake clock ------------------------------------------------------------------
class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeExecutor:
    """Runs a task in ``body["c"]`` seconds of the fake clock and models ``body["d"]`` s."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.models = clock, {}

    def start(self, task: Task, defer: bool):
        self.clock.now += task.body.get("c", 0.0)
        return ACL_SUCCESS, task.body.get("d", 0.0) if task.kind == "exec" else 0.0, None


class Faults:
    def __init__(self, fault: TaskFault | None = None) -> None:
        self.enabled, self.fault = fault is not None, fault

    def on_task(self, kind, stream, model):
        return self.fault


def spec(slots: int = 4, min_delay_s: float = 0.0) -> CardSpec:
    return CardSpec(
        farm_id="f",
        device_id=0,
        epoch=1,
        backend="",
        hbm_bytes=1 << 20,
        soc_name="Ascend910B",
        speed_factor=1.0,
        jitter_sigma=0.0,
        exec_slots=slots,
        time_scale=1.0,
        heartbeat_interval_s=0.25,
        heartbeat_liveness=4,
        seed=0,
        min_completion_delay_s=min_delay_s,
    )


class Card:
    """A runner, its scheduler and a fake clock; ``rows`` by task id."""

    def __init__(self, slots: int = 4, min_delay_s: float = 0.0, fault: TaskFault | None = None):
        self.clock = Clock()
        self.scheduler = StreamScheduler(slots)
        self.stats = {"done": 0, "failed": 0}
        self.runner = TaskRunner(
            spec(slots, min_delay_s),
            self.scheduler,
            FakeExecutor(self.clock),
            Faults(fault),
            self.stats,
            crash=lambda: None,
            clock=self.clock,
        )
        self.ids = 0

    def submit(self, stamp: float, stream: int = 1, client: bytes = A, **body) -> int:
        """A task stamped ``stamp`` reaches the card now."""
        self.ids += 1
        body = {"t": self.ids, "s": stream, "k": "exec", "m": 1, **body}
        self.scheduler.submit(
            Task(client, stream, self.ids, body, submitted_at(stamp, self.clock()))
        )
        return self.ids

    def run_until(self, until: float) -> None:
        """The card loop: start what may start, fire the timers due, until ``until``."""
        while True:
            self.runner.start_ready()
            due = self.runner.next_deadline(math.inf)
            if due > until:
                self.clock.now = max(self.clock.now, until)
                return
            self.clock.now = max(self.clock.now, due + 50e-6)  # timers fire 50 µs late
            self.runner.fire_timers(self.clock.now)

    def rows(self) -> dict[int, list]:
        return {row[0]: row for rows in self.runner.outbox.values() for row in rows}


def test_a_task_runs_from_its_submit_not_from_its_receipt():
    card = Card()
    card.clock.now = T0 + 300e-6  # 0.3 ms of transport
    task = card.submit(T0, d=5 * MS)
    card.run_until(T0 + 1.0)
    _, code, start_s, end_s, _, queued_s = card.rows()[task]
    assert code == ACL_SUCCESS
    assert (queued_s, start_s) == (T0, T0)
    assert end_s == pytest.approx(T0 + 5 * MS)


def test_a_stream_runs_back_to_back_without_adding_up_lateness():
    card = Card()
    card.clock.now = T0 + 200e-6
    tasks = [card.submit(T0, d=5 * MS) for _ in range(10)]
    card.run_until(T0 + 1.0)
    ends = [card.rows()[t][3] for t in tasks]
    assert ends == pytest.approx([T0 + (k + 1) * 5 * MS for k in range(10)], abs=1e-9)
    starts = [card.rows()[t][2] for t in tasks]
    assert starts[1:] == ends[:-1]


def test_a_slot_is_taken_where_it_freed():
    card = Card(slots=1)
    card.clock.now = T0 + 100e-6
    first = card.submit(T0, stream=1, d=5 * MS)
    second = card.submit(T0, stream=2, d=5 * MS)
    card.run_until(T0 + 1.0)
    rows = card.rows()
    assert rows[second][2] == pytest.approx(rows[first][3])
    assert rows[second][3] == pytest.approx(T0 + 10 * MS)
    assert card.scheduler.free_slots == [rows[second][3]]


def test_two_slots_run_two_streams_side_by_side():
    card = Card(slots=2)
    tasks = [card.submit(T0, stream=s, d=5 * MS) for s in (1, 2, 3)]
    card.run_until(T0 + 1.0)
    ends = sorted(card.rows()[t][3] for t in tasks)
    assert ends == pytest.approx([T0 + 5 * MS, T0 + 5 * MS, T0 + 10 * MS])


def test_transport_longer_than_the_model_ends_the_task_at_once():
    card = Card()
    card.clock.now = T0 + 2 * MS  # the card got it 2 ms after its submit
    short = card.submit(T0, d=1 * MS)
    card.runner.start_ready()
    (row,) = card.runner.outbox[A]
    assert row[0] == short and row[3] == T0 + 2 * MS  # ended on arrival
    following = card.submit(T0 + 0.1 * MS, d=1 * MS)  # queued behind it: starts where it ended
    card.run_until(T0 + 1.0)
    assert card.rows()[following][2] == T0 + 2 * MS
    assert card.rows()[following][3] == pytest.approx(T0 + 3 * MS)


def test_compute_longer_than_the_model_sets_the_end():
    card = Card()
    task = card.submit(T0, d=5 * MS, c=8 * MS)
    card.run_until(T0 + 1.0)
    assert card.rows()[task][3] == pytest.approx(T0 + 8 * MS)


def test_a_stamp_in_the_future_or_far_past_does_not_stall_the_card():
    card = Card()
    future = card.submit(T0 + 1e9, d=5 * MS)
    card.run_until(T0 + 1.0)
    assert card.rows()[future][2] == T0  # its receipt
    past = card.submit(-1e308, stream=2, d=5 * MS)  # (the card's clock is at T0 + 1 now)
    card.run_until(T0 + 2.0)
    row = card.rows()[past]
    assert row[5] == T0 + 1.0 - MAX_STAMP_AGE_S and row[3] == T0 + 1.0  # ended at once


def test_the_completion_is_sent_the_lead_early_and_says_the_modelled_end():
    card = Card()
    for _ in range(16):
        card.runner.lead.arrived(T0 - 1.0, T0 - 1.0 + 400e-6)
    assert card.runner.lead.value == pytest.approx(400e-6)
    task = card.submit(T0, d=5 * MS)
    card.runner.start_ready()
    assert card.runner.next_deadline(math.inf) == pytest.approx(T0 + 4.6 * MS)
    card.run_until(T0 + 4.7 * MS)
    assert card.rows()[task][3] == pytest.approx(T0 + 5 * MS)
    after = card.submit(T0 + 4.8 * MS, d=5 * MS)  # the client answered before the end
    card.run_until(T0 + 1.0)
    assert card.rows()[after][2] == pytest.approx(T0 + 5 * MS)  # the stream was busy till then


def test_a_slow_fault_stretches_the_modelled_duration():
    card = Card(fault=TaskFault(slow_factor=3.0))
    task = card.submit(T0, d=5 * MS)
    card.run_until(T0 + 1.0)
    assert card.rows()[task][3] == pytest.approx(T0 + 15 * MS)


def test_a_sticky_hang_lasts_until_recover():
    card = Card(fault=TaskFault(hang_s=100.0, hang_code=HANG_CODE))
    task = card.submit(T0, d=5 * MS)
    card.run_until(T0 + 1.0)
    assert task not in card.rows()
    card.runner.end_hangs()
    card.run_until(T0 + 1.1)
    _, code, _, end_s, _, _ = card.rows()[task]
    assert code == HANG_CODE and end_s == T0 + 1.0


def test_the_minimum_delay_is_kept_whole_despite_the_lead():
    card = Card(min_delay_s=0.2)
    for _ in range(16):
        card.runner.lead.arrived(T0 - 1.0, T0 - 1.0 + 400e-6)
    task = card.submit(T0, k="record")
    card.runner.start_ready()
    assert card.runner.next_deadline(math.inf) == pytest.approx(T0 + 0.2)
    card.run_until(T0 + 1.0)
    assert card.rows()[task][3] == pytest.approx(T0 + 0.2)


def test_a_wait_starts_after_the_awaited_record_ended_in_the_model():
    card = Card()
    card.submit(T0, stream=1, d=5 * MS)
    record = card.submit(T0, stream=1, k="record")
    wait = card.submit(T0, stream=2, k="wait", ws=1, wt=record)
    after = card.submit(T0, stream=2, d=1 * MS)
    card.run_until(T0 + 1.0)
    rows = card.rows()
    assert rows[record][3] == pytest.approx(T0 + 5 * MS)
    assert rows[wait][3] == pytest.approx(T0 + 5 * MS)
    assert rows[after][3] == pytest.approx(T0 + 6 * MS)


def test_a_departed_client_gives_its_slots_back():
    card = Card(slots=1)
    card.submit(T0, stream=1, d=5 * MS)
    card.submit(T0, stream=2, d=5 * MS)
    card.runner.start_ready()
    card.clock.now = T0 + 1 * MS
    assert card.runner.end_tasks(A) == 2
    assert {row[1] for row in card.runner.outbox[A]} == {ACL_ERROR_RT_STREAM_ABORT}
    assert card.scheduler.running_slots == 0 and card.scheduler.free_slots == [T0 + 1 * MS]
    other = card.submit(T0 + 1 * MS, client=B, d=5 * MS)
    card.run_until(T0 + 1.0)
    assert card.rows()[other][2:4] == pytest.approx([T0 + 1 * MS, T0 + 6 * MS])


def test_a_lead_longer_than_the_kernels_never_sends_a_completion_before_its_start():
    """Back-to-back 0.1 ms kernels with a 0.4 ms lead: each completion leaves no earlier than
    its task's modelled start (the previous one's end), so the stream keeps the modelled pace."""
    card = Card()
    for _ in range(16):
        card.runner.lead.arrived(T0 - 1.0, T0 - 1.0 + 400e-6)
    sent: dict[int, float] = {}
    complete = card.runner.complete

    def spy(client, task_id, *args, **kwargs):
        sent[task_id] = card.clock.now
        complete(client, task_id, *args, **kwargs)

    card.runner.complete = spy
    tasks = [card.submit(T0, d=0.1 * MS) for _ in range(20)]
    card.run_until(T0 + 1.0)
    rows = card.rows()
    for task in tasks:
        assert rows[task][3] == pytest.approx(T0 + task * 0.1 * MS)
        assert sent[task] >= rows[task][2]
    assert sent[tasks[-1]] >= T0 + 1.9 * MS


def test_the_runner_starts_ends_and_sends_by_the_rules():
    """The runner inlines modelled_start, modelled_end and send_at (once per task): the times it
    gives every task of a random mix of streams, slots, durations, computes, stamps, delays and
    leads are the rules' own."""
    rng = random.Random(7)
    for min_delay_s in (0.0, 0.3 * MS):
        card = Card(slots=2, min_delay_s=min_delay_s)
        card.runner.lead.value = 0.2 * MS
        checked = []
        original = card.runner._start

        def start(task, original=original, checked=checked, card=card, min_delay_s=min_delay_s):
            before = (task.submitted_s, card.scheduler.stream_end_s(task), task.slot_free_s)
            began = card.clock()
            timers = len(card.runner.timers)
            original(task)
            done_s = began + task.body.get("c", 0.0)
            start_s = modelled_start(*before)
            end_s = modelled_end(start_s, task.body.get("d", 0.0), min_delay_s, done_s)
            assert (task.started_s, task.end_s) == (start_s, end_s)
            if len(card.runner.timers) > timers:  # (else it ended at once: sent now)
                sent = [e[0] for e in card.runner.timers if e[2] is task]
                lead_s = card.runner.lead.value
                assert sent == [send_at(start_s, end_s, min_delay_s, done_s, lead_s)]
            checked.append(task.task_id)

        card.runner._start = start
        for _ in range(60):
            card.clock.now += rng.uniform(0.0, 2 * MS)
            stamp = card.clock.now - rng.uniform(0.0, 1.5 * MS)
            duration, compute = rng.choice((0.0, 1 * MS, 3 * MS)), rng.uniform(0.0, 0.5 * MS)
            card.submit(stamp, stream=rng.randint(1, 4), d=duration, c=compute)
            card.run_until(card.clock.now + rng.uniform(0.0, 1 * MS))
        card.run_until(card.clock.now + 1.0)
        assert sorted(checked) == list(range(1, 61))
