"""Unit tests for client.poison: poison decisions per byte range, not per allocation."""

from __future__ import annotations

from client.poison import PendingReads, overlaps, spans_of


def test_spans_drop_empty_references():
    assert spans_of([(0x100, 64), (0x200, 0), (0x300, 8)]) == ((0x100, 0x140), (0x300, 0x308))


def test_overlap_is_by_byte_not_by_allocation():
    arena_input, arena_output = (0x1000, 0x1400), (0x1400, 0x1800)  # one malloc, two regions
    assert not overlaps(arena_output, [arena_input])
    assert overlaps((0x13FF, 0x1401), [arena_input])
    assert not overlaps((0x1000, 0x1000), [arena_input])


def test_pending_reads_count_each_range_until_every_reader_is_done():
    pending = PendingReads()
    pending.add(1, ((0x1000, 0x1400),))
    pending.add(2, ((0x1000, 0x1400), (0x2000, 0x2040)))
    pending.add(3, ())  # a task that reads nothing is not kept
    assert len(pending) == 2
    assert pending.busy((0x1200, 0x1300)) and pending.busy((0x2000, 0x2001))
    assert not pending.busy((0x1400, 0x2000))  # the bytes between the two ranges
    pending.done(2)
    assert pending.busy((0x1000, 0x1001)) and not pending.busy((0x2000, 0x2040))
    pending.done(1)
    pending.done(1)  # a duplicate completion is harmless
    assert not pending.busy((0, 1 << 40)) and len(pending) == 0
