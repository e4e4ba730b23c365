"""Fault plans against a real farm: each injected fault kind surfaces as the exact ACL code.

Every test writes its fault plan (TOML) to ``tmp_path`` and starts a farm of its own with
``--faults``. Losses (crash, heartbeat loss, disconnect, flapping, a dead broker) are in
``test_faults_loss.py``; the helpers here are shared with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.faults import read_fault_log
from farm.admin import query_status
from tests.conftest import poll_for
from tests.system.conftest import CI_CONFIG, REPO, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H = 1, 2
N = 1024  # float32 elements of the test model's input and output
NBYTES = N * 4
SCALE = 2.0
CI_PROFILE = 'profile = { base = "910b", name = "910b-ci", hbm_bytes = "256MiB" }'


# --------------------------------------------------------------------------------------------
# helpers (also used by test_faults_loss.py)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_plan(tmp_path: Path, *rules: dict, seed: int = 0, name: str = "plan.toml") -> Path:
    """A fault plan file: ``seed`` and one ``[[fault]]`` table per rule dict."""
    lines = [f"seed = {seed}"]
    for rule in rules:
        lines += ["", "[[fault]]", *(f"{k} = {_toml_value(v)}" for k, v in rule.items())]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(tmp_path: Path, name: str, *replacements: tuple[str, str]) -> Path:
    """configs/ci.toml with each ``(old, new)`` text replacement applied (each must match)."""
    text = CI_CONFIG.read_text()
    for old, new in replacements:
        assert old in text, f"{old!r} not in {CI_CONFIG}"
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def fault_farm(tmp_path: Path, *rules: dict, cards: int = 2, extra=(), config: Path = CI_CONFIG):
    """A farm of one's own running the plan ``rules``; checked for leaks when it stops."""
    plan = write_plan(tmp_path, *rules)
    farm = start_farm(cards, extra=["--faults", str(plan), *extra], config=config)
    try:
        yield farm
    finally:
        stop_and_check(farm)


def scale_model_file(
    tmp_path: Path, fixed_s: float = 0.0005, name: str = "scale2", n: int = N
) -> Path:
    """A ``y = SCALE * x`` model over ``n`` float32 values with a fixed modelled latency."""
    path = tmp_path / f"{name}-{n}-{fixed_s:g}.toml"
    path.write_text(
        f"""
[model]
name = "{name}"
kind = "scale"
seed = 1
[model.params]
scale = {SCALE}
[[inputs]]
name = "x"
dtype = "float32"
shape = [1, {n}]
[[outputs]]
name = "y"
dtype = "float32"
shape = [1, {n}]
[latency]
fixed_s = {fixed_s}
"""
    )
    return path


class Model:
    """The scale model loaded on the current device, with its input and output buffers."""

    def __init__(self, acl, tmp_path: Path, fixed_s: float = 0.0005, seed: int = 0) -> None:
        self.acl = acl
        self.model_id, ret = acl.mdl.load_from_file(str(scale_model_file(tmp_path, fixed_s)))
        assert ret == 0, acl.get_recent_err_msg()
        self.d_in, ret = acl.rt.malloc(NBYTES, 0)
        assert ret == 0
        self.d_out, ret = acl.rt.malloc(NBYTES, 0)
        assert ret == 0
        self.inputs, self.outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(self.inputs, acl.create_data_buffer(self.d_in, NBYTES))
        acl.mdl.add_dataset_buffer(self.outputs, acl.create_data_buffer(self.d_out, NBYTES))
        self.set_input(seed)

    def set_input(self, seed: int) -> None:
        self.x = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
        ptr = self.acl.util.numpy_to_ptr(self.x)
        assert self.acl.rt.memcpy(self.d_in, NBYTES, ptr, NBYTES, H2D) == 0

    def fill_output(self, value: float) -> None:
        old = np.full(N, value, np.float32)
        ptr = self.acl.util.numpy_to_ptr(old)
        assert self.acl.rt.memcpy(self.d_out, NBYTES, ptr, NBYTES, H2D) == 0

    def submit(self, stream) -> int:
        return self.acl.mdl.execute_async(self.model_id, self.inputs, self.outputs, stream)

    def result(self) -> np.ndarray:
        y = np.empty(N, np.float32)
        ptr = self.acl.util.numpy_to_ptr(y)
        assert self.acl.rt.memcpy(ptr, NBYTES, self.d_out, NBYTES, D2H) == 0
        return y

    def check(self) -> None:
        np.testing.assert_array_equal(self.result(), SCALE * self.x)


