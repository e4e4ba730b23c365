"""AscendCL semantics seen from C: the programs of tests/c, built with gcc against the toolkit
tree (as the samples link: the stub, no run path) and run with ``set_env.sh`` sourced on one
3-card farm.

The farm models latency (``time_scale = 1``: a "slow" model takes 0.8 s, the others next to
nothing), fails every execution of the model named "boom" on card 1 (a fault plan) and allows
1 s of missed heartbeats, so a loaded box does not lose a card by itself. Card 2 is killed by
the card-loss test, the last one to use it.

A blocking host callback holds its stream's later tasks in the client until it returns (CANN:
they cannot start earlier), so it may read outputs a later task will overwrite: no poison, no
sanitizer finding.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import acl
from device.atc import convert
from examples.pyacl.tiny_cnn import CLASSES, IMAGE, build_cnn
from farm.admin import query_status
from tests.conftest import poll_for
from tests.system.cabi_fixtures import (
    EXAMPLES,
    TESTS_C,
    arrows,
    build_c_program,
    read_until,
    run_sourced,
    session_tree,
    start_sourced,
)
from tests.system.conftest import CI_CONFIG, MODELS, REPO, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

PROGRAMS = (
    "classify_sync",
    "exec_timeout",
    "device_threads",
    "report_callbacks",
    "exception_info",
    "card_loss",
    "misuse",
)
CARDS = 3
FAILING_DEVICE, LOST_DEVICE = 1, 2
SLOW_S, TIMEOUT_MS = 0.8, 200
FAULT_PLAN = """\
seed = 0

