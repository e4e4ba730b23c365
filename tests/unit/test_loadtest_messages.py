"""The typed messages between ``npufarm bench``'s parent and its workers (loadtest.messages) and
the parent's bookkeeping of them (loadgen.Collector): pure, no process, no farm."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from loadtest.loadgen import Collector
from loadtest.messages import STOP, Bye, Phase, PhaseDone, Ready, Samples, Stop, WorkerError
from loadtest.schema import SAMPLE_DTYPE


def _rows(*phases: int) -> np.ndarray:
    return np.array([(p, 0, 1, 0, 1.0, 1.0, 1.5) for p in phases], SAMPLE_DTYPE)


@pytest.mark.parametrize(
    "message",
    [
        Ready(1, 0.25),
        PhaseDone(0, 2, {"cpu_s": 0.1, "wall_s": 1.0, "missed": 0, "active": 2}),
        WorkerError(1, "worker 1 setup: card 0: set_device returned 507010"),
        Bye(3),
        STOP,
    ],
)
def test_messages_cross_a_process_queue_unchanged(message):
    # a spawn queue pickles them: what arrives must match the same class patterns
    assert pickle.loads(pickle.dumps(message)) == message


def test_a_phase_and_samples_keep_their_arrays():
    phase = Phase(0, 10.0, 11.0, 12.0, False, {0: np.arange(3) / 10.0, 2: None})
    back = pickle.loads(pickle.dumps(phase))
    head = (back.index, back.t0, back.warm_end, back.end, back.budget)
    assert head == (0, 10.0, 11.0, 12.0, False)
    assert back.slots[2] is None and back.slots[0].tolist() == [0.0, 0.1, 0.2]
    rows = pickle.loads(pickle.dumps(Samples(1, _rows(0, 1)))).rows
    assert rows.dtype == SAMPLE_DTYPE and rows["phase"].tolist() == [0, 1]
    assert isinstance(pickle.loads(pickle.dumps(STOP)), Stop)


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        Ready(0, 1.0).index = 1  # type: ignore[misc]


def test_collector_files_each_kind_where_the_parent_reads_it():
    got = Collector([0, 1])
    got.handle(Ready(0, 0.5))
    got.handle(Ready(1, 0.7))
    got.handle(Samples(0, _rows(0, 0, 1)))  # a batch may straddle two phases
    got.handle(Samples(1, _rows(1)))
    got.handle(PhaseDone(0, 0, {"cpu_s": 0.2}))
    got.handle(PhaseDone(1, 0, {"cpu_s": 0.3}))
    got.handle(WorkerError(1, "slot 3: boom"))
    got.handle(Bye(1))
    assert got.ready == {0, 1} and got.bye == {1}
    assert [part.size for part in got.by_phase[0]] == [2]
    assert [part.size for part in got.by_phase[1]] == [1, 1]
    assert got.done == {0: {0: {"cpu_s": 0.2}, 1: {"cpu_s": 0.3}}}
    assert got.errors == ["slot 3: boom"]


def test_collector_refuses_what_is_not_a_worker_message():
    # the old string-tagged tuples are not understood any more: loud, not silently dropped
    with pytest.raises(TypeError, match="unexpected message"):
        Collector([0]).handle(("ready", 0, 0.5))
