"""The farm's Chrome/Perfetto trace: valid trace JSON with task spans per card and stream,
fault markers, and card loss/restart markers; from `up --trace` and from `npufarm trace`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import poll_for
from tests.system.conftest import MODELS, REPO, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

PLAN = """
seed = 3
[[fault]]
kind = "error"
card = 0
api = "execute"
after_tasks = 2
count = 1
"""


def _work(acl, device_id: int, tasks: int) -> None:
    assert acl.rt.set_device(device_id) == 0
    stream, _ = acl.rt.create_stream()
    model_id, _ = acl.mdl.load_from_file(str(MODELS / "add.toml"))
    n = 1024 * 4
    ptrs = [acl.rt.malloc(n, 0)[0] for _ in range(3)]
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    for ptr in ptrs[:2]:
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(ptr, n))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(ptrs[2], n))
    x = np.ones(1024, np.float32)
    for ptr in ptrs[:2]:
        acl.rt.memcpy(ptr, n, acl.util.numpy_to_ptr(x), n, 1)
    for _ in range(tasks):
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
        acl.rt.synchronize_stream(stream)


def test_trace_has_tasks_faults_and_card_events(tmp_path, acl_on):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    final = tmp_path / "trace.json"
    farm = start_farm(cards=2, extra=["--faults", str(plan), "--trace", str(final)])
    try:
        with acl_on(farm) as acl:
            _work(acl, 0, 5)
            _work(acl, 1, 3)
            live = tmp_path / "live.json"
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "npufarm",
                    "trace",
                    str(live),
                    "--runtime-dir",
                    str(farm.runtime_dir),
                    "--name",
                    farm.name,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            live_events = json.loads(live.read_text())["traceEvents"]
            assert sum(e["ph"] == "X" for e in live_events) >= 8
    finally:
        stop_and_check(farm)
    poll_for(final.exists, 5.0)
    trace = json.loads(final.read_text())
    events = trace["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    tasks = [e for e in spans if e.get("cat") == "task"]
    assert {e["pid"] for e in tasks} == {0, 1}
    assert len([e for e in tasks if e["pid"] == 0]) == 5
    assert len([e for e in tasks if e["pid"] == 1]) == 3
    assert all(e["dur"] >= 0 and e["ts"] >= 0 and "task" in e["args"] for e in tasks)
    failed = [e for e in tasks if e["args"]["code"] != 0]
    assert [e["args"]["code"] for e in failed] == [507015]
    names = {e["name"] for e in events if e["ph"] == "i"}
    assert {"fault: error", "card ready"} <= names
    waits = [e for e in spans if e.get("cat") == "client"]
    assert waits and all(e["name"].startswith("sync stream") for e in waits)
    assert {e["pid"] for e in waits} <= {0, 1}
    meta = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert meta == {"card 0", "card 1"}


def test_prometheus_metrics_are_scraped(tmp_path, acl_on):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    farm = start_farm(cards=2, extra=["--metrics-port", str(port)])
    try:
        with acl_on(farm) as acl:
            _work(acl, 1, 4)
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()

        def scraped() -> str | None:
            text = scrape()
            ready = 'npufarm_card_hbm_bytes{card="0"}' in text and "npufarm_tasks_total{" in text
            return text if ready else None

        text = poll_for(scraped, 5.0)
        assert 'npufarm_tasks_total{card="1",code="0"} 4.0' in text
        assert 'npufarm_task_run_seconds_count{card="1"} 4.0' in text
        assert 'npufarm_card_healthy{card="0"} 1.0' in text
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
        assert float(samples['npufarm_card_hbm_bytes{card="0"}']) == 256 << 20
    finally:
        stop_and_check(farm)