[[fault]]
name = "boom-fails-on-card-1"
kind = "error"
card = 1
model = "boom"
api = "execute"
code = 507015
"""
ACL_ERROR_INVALID_PARAM = 100000


@pytest.fixture(scope="module")
def sdk_root(tmp_path_factory) -> Path:
    return session_tree(tmp_path_factory)


@pytest.fixture(scope="module")
def programs(sdk_root, tmp_path_factory) -> dict[str, Path]:
    """Every program of tests/c, and the pitfalls sample: name -> executable."""
    out = tmp_path_factory.mktemp("cprograms")
    built = {
        name: build_c_program(sdk_root, TESTS_C / f"{name}.c", out / name) for name in PROGRAMS
    }
    pitfalls = EXAMPLES / "pitfalls" / "src" / "main.c"
    built["pitfalls"] = build_c_program(sdk_root, pitfalls, out / "pitfalls")
    return built


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is no longer in the file this test adapts"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """add.toml, and copies of it: slow.toml (0.8 s per run), boom.toml (fails on card 1);
    junk.om, a file that is not a model."""
    work = tmp_path_factory.mktemp("cmodels")
    add = (MODELS / "add.toml").read_text()
    (work / "add.toml").write_text(add)
    slow = _replace(add, 'name = "add"', 'name = "slow"')
    (work / "slow.toml").write_text(_replace(slow, "fixed_s = 0.0005", f"fixed_s = {SLOW_S}"))
    (work / "boom.toml").write_text(_replace(add, 'name = "add"', 'name = "boom"'))
    (work / "junk.om").write_bytes(b"not a model\n")
    return work


@pytest.fixture(scope="module")
def c_farm(tmp_path_factory):
    work = tmp_path_factory.mktemp("csemfarm")
    text = _replace(CI_CONFIG.read_text(), "time_scale = 0.0", "time_scale = 1.0")
    text = _replace(text, "heartbeat_liveness = 4 ", "heartbeat_liveness = 20 ")
    (work / "farm.toml").write_text(text)
    (work / "plan.toml").write_text(FAULT_PLAN)
    farm = start_farm(
        cards=CARDS, config=work / "farm.toml", extra=["--faults", str(work / "plan.toml")]
    )
    yield farm
    stop_and_check(farm)


@pytest.fixture
def env(c_farm) -> dict[str, str]:
    return {**os.environ, "NPUFARM_ADDRESS": c_farm.address}


def _run(sdk_root, argv, env, cwd, timeout_s: float = 60.0):
    done = run_sourced(sdk_root, argv, env, cwd, timeout_s)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


# --------------------------------------------------------------------------------------------
# 1. synchronous classification


def test_sync_classification_with_aclmdlExecute_matches_onnxruntime(
    sdk_root, programs, env, tmp_path
):
    import onnxruntime  # optional heavy dependency (the onnx extra): only this test needs it

    batch = 4
    onnx_path = build_cnn(tmp_path / "tiny_cnn.onnx")
    shape = f"x:{batch},{','.join(map(str, IMAGE))}"
    om = convert(str(onnx_path), str(tmp_path / "cnn"), soc_version="Ascend310", input_shape=shape)
    images = np.random.default_rng(11).standard_normal((batch, *IMAGE)).astype(np.float32)
    images.tofile(tmp_path / "images.bin")
    argv = [programs["classify_sync"], om, 0, tmp_path / "out", tmp_path / "images.bin"]
    done = _run(sdk_root, argv, env, tmp_path)
    assert f"input 0 (x) [{batch},{','.join(map(str, IMAGE))}]" in done.stdout
    assert "aclmdlExecute -> 0" in done.stdout
    got = np.fromfile(tmp_path / "out_0.bin", np.float32).reshape(batch, CLASSES)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": images})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    printed = [int(m) for m in re.findall(r"^row \d+: class (\d+)", done.stdout, re.M)]
    assert printed == list(want.argmax(axis=1))


# --------------------------------------------------------------------------------------------
# 2. aclmdlExecuteAsyncV2 with an exec-config stream-sync timeout


def test_execute_async_v2_timeout_gives_507046_then_the_task_completes(
    sdk_root, programs, env, models, tmp_path
):
    argv = [programs["exec_timeout"], models / "slow.toml", 0, TIMEOUT_MS]
    done = _run(sdk_root, argv, env, tmp_path)
    timed = re.search(rf"timeout {TIMEOUT_MS} ms\) -> (\d+) after (\d+) ms", done.stdout)
    waited = re.search(r"again -> (\d+) after (\d+) ms", done.stdout)
    assert timed and waited, done.stdout
    assert int(timed[1]) == 507046  # ACL_ERROR_RT_STREAM_SYNC_TIMEOUT
    assert TIMEOUT_MS * 0.9 <= int(timed[2]) < SLOW_S * 1000  # gave up before the task ended
    assert int(waited[1]) == 0 and int(waited[2]) >= SLOW_S * 1000 * 0.9  # waited it out
    assert "outputs: correct=1024 of 1024" in done.stdout


# --------------------------------------------------------------------------------------------
# 3. one thread per device


def test_one_pthread_per_device_each_with_its_own_context(
    sdk_root, programs, env, models, tmp_path
):
    done = _run(sdk_root, [programs["device_threads"], models / "add.toml", 5], env, tmp_path)
    assert f"devices: {CARDS}" in done.stdout
    for device in range(CARDS):
        want = f"device {device}: current device {device}, code 0, correct=5120 of 5120"
        assert want in done.stdout, done.stdout
    assert done.stdout.splitlines()[-1] == "done"


# --------------------------------------------------------------------------------------------
# 4. host callbacks on a subscribed pthread


def test_callbacks_run_on_the_subscribed_pthread_and_copy_inside(
    sdk_root, programs, env, models, tmp_path
):
    argv = [programs["report_callbacks"], models / "add.toml", 0, 3]
    done = _run(sdk_root, argv, env, tmp_path)
    assert "aclrtSubscribeReport again -> 100033" in done.stdout  # one thread per stream
    for run in range(3):
        want = (
            f"callback {run}: done 1, on the report thread yes, aclrtMemcpy -> 0, "
            "correct=1024 of 1024"
        )
        assert want in done.stdout, done.stdout


def test_a_blocking_callback_reads_its_output_before_held_tasks_overwrite_it(
    sdk_root, programs, env, models, tmp_path
):
    argv = [programs["report_callbacks"], models / "add.toml", 0, 3, "shared"]
    done = run_sourced(sdk_root, argv, {**env, "NPUFARM_SANITIZER": "warn"}, tmp_path)
    assert "read_before_sync" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------------------------
# 5. an exception-info callback on an injected task error


def test_exception_info_callback_on_an_injected_task_error(
    sdk_root, programs, env, models, tmp_path
):
    argv = [programs["exception_info"], models / "boom.toml", FAILING_DEVICE]
    done = _run(sdk_root, argv, env, tmp_path)
    lines = done.stdout.splitlines()
    assert "aclrtSynchronizeStream -> 507015" in lines
    assert "callback calls: 1" in lines
    assert f"device id: {FAILING_DEVICE}" in lines
    assert "error code: 507015" in lines
    for check in ("stream id matches", "task id valid", "thread id is the submitter's"):
        assert f"{check}: yes" in lines, done.stdout
    assert "aclrtGetDeviceIdFromExceptionInfo(NULL) -> 4294967295" in lines


# --------------------------------------------------------------------------------------------
# 6. a killed card: 507010 until reset


def test_killed_card_gives_507010_until_reset_device(
    sdk_root, programs, env, models, c_farm, tmp_path
):
    argv = [programs["card_loss"], models / "add.toml", LOST_DEVICE]
    program = start_sourced(sdk_root, argv, env, tmp_path)
    try:
        assert read_until(program, "READY")[0] == "before: correct=1024 of 1024"
        card = query_status(c_farm.address)["cards"][LOST_DEVICE]
        os.kill(card["pid"], signal.SIGKILL)
        poll_for(
            lambda: query_status(c_farm.address)["cards"][LOST_DEVICE]["state"] == "lost", 10.0
        )
        out, err = program.communicate("go\n", timeout=60)
    finally:
        if program.poll() is None:
            program.kill()
            program.communicate()
    assert program.returncode == 0, out + err
    lines = out.splitlines()
    lost = "aclmdlExecuteAsync -> 507010, aclrtSynchronizeStream -> 507010, "
    lost += "aclrtMalloc -> 507010, aclrtMemcpy -> 507010"
    assert f"first: {lost}" in lines and f"again: {lost}" in lines, out
    assert lines.index("aclrtQueryDeviceStatus: abnormal") < lines.index(f"first: {lost}")
    assert "aclrtResetDevice -> 0" in lines and "aclrtSetDevice -> 0" in lines
    assert lines[lines.index("aclrtSetDevice -> 0") + 1] == "aclrtQueryDeviceStatus: normal"
    assert "after reset: correct=1024 of 1024" in lines
    card = query_status(c_farm.address)["cards"][LOST_DEVICE]
    assert (card["state"], card["epoch"]) == ("ready", 2)  # the set_device restarted it


# --------------------------------------------------------------------------------------------
# 7. misuse codes: C and the Python facade agree


def _facade_misuse(acl, add_model: Path, junk: Path) -> dict[str, int]:
    """The mistakes of tests/c/misuse.c, in its order, through ``import acl``."""
    codes: dict[str, int] = {}
    host = np.zeros(64, np.uint8)
    assert acl.init() == 0
    _facade_before_device(acl, codes)
    assert acl.rt.set_device(0) == 0
    context, ret = acl.rt.get_context()
    stream, ret2 = acl.rt.create_stream()
    assert ret == ret2 == 0
    dev = _facade_memory(acl, codes, acl.util.numpy_to_ptr(host))
    _facade_streams(acl, codes, context, stream)
    _facade_models(acl, codes, stream, add_model, junk)
    assert acl.rt.free(dev) == 0
    assert acl.rt.destroy_stream(stream) == 0
    assert acl.rt.reset_device(0) == 0
    codes["finalize"] = acl.finalize()
    codes["finalize twice"] = acl.finalize()
    codes["set device after finalize"] = acl.rt.set_device(0)
    return codes


def _facade_before_device(acl, codes: dict[str, int]) -> None:
    codes["init twice"] = acl.init()
    codes["create stream without a context"] = acl.rt.create_stream()[1]
    codes["get device without a context"] = acl.rt.get_device()[1]
    codes["malloc without a context"] = acl.rt.malloc(64, 0)[1]
    codes["set device 99"] = acl.rt.set_device(99)
    codes["set device -1"] = acl.rt.set_device(-1)
    codes["reset device 99"] = acl.rt.reset_device(99)
    codes["create context on device 99"] = acl.rt.create_context(99)[1]


def _facade_memory(acl, codes: dict[str, int], host: int) -> int:
    h2d, unknown = 1, 0x7F0012345000
    codes["malloc size 0"] = acl.rt.malloc(0, 0)[1]
    dev, freed = acl.rt.malloc(64, 0)[0], acl.rt.malloc(64, 0)[0]
    codes["free"] = acl.rt.free(freed)
    codes["free twice"] = acl.rt.free(freed)
    codes["free NULL"] = acl.rt.free(0)
    codes["free unknown pointer"] = acl.rt.free(unknown)
    codes["free host unknown pointer"] = acl.rt.free_host(unknown)
    codes["memcpy kind 99"] = acl.rt.memcpy(dev, 64, host, 64, 99)
    codes["memcpy count over destMax"] = acl.rt.memcpy(dev, 32, host, 64, h2d)
    codes["memcpy NULL dst"] = acl.rt.memcpy(0, 64, host, 64, h2d)
    codes["memcpy NULL src"] = acl.rt.memcpy(dev, 64, 0, 64, h2d)
    codes["memcpy to freed device memory"] = acl.rt.memcpy(freed, 64, host, 64, h2d)
    codes["memcpy count 0"] = acl.rt.memcpy(dev, 64, host, 0, h2d)
    codes["memset count over max"] = acl.rt.memset(dev, 32, 0, 64)
    codes["memset NULL"] = acl.rt.memset(0, 64, 0, 64)
    return dev


def _facade_streams(acl, codes: dict[str, int], context: int, stream: int) -> None:
    gone_stream, _ = acl.rt.create_stream()
    assert acl.rt.destroy_stream(gone_stream) == 0
    codes["sync destroyed stream"] = acl.rt.synchronize_stream(gone_stream)
    codes["destroy stream twice"] = acl.rt.destroy_stream(gone_stream)
    codes["sync stream timeout 0"] = acl.rt.synchronize_stream_with_timeout(stream, 0)
    codes["sync stream timeout -2"] = acl.rt.synchronize_stream_with_timeout(stream, -2)
    codes["sync device timeout 0"] = acl.rt.synchronize_device_with_timeout(0)
    gone_event, _ = acl.rt.create_event()
    assert acl.rt.destroy_event(gone_event) == 0
    codes["record destroyed event"] = acl.rt.record_event(gone_event, stream)
    codes["destroy event twice"] = acl.rt.destroy_event(gone_event)
    event, _ = acl.rt.create_event()
    assert acl.rt.record_event(event, stream) == 0
    codes["sync event timeout 0"] = acl.rt.synchronize_event_with_timeout(event, 0)
    assert acl.rt.synchronize_event(event) == 0 and acl.rt.destroy_event(event) == 0
    gone_context, _ = acl.rt.create_context(0)
    assert acl.rt.destroy_context(gone_context) == 0
    codes["set destroyed context"] = acl.rt.set_context(gone_context)
    codes["destroy context twice"] = acl.rt.destroy_context(gone_context)
    assert acl.rt.set_context(context) == 0
    codes["process report without a subscription"] = acl.rt.process_report(10)
    never_called = lambda data: None  # noqa: E731 - a callback that must never run
    codes["launch callback without a report thread"] = acl.rt.launch_callback(
        never_called, 0, 0, stream
    )
    codes["unsubscribe without a subscription"] = acl.rt.unsubscribe_report(1234, stream)


def _facade_models(acl, codes: dict[str, int], stream: int, add_model: Path, junk: Path) -> None:
    zeros = np.zeros(16, np.float32)
    codes["load missing file"] = acl.mdl.load_from_file("/nonexistent/model.om")[1]
    codes["load a file that is not a model"] = acl.mdl.load_from_file(str(junk))[1]
    codes["load from NULL memory"] = acl.mdl.load_from_mem(0, 0)[1]
    codes["load from 64 bytes of zeros"] = acl.mdl.load_from_mem(
        acl.util.numpy_to_ptr(zeros), zeros.nbytes
    )[1]
    codes["unload unknown model"] = acl.mdl.unload(12345)
    desc = acl.mdl.create_desc()
    codes["get desc of unknown model"] = acl.mdl.get_desc(desc, 12345)
    assert acl.mdl.destroy_desc(desc) == 0
    model, ret = acl.mdl.load_from_file(str(add_model))
    assert ret == 0
    pointers = [acl.rt.malloc(4096, 0)[0] for _ in range(3)]
    buffers = [acl.create_data_buffer(ptr, 4096) for ptr in pointers]
    inputs, outputs, short = (acl.mdl.create_dataset() for _ in range(3))
    for dataset, buffer in ((inputs, 0), (inputs, 1), (outputs, 2), (short, 0)):
        assert acl.mdl.add_dataset_buffer(dataset, buffers[buffer])[1] == 0
    codes["execute unknown model"] = acl.mdl.execute(12345, inputs, outputs)
    codes["execute async unknown model"] = acl.mdl.execute_async(12345, inputs, outputs, stream)
    codes["execute NULL inputs"] = acl.mdl.execute(model, 0, outputs)
    codes["execute with too few inputs"] = acl.mdl.execute(model, short, outputs)
    config = acl.mdl.create_exec_config_handle()
    codes["exec config attribute 99"] = acl.mdl.set_exec_config_opt(config, 99, 0)
    codes["exec config stream timeout -2"] = acl.mdl.set_exec_config_opt(config, 0, -2)
    codes["execute async v2 NULL handle"] = acl.mdl.execute_async_v2(
        model, inputs, outputs, stream, 0
    )
    assert acl.mdl.destroy_exec_config_handle(config) == 0
    codes["destroy NULL dataset"] = acl.mdl.destroy_dataset(0)
    codes["destroy NULL data buffer"] = acl.destroy_data_buffer(0)
    codes["add buffer to NULL dataset"] = acl.mdl.add_dataset_buffer(0, buffers[0])[1]
    assert acl.rt.synchronize_stream(stream) == 0
    for dataset in (inputs, outputs, short):
        assert acl.mdl.destroy_dataset(dataset) == 0
    for buffer, ptr in zip(buffers, pointers):
        assert acl.destroy_data_buffer(buffer) == 0 and acl.rt.free(ptr) == 0
    assert acl.mdl.unload(model) == 0


def test_misuse_codes_from_c_equal_the_python_facades(
    sdk_root, programs, env, models, c_farm, tmp_path, monkeypatch
):
    argv = [programs["misuse"], models / "add.toml", models / "junk.om"]
    said = arrows(_run(sdk_root, argv, env, tmp_path).stdout)
    c_codes = {name: int(code) for name, code in said.items() if not name.startswith("c-only")}
    c_only = {name: int(code) for name, code in said.items() if name.startswith("c-only")}
    monkeypatch.setenv("NPUFARM_ADDRESS", c_farm.address)
    try:
        python_codes = _facade_misuse(acl, models / "add.toml", models / "junk.om")
    finally:
        acl.finalize()  # 100037 when it got to the end: the session is never left open
    assert c_codes == python_codes
    assert len(c_codes) >= 50 and len(c_only) >= 6
    assert c_only == dict.fromkeys(c_only, ACL_ERROR_INVALID_PARAM)  # a NULL out-pointer
    anchors = {  # the codes themselves (acl-reference.md), so both cannot drift together
        "init twice": 100002,
        "set device 99": 107001,
        "create stream without a context": 107002,
        "free unknown pointer": 107000,
        "memcpy kind 99": 100000,
        "sync destroyed stream": 107000,
        "sync stream timeout 0": 107000,
        "process report without a subscription": 107012,
        "launch callback without a report thread": 107015,
        "load missing file": 145002,
        "execute unknown model": 145003,
        "finalize twice": 100037,
    }
    assert {name: c_codes[name] for name in anchors} == anchors


# --------------------------------------------------------------------------------------------
# 9. npufarm run -- ./program


def test_npufarm_run_shows_the_ledger_and_a_c_programs_skipped_sync(
    sdk_root, programs, env, models, c_farm, tmp_path
):
    summary = tmp_path / "summary.json"
    run = [sys.executable, "-m", "npufarm", "run", "--address", c_farm.address]
    run += ["--sanitizer", "warn", "--json", summary, "--"]
    run += [programs["pitfalls"], "skip-sync", models / "add.toml", 0]
    done = run_sourced(sdk_root, run, env, REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "synced read: correct=1024 of 1024" in done.stdout
    assert re.search(r"all cards\W+1\W+1\W+0\W+0\W+0", done.stdout), done.stdout
    assert "sanitizer (warn): 1 finding(s): read_before_sync×1" in done.stdout
    # the site is the C call, not a line of the library's Python half
    assert re.search(
        r"read_before_sync: acl\.rt\.memcpy \(device 0, .*\) at <C> aclrtMemcpy$", done.stdout, re.M
    ), done.stdout
    data = json.loads(summary.read_text())
    assert data["exit_code"] == 0
    assert data["farm"]["ledger"]["submitted"] == data["farm"]["ledger"]["completed"] == 1
    (finding,) = data["sanitizer"]["findings"]
    assert finding["kind"] == "read_before_sync" and finding["device"] == 0
    assert finding["where"] == "<C> aclrtMemcpy"
    assert finding["stack"] == ["<C> aclrtMemcpy"]
    assert finding["submitted"] == ["<C> aclmdlExecuteAsync"]
