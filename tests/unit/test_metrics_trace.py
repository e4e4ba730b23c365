"""Pure parts of the farm's observability: per-stream queue depths, metric families, trace rows."""

from __future__ import annotations

import json

from device.streams import StreamScheduler, Task
from farm.metrics import FarmMetrics
from farm.trace import TraceRecorder


def _task(client: bytes, stream: int, task_id: int) -> Task:
    return Task(client, stream, task_id, {"k": "exec", "t": task_id, "s": stream}, 0.0)


def test_queue_depths_lists_the_busiest_streams():
    scheduler = StreamScheduler(slots=1)
    for task_id in range(1, 4):
        scheduler.submit(_task(b"a", 7, task_id))
    scheduler.submit(_task(b"a", 9, 10))
    scheduler.take_startable()  # stream 7's first task runs; 9 waits for the slot
    assert scheduler.queue_depths() == {7: 3, 9: 1}
    assert scheduler.queue_depths(limit=1) == {7: 3}


def test_metrics_families_and_stale_stream_labels():
    metrics = FarmMetrics(0, "unit")  # port 0: any free loopback port
    try:
        metrics.tasks_ended(1, [[1, 0, 1.0, 1.5, 7, 0.5], [2, 507015, 2.0, 2.1, 7, 2.0]])
        metrics.card_stats(1, {"queued": 3, "hbm_used": 64, "stream_queues": {7: 2, 9: 1}})
        metrics.card_stats(1, {"queued": 1, "stream_queues": {9: 1}})
        metrics.card_state(1, False, 2)
        metrics.fault(1, "error")
        metrics.tasks_refused(1, 3)
        metrics.tasks_refused(1, 2)
        value = metrics.registry.get_sample_value
        assert value("npufarm_tasks_total", {"card": "1", "code": "0"}) == 1
        assert value("npufarm_tasks_total", {"card": "1", "code": "507015"}) == 1
        assert value("npufarm_task_run_seconds_count", {"card": "1"}) == 2
        assert value("npufarm_task_queue_seconds_sum", {"card": "1"}) == 0.5
        assert value("npufarm_stream_queued_tasks", {"card": "1", "stream": "0x9"}) == 1
        assert value("npufarm_stream_queued_tasks", {"card": "1", "stream": "0x7"}) is None
        assert value("npufarm_card_healthy", {"card": "1"}) == 0
        assert value("npufarm_faults_injected_total", {"card": "1", "kind": "error"}) == 1
        assert value("npufarm_malformed_tasks_total", {"card": "1"}) == 5
    finally:
        metrics.close()


def test_trace_rows_become_chrome_trace_events(tmp_path):
    trace = TraceRecorder(farm_start_s=100.0)
    trace.tasks(0, 1, b"client", [[1, 0, 101.0, 101.5, 7, 100.5], ["bad row"]])
    trace.syncs(b"client", [[0, 7, 100.9, 101.6, 0, "stream"], [1, 2]])
    trace.instant("card lost", 0, 102.0, {"epoch": 1})
    path = tmp_path / "t.json"
    assert trace.write(path, [0]) == 5  # process name, thread name, task, sync, instant
    events = json.loads(path.read_text())["traceEvents"]
    task, sync = (e for e in events if e["ph"] == "X")
    assert (task["ts"], task["dur"], task["args"]["queued_us"]) == (1e6, 5e5, 5e5)
    assert sync["tid"] == task["tid"] and sync["cat"] == "client"
    assert [e["name"] for e in events if e["ph"] == "i"] == ["card lost"]
