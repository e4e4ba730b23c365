"""The sync sanitizer against a real farm: each kind of skipped synchronization is named, with
the call, device, stream, task and the caller's own source line."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from client.sanitizer import SanitizerError
from tests.system.conftest import MODELS

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H = 1, 2
N = 256 * 4


def _setup(acl):
    assert acl.rt.set_device(0) == 0
    stream, _ = acl.rt.create_stream()
    model_id, _ = acl.mdl.load_from_file(str(MODELS / "matmul.toml"))
    d_in, _ = acl.rt.malloc(N, 0)
    d_out, _ = acl.rt.malloc(N, 0)
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, N))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(d_out, N))
    return stream, model_id, d_in, d_out, inputs, outputs


def _line_of(marker: str) -> str:
    with open(__file__) as source:
        lines = source.read().splitlines()
    for number, line in enumerate(lines, 1):
        if marker in line and "_line_of" not in line:
            return f"{__file__}:{number}"
    raise AssertionError(marker)


def test_warn_mode_names_every_kind(farm, acl_on, monkeypatch, tmp_path):
    from client import RUNTIME

    report = tmp_path / "findings.json"
    monkeypatch.setenv("NPUFARM_SANITIZER", "warn")
    monkeypatch.setenv("NPUFARM_SANITIZER_JSON", str(report))
    host = np.zeros(256, np.float32)
    hp = acl_util_ptr = None
    with acl_on(farm) as acl:
        stream, model_id, d_in, d_out, inputs, outputs = _setup(acl)
        hp = acl_util_ptr = acl.util.numpy_to_ptr(host)
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        assert acl.rt.memcpy(hp, N, d_out, N, D2H) == 0  # MARK-READ
        assert acl.rt.memcpy(d_in, N, hp, N, H2D) == 0  # MARK-WRITE
        assert acl.rt.synchronize_stream(stream) == 0
        assert acl.rt.memcpy(hp, N, d_out, N, D2H) == 0  # after the sync: clean
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        assert acl.rt.destroy_stream(stream) == 0  # MARK-DESTROY
        stream2, _ = acl.rt.create_stream()
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream2) == 0
        assert acl.rt.free(d_in) == 0  # MARK-FREE
        # if the card ran the task after the free: a device memory fault, reported at the sync
        assert acl.rt.synchronize_stream(stream2) in (0, 507053)
        assert acl_util_ptr == hp
    findings = RUNTIME.last_findings
    by_kind = {f.kind: f for f in findings}
    assert set(by_kind) == {
        "read_before_sync",
        "write_while_read",
        "destroy_stream_pending",
        "free_while_pending",
    }, findings
    read = by_kind["read_before_sync"]
    assert (read.call, read.device) == ("acl.rt.memcpy", 0)
    assert read.where == _line_of("# MARK-READ") and read.task > 0 and read.stream != 0
    assert "(acl.mdl.execute_async)" in read.message  # the task's own call, by its name
    assert by_kind["write_while_read"].where == _line_of("# MARK-WRITE")
    assert by_kind["destroy_stream_pending"].where == _line_of("# MARK-DESTROY")
    assert by_kind["free_while_pending"].where == _line_of("# MARK-FREE")
    exported = json.loads(report.read_text())
    assert len(json.dumps(exported)) > 10 and "read_before_sync" in report.read_text()


def test_raise_mode_raises_at_the_offending_call(farm, acl_on, monkeypatch):
    monkeypatch.setenv("NPUFARM_SANITIZER", "raise")
    with acl_on(farm) as acl:
        stream, model_id, d_in, d_out, inputs, outputs = _setup(acl)
        host = np.zeros(256, np.float32)
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        with pytest.raises(SanitizerError) as caught:
            acl.rt.memcpy(acl.util.numpy_to_ptr(host), N, d_out, N, D2H)  # MARK-RAISE
        assert caught.value.finding.where == _line_of("# MARK-RAISE")
        assert acl.rt.synchronize_stream(stream) == 0
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(host), N, d_out, N, D2H) == 0


def test_off_mode_is_silent(farm, acl_on, monkeypatch):
    from client import RUNTIME

    monkeypatch.setenv("NPUFARM_SANITIZER", "off")
    with acl_on(farm) as acl:
        stream, model_id, d_in, d_out, inputs, outputs = _setup(acl)
        host = np.zeros(256, np.float32)
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(host), N, d_out, N, D2H) == 0
        assert acl.rt.synchronize_stream(stream) == 0
    assert RUNTIME.last_findings == []


# -- defect 8: correct patterns are clean; one wrong read is one finding -----------------------
def _report_loop(args_list):
    acl, stop = args_list
    while not stop.is_set():
        acl.rt.process_report(20)  # 507012 on an idle tick: keep looping


def test_correct_patterns_give_no_finding(farm, acl_on, monkeypatch):
    """The vendor's async pattern (D2H copy inside a host callback), a read after stream_query
    or query_event_status said done, pageable memcpy_async both ways, and a read after a sync
    of a stream that waited for the writer's event: zero findings."""
    from client import RUNTIME
    from tests.conftest import poll_for

    monkeypatch.setenv("NPUFARM_SANITIZER", "warn")
    host = np.zeros(256, np.float32)
    with acl_on(farm) as acl:
        stream, model_id, d_in, d_out, inputs, outputs = _setup(acl)
        hp = acl.util.numpy_to_ptr(host)
        stop = threading.Event()
        tid, _ = acl.util.start_thread(_report_loop, [acl, stop])
        assert acl.rt.subscribe_report(tid, stream) == 0
        codes = []

        def fetch(_):  # runs after every earlier task of the stream
            codes.append(acl.rt.memcpy(hp, N, d_out, N, D2H))

        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        assert acl.rt.launch_callback(fetch, None, 0, stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        assert codes == [0]

        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        poll_for(lambda: acl.rt.stream_query(stream) == (0, 0))
        assert acl.rt.memcpy(hp, N, d_out, N, D2H) == 0

        event, _ = acl.rt.create_event()
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        assert acl.rt.record_event(event, stream) == 0
        poll_for(lambda: acl.rt.query_event_status(event) == (1, 0))
        assert acl.rt.memcpy(hp, N, d_out, N, D2H) == 0

        x = np.arange(256, dtype=np.float32)
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        # pageable host memory: each copy returns once done, after the stream's earlier tasks
        assert acl.rt.memcpy_async(hp, N, d_out, N, D2H, stream) == 0
        assert acl.rt.memcpy_async(d_in, N, acl.util.numpy_to_ptr(x), N, H2D, stream) == 0

        other, _ = acl.rt.create_stream()
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        assert acl.rt.record_event(event, stream) == 0
        assert acl.rt.stream_wait_event(other, event) == 0
        assert acl.rt.synchronize_stream(other) == 0  # it waited for the execute on stream
        assert acl.rt.memcpy(hp, N, d_out, N, D2H) == 0

        assert acl.rt.unsubscribe_report(tid, stream) == 0
        stop.set()
        assert acl.util.stop_thread(tid) == 0
        assert acl.rt.synchronize_stream(stream) == 0
    assert RUNTIME.last_findings == []


def _enqueue(acl, model_id, inputs, outputs, stream):
    return acl.mdl.execute_async(model_id, inputs, outputs, stream)  # MARK-SUBMIT


def _fetch(acl, hp, d_out):
    return acl.rt.memcpy(hp, N, d_out, N, D2H)  # MARK-FETCH


def test_one_wrong_read_is_one_finding_with_read_and_submit_stacks(farm, acl_on, monkeypatch):
    from client import RUNTIME

    monkeypatch.setenv("NPUFARM_SANITIZER", "warn")
    host = np.zeros(256, np.float32)
    with acl_on(farm) as acl:
        stream, model_id, d_in, d_out, inputs, outputs = _setup(acl)
        hp = acl.util.numpy_to_ptr(host)
        assert _enqueue(acl, model_id, inputs, outputs, stream) == 0  # MARK-CALL-SUBMIT
        assert _fetch(acl, hp, d_out) == 0  # MARK-CALL-FETCH
        assert acl.rt.synchronize_stream(stream) == 0
        assert _fetch(acl, hp, d_out) == 0  # synced: clean
    [finding] = RUNTIME.last_findings
    assert (finding.kind, finding.call) == ("read_before_sync", "acl.rt.memcpy")
    assert finding.where == _line_of("# MARK-FETCH")
    assert finding.stack[:2] == (
        f"{_line_of('# MARK-FETCH')} in _fetch",
        f"{_line_of('# MARK-CALL-FETCH')} in "
        "test_one_wrong_read_is_one_finding_with_read_and_submit_stacks",
    )
    assert finding.submitted[:2] == (
        f"{_line_of('# MARK-SUBMIT')} in _enqueue",
        f"{_line_of('# MARK-CALL-SUBMIT')} in "
        "test_one_wrong_read_is_one_finding_with_read_and_submit_stacks",
    )
    assert _line_of("# MARK-SUBMIT") in str(finding) and _line_of("# MARK-CALL-FETCH") in str(
        finding
    )


def test_wrong_reads_beside_the_correct_patterns_are_still_reported(farm, acl_on, monkeypatch):
    """A callback or a pageable memcpy_async follows its own stream only: reading what another,
    unsynced stream writes is still a finding, one each."""
    from client import RUNTIME

    monkeypatch.setenv("NPUFARM_SANITIZER", "warn")
    host = np.zeros(256, np.float32)
    with acl_on(farm) as acl:
        stream, model_id, d_in, d_out, inputs, outputs = _setup(acl)
        writer, _ = acl.rt.create_stream()
        hp = acl.util.numpy_to_ptr(host)
        stop = threading.Event()
        tid, _ = acl.util.start_thread(_report_loop, [acl, stop])
        assert acl.rt.subscribe_report(tid, stream) == 0
        codes = []

        def fetch(_):
            codes.append(acl.rt.memcpy(hp, N, d_out, N, D2H))  # MARK-CB-READ

        assert acl.mdl.execute_async(model_id, inputs, outputs, writer) == 0
        assert acl.rt.launch_callback(fetch, None, 0, stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        assert acl.rt.memcpy_async(hp, N, d_out, N, D2H, stream) == 0  # MARK-PAGEABLE-READ
        assert acl.rt.synchronize_stream(writer) == 0
        assert acl.rt.unsubscribe_report(tid, stream) == 0
        stop.set()
        assert acl.util.stop_thread(tid) == 0
    assert codes == [0]
    findings = RUNTIME.last_findings
    assert [(f.kind, f.call, f.where) for f in findings] == [
        ("read_before_sync", "acl.rt.memcpy", _line_of("# MARK-CB-READ")),
        ("read_before_sync", "acl.rt.memcpy_async", _line_of("# MARK-PAGEABLE-READ")),
    ]
    assert findings[0].stack[0].endswith(" in fetch")
