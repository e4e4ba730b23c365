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


def test_a_read_range_added_after_a_query_is_seen_by_the_next_query():
    pending = PendingReads()
    pending.add(1, ((0x1000, 0x1400),))
    output = (0x2000, 0x2100)
    assert not pending.busy(output)  # the overlaps of `output` are now cached (none)
    pending.add(2, ((0x20F0, 0x2200),))  # a range never seen before: the cache is stale
    assert pending.busy(output)
    pending.done(2)
    assert not pending.busy(output)
    pending.add(3, ((0x20F0, 0x2200),))  # seen before: the cached overlap still holds
    assert pending.busy(output)


def test_unread_keeps_the_items_whose_range_no_pending_task_reads():
    pending = PendingReads()
    pending.add(1, ((0x1000, 0x1400),))
    fills = [((0x0F00, 0x1001), "a"), ((0x1400, 0x1800), "b"), ((0x13FF, 0x1400), "c")]
    assert pending.unread(fills) == ["b"]
    pending.done(1)
    assert pending.unread(fills) == ["a", "b", "c"]


def test_many_distinct_ranges_stay_exact_past_the_cache_bound(monkeypatch):
    monkeypatch.setattr("client.poison._MAX_KNOWN", 4)
    pending = PendingReads()
    for task_id in range(1, 20):  # every task reads its own range: the cache starts over often
        base = task_id * 0x100
        pending.add(task_id, ((base, base + 0x10),))
        assert pending.busy((base + 0x8, base + 0x9))
        assert not pending.busy((base + 0x10, base + 0x100))
    for task_id in range(1, 20, 2):
        pending.done(task_id)
    for task_id in range(1, 20):
        base = task_id * 0x100
        assert pending.busy((base, base + 1)) == (task_id % 2 == 0)
