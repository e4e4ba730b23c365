"""The sanitizer against an oracle, on generated programs: it reports a read exactly when some
task writing those bytes is covered neither by a sync nor by the reader's own observations.

The oracle recomputes coverage from scratch at every read (the closure of every sync and
observation so far through the stream waits), so the checker's incremental bookkeeping (its
marks, their pruning, its transitive covers) is compared with the definition, not with itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from client.sanitizer import Sanitizer, SanitizerError
from core.errors import ACL_SUCCESS

DEV = 0
STREAMS = 2
BUFFERS = 3
SIZE = 64


def _span(buffer: int) -> tuple[int, int]:
    return (0x10000 + buffer * SIZE, SIZE)


@dataclass
class _Task:
    task_id: int
    stream: int
    writes: frozenset[int]
    waits: tuple[int, int] | None = None


class Oracle:
    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.roots: list[tuple[int, int]] = []  # (stream, upto) syncs and my observations

    def last(self, stream: int) -> int:
        return max((t.task_id for t in self.tasks if t.stream == stream), default=0)

    def covered(self) -> set[int]:
        done: set[int] = set()
        work = list(self.roots)
        seen: set[tuple[int, int]] = set()
        while work:
            root = work.pop()
            if root in seen:
                continue
            seen.add(root)
            stream, upto = root
            for task in self.tasks:
                if task.stream == stream and task.task_id <= upto and task.task_id not in done:
                    done.add(task.task_id)
                    if task.waits is not None:
                        work.append(task.waits)
        return done

    def wrong_read(self, buffer: int) -> bool:
        covered = self.covered()
        return any(buffer in t.writes and t.task_id not in covered for t in self.tasks)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.integers(0, STREAMS - 1),
            st.frozensets(st.integers(0, BUFFERS - 1), max_size=2),
        ),
        st.tuples(st.just("wait"), st.integers(0, STREAMS - 1), st.integers(0, STREAMS - 1)),
        st.tuples(st.just("sync"), st.integers(0, STREAMS - 1), st.just(None)),
        st.tuples(st.just("observe"), st.integers(0, STREAMS - 1), st.just(None)),
        st.tuples(st.just("device"), st.just(0), st.just(None)),
        st.tuples(st.just("read"), st.integers(0, BUFFERS - 1), st.just(None)),
    ),
    max_size=40,
)


@settings(max_examples=1000, deadline=None)
@given(ops)
def test_a_read_is_reported_exactly_when_a_writer_is_uncovered(program):
    san, oracle = Sanitizer("raise"), Oracle()
    next_id = 1
    for op, a, b in program:
        if op == "submit":
            san.task_submitted(next_id, DEV, a, [], [_span(x) for x in b], "exec")
            oracle.tasks.append(_Task(next_id, a, b))
            next_id += 1
        elif op == "wait":  # stream a waits for an event recorded now on stream b
            record = oracle.last(b)
            san.task_waits(next_id, DEV, a, b, record)
            oracle.tasks.append(_Task(next_id, a, frozenset(), (b, record)))
            next_id += 1
        elif op in ("sync", "observe"):
            upto = oracle.last(a)
            if op == "sync":
                san.stream_synced(DEV, a, upto, ACL_SUCCESS)
            else:
                san.stream_observed(DEV, a, upto)
            oracle.roots.append((a, upto))
        elif op == "device":
            san.device_synced(DEV, ACL_SUCCESS)
            oracle.roots += [(s, oracle.last(s)) for s in range(STREAMS)]
        else:
            try:
                san.check_read(DEV, *_span(a), "acl.rt.memcpy")
                reported = False
            except SanitizerError:
                reported = True
            assert reported == oracle.wrong_read(a), (program, op, a)