def card_states(farm) -> list[str]:
    return [c["state"] for c in query_status(farm.address)["cards"]]


def fault_events(farm, kind: str | None = None) -> list:
    """The farm's fault log (the path its status names), optionally of one kind."""
    path = query_status(farm.address)["faults"]["log"]
    if not os.path.exists(path):
        return []
    return [e for e in read_fault_log(path) if kind is None or e.kind == kind]


def timed(call):
    started = time.monotonic()
    return call(), time.monotonic() - started


def npufarm_cli(farm, *args: str) -> subprocess.CompletedProcess:
    """``npufarm ARGS`` against ``farm``, found by runtime dir + name (not NPUFARM_ADDRESS)."""
    env = {k: v for k, v in os.environ.items() if k != "NPUFARM_ADDRESS"}
    command = [
        sys.executable,
        "-m",
        "npufarm",
        *args,
        "--runtime-dir",
        str(farm.runtime_dir),
        "--name",
        farm.name,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------------------------
# error


def test_error_reported_once_then_stream_recovers(tmp_path, acl_on, monkeypatch):
    from client import RUNTIME

    monkeypatch.setenv("NPUFARM_SANITIZER", "warn")
    rules = (
        {
            "kind": "error",
            "card": 0,
            "api": "execute",
            "after_tasks": 1,
            "count": 1,
            "code": 507015,
        },
        {"kind": "error", "card": 1, "api": "execute", "count": 1, "code": 507015},
    )
    with fault_farm(tmp_path, *rules) as farm:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)
            assert model.submit(stream) == 0  # task index 0: before after_tasks
            assert acl.rt.synchronize_stream(stream) == 0
            model.check()
            assert model.submit(stream) == 0  # fails on the card
            assert acl.rt.synchronize_stream(stream) == 507015
            assert acl.rt.synchronize_stream(stream) == 0  # reported once, then cleared
            model.set_input(1)
            assert model.submit(stream) == 0
            assert model.submit(stream) == 0
            assert acl.rt.synchronize_stream(stream) == 0  # count = 1: later tasks run
            model.check()
            assert acl.rt.query_device_status(0) == (0, 0)
            # card 1: a failing task nobody ever synchronizes
            assert acl.rt.set_device(1) == 0
            other_stream, _ = acl.rt.create_stream()
            other = Model(acl, tmp_path)
            assert other.submit(other_stream) == 0
            poll_for(lambda: acl.rt.stream_query(other_stream) == (0, 0), 5.0)  # ended
        unobserved = [f for f in RUNTIME.last_findings if f.kind == "unobserved_error"]
        assert len(unobserved) == 1, RUNTIME.last_findings
        assert unobserved[0].device == 1 and "507015" in unobserved[0].message
        events = poll_for(lambda: len(fault_events(farm, "error")) == 2 and fault_events(farm))
        assert sorted((e.card, e.code) for e in events) == [(0, 507015), (1, 507015)]
        assert RUNTIME.last_ledger["failed"] == {"507015": 2}


# --------------------------------------------------------------------------------------------
# hang


def test_transient_hang_times_out_then_completes(tmp_path, acl_on):
    rule = {"kind": "hang", "card": 0, "api": "execute", "duration_s": 0.6, "count": 1}
    with fault_farm(tmp_path, rule, cards=1) as farm:
        interval_s = farm.state["heartbeat_interval_s"]
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)
            started = time.monotonic()
            assert model.submit(stream) == 0
            code, waited_s = timed(lambda: acl.rt.synchronize_stream_with_timeout(stream, 100))
            assert code == 507046
            assert 0.09 <= waited_s <= 0.1 + interval_s + 0.15
            assert acl.rt.stream_query(stream) == (1, 0)  # still running
            assert acl.rt.synchronize_stream(stream) == 0
            assert time.monotonic() - started >= 0.5  # it really hung for duration_s
            model.check()
            model.set_input(3)  # the stream stays usable, at full speed
            assert model.submit(stream) == 0
            code, waited_s = timed(lambda: acl.rt.synchronize_stream_with_timeout(stream, 2000))
            assert code == 0 and waited_s < 0.5
            model.check()
            assert card_states(farm) == ["ready"]
            assert acl.rt.reset_device(0) == 0


