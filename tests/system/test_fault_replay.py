"""Fault plans are replayable: the same plan, seed and workload give the same fault log; and the
farm's ledger and the client's agree after a run under a mixed fault plan."""

from __future__ import annotations

import numpy as np
import pytest

from core.faults import read_fault_log
from farm.admin import query_status
from tests.system.conftest import MODELS, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

H2D, D2H = 1, 2

PLAN = """
seed = 7

[[fault]]
kind = "error"
api = "execute"
probability = 0.15
code = 507015

[[fault]]
kind = "corrupt"
api = "execute"
probability = 0.1
pattern = "nan"

[[fault]]
kind = "slow"
card = 1
probability = 0.3
factor = 2.0
"""


def _workload(acl, tasks_per_card: int) -> list[int]:
    """Per card, in order: write, execute, sync. Returns every sync's code."""
    codes = []
    count, _ = acl.rt.get_device_count()
    for device_id in range(count):
        assert acl.rt.set_device(device_id) == 0
        stream, _ = acl.rt.create_stream()
        model_id, _ = acl.mdl.load_from_file(str(MODELS / "matmul.toml"))
        n = 256 * 4
        d_in, _ = acl.rt.malloc(n, 0)
        d_out, _ = acl.rt.malloc(n, 0)
        inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, n))
        acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(d_out, n))
        for step in range(tasks_per_card):
            x = np.random.default_rng(step).standard_normal(256).astype(np.float32)
            acl.rt.memcpy(d_in, n, acl.util.numpy_to_ptr(x), n, H2D)
            assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
            codes.append(acl.rt.synchronize_stream_with_timeout(stream, 5000))
        assert acl.rt.reset_device(device_id) == 0
    return codes


def _run(tmp_path, acl_on, tag: str):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    log = tmp_path / f"faults-{tag}.jsonl"
    farm = start_farm(cards=2, extra=["--faults", str(plan), "--fault-log", str(log)])
    try:
        with acl_on(farm) as acl:
            codes = _workload(acl, 60)
        from client import RUNTIME

        client_ledger = RUNTIME.last_ledger
        farm_ledger = query_status(farm.address)["ledger"]
    finally:
        stop_and_check(farm)
    events = read_fault_log(log)
    keys = sorted(e.replay_key() for e in events)
    return codes, keys, client_ledger, farm_ledger


def test_same_plan_same_workload_same_fault_log(tmp_path, acl_on):
    codes_a, keys_a, _, _ = _run(tmp_path, acl_on, "a")
    codes_b, keys_b, _, _ = _run(tmp_path, acl_on, "b")
    kinds = {key[4] for key in keys_a}  # replay key: (card, epoch, hook, call, kind, ...)
    assert len(keys_a) >= 10 and {"error", "corrupt", "slow"} <= kinds, keys_a
    assert keys_a == keys_b
    assert codes_a == codes_b
    assert codes_a.count(507015) == sum(1 for key in keys_a if key[4] == "error")


def test_farm_and_client_ledgers_agree_under_faults(tmp_path, acl_on):
    codes, keys, client, farm = _run(tmp_path, acl_on, "ledger")
    assert client["submitted"] == farm["submitted"] == len(codes)
    assert client["completed"] == farm["completed"]
    assert client["failed"] == farm["failed"]
    assert farm["in_flight"] == 0 and farm["dropped"] == 0 and client["abandoned"] == 0
    assert farm["submitted"] == farm["completed"] + sum(farm["failed"].values())
    assert farm["failed"].get("507015", 0) == codes.count(507015) > 0
