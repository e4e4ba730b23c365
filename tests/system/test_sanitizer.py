"""The sync sanitizer against a real farm: each kind of skipped synchronization is named, with
the call, device, stream, task and the caller's own source line."""

from __future__ import annotations

import json

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