def test_sticky_hang_ends_with_watchdog_code_card_stays_ready(tmp_path, acl_on):
    watchdog = CI_PROFILE.replace(
        'hbm_bytes = "256MiB"', 'hbm_bytes = "256MiB", op_timeout_s = 1.0'
    )
    config = write_config(tmp_path, "wd", (CI_PROFILE, watchdog.replace("910b-ci", "wd")))
    rule = {"kind": "hang", "card": 1, "api": "execute", "count": 1}
    with fault_farm(tmp_path, rule, config=config) as farm:
        expiry_s = farm.state["heartbeat_interval_s"] * farm.state["heartbeat_liveness"]
        with acl_on(farm) as acl:
            assert acl.rt.set_device(1) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)
            started = time.monotonic()
            assert model.submit(stream) == 0
            assert acl.rt.synchronize_stream_with_timeout(stream, 300) == 507046
            assert time.monotonic() - started > expiry_s  # longer than a lost card takes...
            assert card_states(farm) == ["ready", "ready"]  # ...but hung-but-alive is not lost
            code, _ = timed(lambda: acl.rt.synchronize_stream(stream))
            assert code == 507014  # the device watchdog (op_timeout_s) ended it
            assert 0.9 <= time.monotonic() - started < 5.0
            assert acl.rt.synchronize_stream(stream) == 0
            assert card_states(farm) == ["ready", "ready"]
            assert acl.rt.query_device_status(1) == (0, 0)
            assert model.submit(stream) == 0  # count = 1: the card works again
            assert acl.rt.synchronize_stream(stream) == 0
            model.check()
        events = poll_for(lambda: fault_events(farm, "hang"))
        assert [(e.card, e.code) for e in events] == [(1, 507014)]


# --------------------------------------------------------------------------------------------
# slow, corrupt, oom, drop


def test_slow_card_is_a_straggler(tmp_path, acl_on):
    rule = {"kind": "slow", "card": 1, "factor": 4.0}
    with fault_farm(tmp_path, rule, extra=["--time-scale", "1"]) as farm:
        with acl_on(farm) as acl:
            walls = {}
            for device_id in (0, 1):
                assert acl.rt.set_device(device_id) == 0
                stream, _ = acl.rt.create_stream()
                model = Model(acl, tmp_path, fixed_s=0.05)
                runs = []
                for _ in range(2):
                    assert model.submit(stream) == 0
                    code, wall_s = timed(lambda stream=stream: acl.rt.synchronize_stream(stream))
                    assert code == 0
                    runs.append(wall_s)
                model.check()
                walls[device_id] = min(runs)
            assert walls[1] >= 3 * walls[0], walls
        events = poll_for(lambda: len(fault_events(farm, "slow")) == 2 and fault_events(farm))
        assert {(e.card, e.detail["factor"]) for e in events} == {(1, 4.0)}


def test_corrupt_nan_and_stale_outputs(tmp_path, acl_on):
    # skip_sync "stale": the client does not poison outputs at enqueue, so "previous bytes"
    # are the ones the test wrote, not the poison
    config = write_config(tmp_path, "stale", ('skip_sync = "poison"', 'skip_sync = "stale"'))
    rules = (
        {"kind": "corrupt", "card": 0, "api": "execute", "probability": 1.0, "pattern": "nan"},
        {"kind": "corrupt", "card": 1, "api": "execute", "probability": 1.0, "pattern": "stale"},
    )
    with fault_farm(tmp_path, *rules, config=config) as farm:
        with acl_on(farm) as acl:
            for device_id in (0, 1):
                assert acl.rt.set_device(device_id) == 0
                stream, _ = acl.rt.create_stream()
                model = Model(acl, tmp_path)
                model.fill_output(7.0)
                assert model.submit(stream) == 0
                assert acl.rt.synchronize_stream(stream) == 0  # corruption is silent
                y = model.result()
                if device_id == 0:
                    assert np.isnan(y).any()
                else:
                    np.testing.assert_array_equal(y, np.full(N, 7.0, np.float32))
        events = poll_for(lambda: len(fault_events(farm, "corrupt")) == 2 and fault_events(farm))
        assert sorted((e.card, e.detail["pattern"], e.code) for e in events) == [
            (0, "nan", 0),
            (1, "stale", 0),
        ]


def test_oom_fails_one_malloc(tmp_path, acl_on):
    rule = {"kind": "oom", "card": 0, "api": "malloc", "count": 1}
    with fault_farm(tmp_path, rule) as farm:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            assert acl.rt.malloc(4096, 0) == (0, 207001)
            ptr, ret = acl.rt.malloc(4096, 0)
            assert ret == 0 and ptr != 0
            assert acl.rt.free(ptr) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)  # two more mallocs
            assert model.submit(stream) == 0
            assert acl.rt.synchronize_stream(stream) == 0
            model.check()
            assert acl.rt.query_device_status(0) == (0, 0)
            assert card_states(farm) == ["ready", "ready"]
        events = poll_for(lambda: fault_events(farm, "oom"))
        assert [(e.card, e.hook, e.code) for e in events] == [(0, "card.malloc", 207001)]


