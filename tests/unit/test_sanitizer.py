"""Unit tests for client.sanitizer: program-order sync findings, coverage rules, modes, output."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

import pytest

import client
from client.sanitizer import FINDING_KINDS, Finding, Sanitizer, SanitizerError
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_AICORE_EXCEPTION,
    ACL_ERROR_RT_EVENT_SYNC_TIMEOUT,
    ACL_ERROR_RT_LOST_HEARTBEAT,
    ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
    ACL_SUCCESS,
    ConfigError,
)

DEV, STREAM = 0, 5
IN, OUT = 0x1000, 0x2000  # an input and an output buffer of 64 bytes each
EXEC = "acl.mdl.execute_async"
MEMCPY = "acl.rt.memcpy"


def offend(method, *args):
    """Call a sanitizer method from this file; returns (expected ``where``, SanitizerError|None)."""
    where = f"{__file__}:{sys._getframe().f_lineno + 2}"
    try:
        method(*args)
    except SanitizerError as exc:
        return where, exc
    return where, None


def submit(san: Sanitizer, task_id: int, stream: int = STREAM, device: int = DEV) -> None:
    """An execute_async reading IN and writing OUT."""
    san.task_submitted(task_id, device, stream, [(IN, 64)], [(OUT, 64)], EXEC)


SUBMIT_LINE = submit.__code__.co_firstlineno + 2


@pytest.fixture
def san() -> Sanitizer:
    return Sanitizer("warn")


def kinds(san: Sanitizer) -> list[str]:
    return [finding.kind for finding in san.findings]


# -- every finding kind, with its fields ---------------------------------------------------------
def test_read_before_sync_names_call_device_stream_task_and_line(san, caplog):
    submit(san, 1)
    with caplog.at_level(logging.WARNING, logger="client.sanitizer"):
        where, exc = offend(san.check_read, DEV, OUT + 16, 8, MEMCPY)
    assert exc is None
    [finding] = san.findings
    assert (finding.kind, finding.call, finding.device, finding.stream, finding.task) == (
        "read_before_sync",
        MEMCPY,
        DEV,
        STREAM,
        1,
    )
    assert finding.where == where and finding.where.endswith(".py:" + where.rsplit(":", 1)[1])
    assert "task 1" in finding.message and EXEC in finding.message
    assert [r.getMessage() for r in caplog.records] == [f"sanitizer: {finding}"]


def test_write_into_an_input_or_output_of_an_unsynced_task(san):
    submit(san, 1)
    where_in, _ = offend(san.check_write, DEV, IN, 4, MEMCPY)
    san.check_write(DEV, OUT + 60, 100, "acl.rt.memset")  # another line: not a duplicate
    first, second = san.findings
    assert (first.kind, first.task, first.where, first.call) == (
        "write_while_read",
        1,
        where_in,
        MEMCPY,
    )
    assert "that reads it" in first.message
    assert second.kind == "write_while_read" and "that writes it" in second.message
    assert second.call == "acl.rt.memset" and second.where != where_in


def test_free_of_memory_a_pending_task_uses(san):
    submit(san, 3)
    where, _ = offend(san.check_free, DEV, IN, 64, "acl.rt.free")
    [finding] = san.findings
    assert (finding.kind, finding.call, finding.task, finding.where) == (
        "free_while_pending",
        "acl.rt.free",
        3,
        where,
    )


def test_destroy_of_a_stream_with_pending_tasks(san):
    submit(san, 1)
    submit(san, 2)
    submit(san, 3, stream=STREAM + 1)
    where, _ = offend(san.check_destroy_stream, DEV, STREAM, "acl.rt.destroy_stream")
    [finding] = san.findings
    assert (finding.kind, finding.stream, finding.task, finding.where) == (
        "destroy_stream_pending",
        STREAM,
        2,
        where,
    )
    assert "2 unsynchronized task(s)" in finding.message
    offend(san.check_destroy_stream, DEV, 99, "acl.rt.destroy_stream")  # no tasks: fine
    assert len(san.findings) == 1


def test_unobserved_task_error_is_reported_at_finalize(san):
    submit(san, 4)
    san.task_finished(4, ACL_ERROR_RT_AICORE_EXCEPTION)
    where, _ = offend(san.finalize)
    [finding] = san.findings
    assert (finding.kind, finding.call, finding.device, finding.stream, finding.task) == (
        "unobserved_error",
        "acl.finalize",
        DEV,
        STREAM,
        4,
    )
    assert finding.where == where
    assert "507015" in finding.message and "ACL_ERROR_RT_AICORE_EXCEPTION" in finding.message
    assert EXEC in finding.message
    assert san.finalize() == [finding]  # a second finalize adds nothing


def test_where_skips_frames_inside_npufarm_packages(san):
    submit(san, 1)
    fake = str(Path(client.__file__).parent / "_fake_wrapper.py")
    namespace: dict = {}
    exec(
        compile("def wrapper(san):\n    san.check_read(0, 0x2000, 4, 'x')\n", fake, "exec"),
        namespace,
    )
    where, _ = offend(namespace["wrapper"], san)
    assert san.findings[0].where == where


# -- coverage --------------------------------------------------------------------------------------
def test_stream_sync_covers_every_earlier_task_of_that_stream_only(san):
    submit(san, 1)
    submit(san, 2, stream=STREAM + 1)
    san.stream_synced(DEV, STREAM, 1, ACL_SUCCESS)
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert [f.task for f in san.findings] == [2]
    san.stream_synced(DEV, STREAM + 1, 2, ACL_SUCCESS)
    assert san.pending_count() == 0


def test_event_sync_covers_only_up_to_the_record_task(san):
    submit(san, 1)
    san.task_submitted(2, DEV, STREAM, [], [(0x9000, 8)], "acl.rt.memcpy_async")
    san.stream_synced(DEV, STREAM, 1, ACL_SUCCESS)  # event recorded after task 1
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert san.findings == []
    offend(san.check_read, DEV, 0x9000, 8, MEMCPY)
    assert [(f.kind, f.task) for f in san.findings] == [("read_before_sync", 2)]


def test_device_sync_covers_all_streams_of_that_device_only(san):
    submit(san, 1)
    submit(san, 2, stream=7)
    submit(san, 3, device=1)
    san.device_synced(DEV, ACL_SUCCESS)
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert san.findings == []
    san.check_read(1, OUT, 64, MEMCPY)
    assert [(f.device, f.task) for f in san.findings] == [(1, 3)]


def test_synchronous_execute_covers_its_own_task(san):
    submit(san, 1)
    submit(san, 2)  # the synchronous execute: stream_synced up to its own task id
    san.stream_synced(DEV, STREAM, 2, ACL_SUCCESS)
    san.check_read(DEV, OUT, 64, MEMCPY)
    san.check_free(DEV, IN, 64, "acl.rt.free")
    assert san.findings == [] and san.pending_count() == 0


@pytest.mark.parametrize(
    "code",
    [
        ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
        ACL_ERROR_RT_EVENT_SYNC_TIMEOUT,
        ACL_ERROR_RT_LOST_HEARTBEAT,
    ],
)
def test_timed_out_or_lost_sync_covers_nothing(san, code):
    submit(san, 1)
    san.stream_synced(DEV, STREAM, 1, code)
    san.device_synced(DEV, code)
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert kinds(san) == ["read_before_sync"]


def test_timing_does_not_sync_a_finished_task(san):
    submit(san, 1)
    san.task_finished(1, ACL_SUCCESS)  # the card is done, the caller never synced
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert kinds(san) == ["read_before_sync"]


# -- ranges ----------------------------------------------------------------------------------------
def test_disjoint_adjacent_empty_and_other_device_ranges_are_clean(san):
    submit(san, 1)
    san.check_read(DEV, OUT + 64, 64, MEMCPY)  # adjacent after
    san.check_read(DEV, OUT - 16, 16, MEMCPY)  # adjacent before
    san.check_read(DEV, OUT, 0, MEMCPY)  # empty
    san.check_read(DEV, IN, 64, MEMCPY)  # reading an input the task only reads
    san.check_read(1, OUT, 64, MEMCPY)  # same address, other device
    san.check_write(DEV, 0x5000, 64, MEMCPY)
    san.check_free(DEV, 0x5000, 64, "acl.rt.free")
    assert san.findings == []
    san.check_read(DEV, OUT + 63, 1, MEMCPY)  # last byte: exact overlap
    assert kinds(san) == ["read_before_sync"]


def test_the_latest_overlapping_task_is_named(san):
    submit(san, 1)
    submit(san, 2, stream=STREAM + 1)
    san.check_read(DEV, OUT, 64, MEMCPY)
    [finding] = san.findings
    assert finding.task == 2 and finding.stream == STREAM + 1
    assert "1 more such task(s)" in finding.message


# -- task errors -----------------------------------------------------------------------------------
def test_a_sync_returning_the_error_covers_and_observes_it(san):
    submit(san, 1)
    san.task_finished(1, ACL_ERROR_RT_AICORE_EXCEPTION)
    san.stream_synced(DEV, STREAM, 1, ACL_ERROR_RT_AICORE_EXCEPTION)
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert san.finalize() == []


def test_an_error_covered_by_a_clean_sync_stays_unobserved_until_reported(san):
    submit(san, 1)
    submit(san, 2)
    san.task_finished(1, ACL_ERROR_RT_AICORE_EXCEPTION)
    san.stream_synced(DEV, STREAM, 1, ACL_SUCCESS)  # e.g. an event sync that did not report it
    san.stream_synced(DEV, STREAM, 2, ACL_ERROR_RT_AICORE_EXCEPTION)  # the stream sync did
    assert san.finalize() == []

    other = Sanitizer("warn")
    submit(other, 1)
    other.task_finished(1, ACL_ERROR_RT_AICORE_EXCEPTION)
    other.stream_synced(DEV, STREAM, 1, ACL_SUCCESS)
    assert [f.kind for f in other.finalize()] == ["unobserved_error"]


def test_an_error_sync_observes_every_failure_known_on_its_stream(san):
    submit(san, 1)
    submit(san, 2)
    san.task_finished(2, ACL_ERROR_RT_AICORE_EXCEPTION)
    san.stream_synced(DEV, STREAM, 1, ACL_ERROR_RT_AICORE_EXCEPTION)  # event sync got the slot
    submit(san, 3, stream=STREAM + 1)
    san.task_finished(3, ACL_ERROR_RT_AICORE_EXCEPTION)
    assert [(f.kind, f.task) for f in san.finalize()] == [("unobserved_error", 3)]


def test_device_sync_with_an_error_observes_the_device(san):
    submit(san, 1)
    submit(san, 2, stream=9)
    submit(san, 3, device=1)
    for task_id in (1, 2, 3):
        san.task_finished(task_id, ACL_ERROR_RT_AICORE_EXCEPTION)
    san.device_synced(DEV, ACL_ERROR_RT_AICORE_EXCEPTION)
    assert [(f.device, f.task) for f in san.finalize()] == [(1, 3)]


def test_failure_reported_before_the_submit_is_kept(san):
    san.task_finished(7, ACL_ERROR_RT_AICORE_EXCEPTION)
    submit(san, 7)
    assert [f.task for f in san.finalize()] == [7]


def test_card_loss_is_not_a_task_error_and_reset_forgets_the_device(san):
    submit(san, 1)
    san.task_finished(1, ACL_ERROR_RT_LOST_HEARTBEAT)
    submit(san, 2)
    san.task_finished(2, ACL_ERROR_RT_AICORE_EXCEPTION)
    san.forget_device(DEV)
    assert san.pending_count() == 0
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert san.finalize() == []


# -- modes and duplicates --------------------------------------------------------------------------
def test_raise_mode_raises_with_the_finding_and_records_it():
    san = Sanitizer("raise")
    submit(san, 1)
    where, exc = offend(san.check_read, DEV, OUT, 64, MEMCPY)
    assert isinstance(exc, SanitizerError) and exc.code == ACL_ERROR_INVALID_PARAM
    assert exc.finding == san.findings[0] and exc.finding.where == where
    assert (exc.card, exc.stream, exc.task) == (DEV, STREAM, 1)
    assert "read_before_sync" in str(exc)
    for _ in range(2):  # the same offence at the same line: raised again, recorded once
        _, again = offend(san.check_read, DEV, OUT, 64, MEMCPY)
        assert again is not None and again.finding == exc.finding
    assert len(san.findings) == 1


def test_off_mode_records_nothing():
    san = Sanitizer("off")
    assert not san.enabled
    submit(san, 1)
    san.task_finished(1, ACL_ERROR_RT_AICORE_EXCEPTION)
    san.check_read(DEV, OUT, 64, MEMCPY)
    san.check_write(DEV, IN, 64, MEMCPY)
    san.check_free(DEV, IN, 64, "acl.rt.free")
    san.check_destroy_stream(DEV, STREAM, "acl.rt.destroy_stream")
    assert san.finalize() == [] and san.findings == [] and san.pending_count() == 0
    assert san.summary().endswith("none")


def test_invalid_mode_is_rejected():
    with pytest.raises(ConfigError, match="sanitizer mode"):
        Sanitizer("loud")


def test_duplicates_are_reported_once_per_kind_task_and_line(san, caplog):
    submit(san, 1)
    with caplog.at_level(logging.WARNING, logger="client.sanitizer"):
        for _ in range(3):
            offend(san.check_read, DEV, OUT, 64, MEMCPY)
        submit(san, 2)
        offend(san.check_read, DEV, OUT, 64, MEMCPY)
        san.check_read(DEV, OUT, 64, MEMCPY)  # another line
    assert [f.task for f in san.findings] == [1, 2, 2]
    assert len(caplog.records) == 3


# -- output ----------------------------------------------------------------------------------------
def test_summary_json_and_export(san, tmp_path):
    assert san.summary() == "npufarm sanitizer (warn): none"
    submit(san, 1)
    san.check_read(DEV, OUT, 64, MEMCPY)
    san.check_write(DEV, IN, 64, MEMCPY)
    san.check_read(DEV, OUT + 8, 8, MEMCPY)
    text = san.summary()
    lines = text.splitlines()
    assert lines[0] == "npufarm sanitizer (warn): 3 finding(s)"
    assert lines[1:3] == ["  read_before_sync: 2", "  write_while_read: 1"]
    assert len(lines) == 3 + 3 * 3  # each finding, then its call stack and its submit stack
    for index, finding in enumerate(san.findings):
        head, stack, submitted = lines[3 + 3 * index : 6 + 3 * index]
        assert head == f"  {finding}"
        assert stack == "      call stack: " + " <- ".join(finding.stack)
        assert submitted == "      submitted:  " + " <- ".join(finding.submitted)
        assert finding.stack[0].startswith(finding.where + " in test_summary_json_and_export")
        assert finding.submitted[0] == f"{__file__}:{SUBMIT_LINE} in submit"

    data = json.loads(san.to_json())
    assert data["mode"] == "warn"
    assert data["counts"] == {
        kind: {"read_before_sync": 2, "write_while_read": 1}.get(kind, 0) for kind in FINDING_KINDS
    }
    assert [Finding(**item) for item in data["findings"]] == san.findings
    path = tmp_path / "findings.json"
    san.export(path)
    assert json.loads(path.read_text()) == data


# -- scale and threads -----------------------------------------------------------------------------
def test_ten_thousand_pending_tasks(san):
    for task_id in range(1, 10_001):
        san.task_submitted(
            task_id, DEV, task_id % 8, [(task_id * 128, 64)], [(task_id * 128 + 64, 64)], EXEC
        )
    san.check_read(DEV, 5000 * 128 + 64, 8, MEMCPY)
    assert [f.task for f in san.findings] == [5000]
    san.stream_synced(DEV, 0, 4000, ACL_SUCCESS)
    assert san.pending_count() == 10_000 - 500
    san.device_synced(DEV, ACL_SUCCESS)
    assert san.pending_count() == 0


def test_threads_submitting_finishing_and_syncing():
    san = Sanitizer("warn")
    errors: list[BaseException] = []
    per_thread = 300

    def worker(index: int) -> None:
        try:
            base = index * 1_000_000
            stream = 100 + index
            out = 0x100000 * (index + 1)
            for n in range(1, per_thread + 1):
                task_id = base + n
                san.task_submitted(task_id, DEV, stream, [(out - 64, 64)], [(out, 64)], EXEC)
                san.task_finished(task_id, ACL_SUCCESS)
                if n % 3 == 0:
                    san.stream_synced(DEV, stream, task_id, ACL_SUCCESS)
                    san.check_read(DEV, out, 64, MEMCPY)
                    san.check_write(DEV, out - 64, 64, MEMCPY)
            san.stream_synced(DEV, stream, base + per_thread, ACL_SUCCESS)
            san.check_free(DEV, out - 64, 128, "acl.rt.free")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert san.findings == [] and san.pending_count() == 0
    assert san.finalize() == []


# -- observations by one thread (queries, host callbacks) and stream waits -------------------------
def test_an_observation_covers_the_observing_thread_only(san):
    submit(san, 1)
    san.stream_observed(DEV, STREAM, 1)  # e.g. stream_query said done on this thread
    san.check_read(DEV, OUT, 64, MEMCPY)
    san.check_write(DEV, IN, 64, MEMCPY)
    san.check_destroy_stream(DEV, STREAM, "acl.rt.destroy_stream")
    assert san.findings == []
    other = threading.Thread(target=san.check_read, args=(DEV, OUT, 64, MEMCPY))
    other.start()
    other.join()
    assert [(f.kind, f.task) for f in san.findings] == [("read_before_sync", 1)]
    assert san.pending_count() == 1  # still unsynced for everyone else


def test_an_observation_covers_its_stream_up_to_its_task_only(san):
    submit(san, 1)
    submit(san, 2, stream=STREAM + 1)
    submit(san, 3)
    san.stream_observed(DEV, STREAM, 1)  # a callback whose marker came after task 1
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert [f.task for f in san.findings] == [3]
    assert "1 more such task(s)" in san.findings[0].message  # task 2, the other stream
    san.stream_synced(DEV, STREAM, 3, ACL_SUCCESS)
    offend(san.check_read, DEV, OUT, 64, MEMCPY)
    assert [f.task for f in san.findings] == [3, 2]


def test_a_wait_carries_coverage_to_the_awaited_stream(san):
    a, b, c = STREAM, STREAM + 1, STREAM + 2
    submit(san, 1, stream=a)  # writes OUT
    san.task_waits(2, DEV, b, a, 1)  # b waits for an event recorded on a after task 1
    san.task_waits(3, DEV, c, b, 2)  # c waits for an event recorded on b after its wait
    san.task_submitted(4, DEV, a, [], [(0x9000, 8)], "acl.rt.memcpy_async")  # after the record
    san.stream_observed(DEV, c, 3)  # this thread saw c done: transitively a up to task 1
    san.check_read(DEV, OUT, 64, MEMCPY)
    assert san.findings == []
    offend(san.check_read, DEV, 0x9000, 8, MEMCPY)
    assert [f.task for f in san.findings] == [4]
    san.stream_synced(DEV, c, 3, ACL_SUCCESS)  # a sync of c covers a's task 1 for everyone
    assert san.pending_count() == 1  # task 4 only
    san.check_destroy_stream(DEV, b, "acl.rt.destroy_stream")
    assert len(san.findings) == 1


def test_waits_alone_never_make_a_destroy_finding(san):
    san.task_waits(2, DEV, STREAM, STREAM + 1, 1)
    san.check_destroy_stream(DEV, STREAM, "acl.rt.destroy_stream")
    assert san.findings == []


def test_a_sync_drops_the_marks_it_makes_useless_and_dead_threads_are_pruned(san, monkeypatch):
    import client.sanitizer as module

    submit(san, 1)
    san.stream_observed(DEV, STREAM, 1)
    san.stream_synced(DEV, STREAM, 1, ACL_SUCCESS)
    assert san._marks == {threading.get_ident(): {}}
    monkeypatch.setattr(module, "_THREADS_LIMIT", 4)
    for _ in range(10):
        submit(san, 2)
        worker = threading.Thread(target=san.stream_observed, args=(DEV, STREAM, 2))
        worker.start()
        worker.join()
    assert len(san._marks) <= 5


def test_an_observation_of_nothing_unsynced_keeps_nothing(san):
    san.stream_observed(DEV, STREAM, 10)
    assert san._marks == {threading.get_ident(): {}}
    submit(san, 11)
    san.check_read(DEV, OUT, 64, MEMCPY)  # a later task is not covered by the earlier query
    assert [f.task for f in san.findings] == [11]


# -- bounded bookkeeping ---------------------------------------------------------------------------
def test_unsynced_tasks_findings_and_failures_are_bounded(monkeypatch):
    import client.sanitizer as module

    monkeypatch.setattr(module, "PENDING_LIMIT", 100)
    monkeypatch.setattr(module, "FINDINGS_LIMIT", 10)
    san = Sanitizer("warn")
    for task_id in range(1, 1001):
        san.task_submitted(task_id, DEV, task_id % 3, [], [(task_id * 64, 64)], EXEC)
        san.task_finished(task_id, ACL_ERROR_RT_AICORE_EXCEPTION)
    assert san.pending_count() == 100 and san.dropped["tasks"] == 900
    assert sum(len(tasks) for tasks in san._pending[DEV].values()) == 100
    for task_id in range(901, 1001):
        san.check_read(DEV, task_id * 64, 8, MEMCPY)
    assert len(san.findings) == 10 and san.dropped["findings"] == 90
    assert len(san._failures) == 10 and san.dropped["failures"] == 990
    assert "dropped findings at the limit: 90" in san.summary()
    assert json.loads(san.to_json())["dropped"]["tasks"] == 900