def test_dropped_task_never_completes(tmp_path, acl_on):
    from client import RUNTIME

    rule = {"kind": "drop", "card": 0, "api": "execute", "count": 1}
    with fault_farm(tmp_path, rule) as farm:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)
            assert model.submit(stream) == 0  # the broker drops this one
            assert acl.rt.synchronize_stream_with_timeout(stream, 200) == 507046
            assert acl.rt.synchronize_stream_with_timeout(stream, 50) == 507046  # for good
            ledger = query_status(farm.address)["ledger"]
            assert ledger["dropped"] == 1 and ledger["in_flight"] == 0
            other, _ = acl.rt.create_stream()  # the card itself is fine
            assert model.submit(other) == 0
            assert acl.rt.synchronize_stream(other) == 0
            model.check()
            ledger = query_status(farm.address)["ledger"]
            assert (ledger["submitted"], ledger["completed"], ledger["dropped"]) == (2, 1, 1)
            assert ledger["failed"] == {} and ledger["in_flight"] == 0
        assert RUNTIME.last_ledger["abandoned"] == 1
        assert RUNTIME.last_ledger["completed"] == 1 and RUNTIME.last_ledger["submitted"] == 2
        events = fault_events(farm, "drop")
        assert [(e.card, e.hook) for e in events] == [(0, "broker.route")]


def test_dropped_completion_leaves_the_outputs_written_but_unheard(tmp_path, acl_on):
    """The card runs the task and writes its outputs; the broker drops the completion on the
    way back, so the caller's timed sync fails with 507046 although the results are there."""
    rule = {"kind": "drop", "message": "completion", "card": 0, "count": 1}
    with fault_farm(tmp_path, rule) as farm:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)
            assert model.submit(stream) == 0  # runs; its completion is dropped
            assert acl.rt.synchronize_stream_with_timeout(stream, 200) == 507046
            model.check()  # the outputs were computed and written all the same
            ledger = query_status(farm.address)["ledger"]
            assert (ledger["submitted"], ledger["completed"], ledger["dropped"]) == (1, 0, 1)
            assert ledger["in_flight"] == 0
            other, _ = acl.rt.create_stream()  # only that one completion was lost
            assert model.submit(other) == 0
            assert acl.rt.synchronize_stream(other) == 0
            model.check()
        events = fault_events(farm, "drop")
        assert [(e.card, e.hook, e.detail["message"]) for e in events] == [
            (0, "broker.complete", "completion")
        ]


# --------------------------------------------------------------------------------------------
# runtime injection


def test_cli_inject_and_recover(tmp_path, acl_on):
    with fault_farm(tmp_path, cards=2) as farm:
        with acl_on(farm) as acl:
            assert acl.rt.set_device(0) == 0
            stream, _ = acl.rt.create_stream()
            model = Model(acl, tmp_path)
            assert model.submit(stream) == 0
            assert acl.rt.synchronize_stream(stream) == 0
            done = npufarm_cli(
                farm, "inject", "kind=error", "code=507011", "card=0", "api=execute", "count=1"
            )
            assert done.returncode == 0, done.stderr
            assert "injected" in done.stdout
            assert model.submit(stream) == 0
            assert acl.rt.synchronize_stream(stream) == 507011
            assert acl.rt.synchronize_stream(stream) == 0
            # a sticky rule: every execution on card 0 fails until recover
            done = npufarm_cli(farm, "inject", "kind=error", "card=0", "api=execute")
            assert done.returncode == 0, done.stderr
            for _ in range(2):
                assert model.submit(stream) == 0
                assert acl.rt.synchronize_stream(stream) == 507015
            plan = query_status(farm.address)["faults"]["plan"]
            assert [r["code"] for r in plan["fault"] if "code" in r] == [507011]
            assert len(plan["fault"]) == 2
            done = npufarm_cli(farm, "recover")
            assert done.returncode == 0, done.stderr
            assert query_status(farm.address)["faults"]["plan"]["fault"] == []
            model.set_input(5)
            assert model.submit(stream) == 0
            assert acl.rt.synchronize_stream(stream) == 0
            model.check()
            status = npufarm_cli(farm, "status")
            assert status.returncode == 0 and status.stdout.count("ready") == 2, status.stdout
        events = poll_for(lambda: len(fault_events(farm, "error")) == 3 and fault_events(farm))
        assert [e.code for e in events] == [507011, 507015, 507015]
