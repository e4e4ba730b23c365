"""``npufarm run -- python prog.py``: an unmodified pyACL program against an embedded (or a
running) farm, then the farm's ledger and the program's sanitizer findings."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.system.conftest import CI_CONFIG, MODELS, REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(30)]

# A plain pyACL program: MODE ok | nosync (no synchronize_stream before the D2H copy) | exit7 |
# errors (every synchronize must report a task error) | wait (prints READY, then sleeps).
PROG = """
import sys, time
import numpy as np
import acl

MODE, N_EXEC, MODEL = sys.argv[1], int(sys.argv[2]), sys.argv[3]
H2D, D2H, NBYTES = 1, 2, 1024 * 4

assert acl.init() == 0
assert acl.rt.set_device(0) == 0
context, _ = acl.rt.create_context(0)
stream, _ = acl.rt.create_stream()
model_id, ret = acl.mdl.load_from_file(MODEL)
assert ret == 0, ret
pointers = [acl.rt.malloc(NBYTES, 0)[0] for _ in range(3)]
buffers = [acl.create_data_buffer(ptr, NBYTES) for ptr in pointers]
inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
acl.mdl.add_dataset_buffer(inputs, buffers[0])
acl.mdl.add_dataset_buffer(inputs, buffers[1])
acl.mdl.add_dataset_buffer(outputs, buffers[2])
rng = np.random.default_rng(0)
matched, codes = 0, []
for _ in range(N_EXEC):
    x, y = (rng.standard_normal((1, 1024)).astype(np.float32) for _ in range(2))
    z = np.empty((1, 1024), np.float32)
    acl.rt.memcpy(pointers[0], NBYTES, acl.util.numpy_to_ptr(x), NBYTES, H2D)
    acl.rt.memcpy(pointers[1], NBYTES, acl.util.numpy_to_ptr(y), NBYTES, H2D)
    assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0
    if MODE != "nosync":
        codes.append(acl.rt.synchronize_stream(stream))
    acl.rt.memcpy(acl.util.numpy_to_ptr(z), NBYTES, pointers[2], NBYTES, D2H)  # READ-OUTPUT
    matched += bool(np.allclose(z, x + y))
if MODE == "wait":
    print("READY", flush=True)
    time.sleep(60)
acl.rt.synchronize_stream(stream)
for buffer in buffers:
    acl.destroy_data_buffer(buffer)
acl.mdl.destroy_dataset(inputs)
acl.mdl.destroy_dataset(outputs)
acl.mdl.unload(model_id)
for ptr in pointers:
    acl.rt.free(ptr)
acl.rt.destroy_stream(stream)
acl.rt.destroy_context(context)
acl.rt.reset_device(0)
assert acl.finalize() == 0
print(f"prog: {matched}/{N_EXEC} outputs match, sync codes {codes}", flush=True)
if MODE == "ok":
    sys.exit(0 if matched == N_EXEC else 1)
if MODE == "exit7":
    sys.exit(7)
if MODE == "errors":
    sys.exit(0 if codes and all(code == 507015 for code in codes) else 1)
"""

ERROR_PLAN = """
seed = 1
[[fault]]
name = "every-execution-fails"
kind = "error"
api = "execute"
code = 507015
"""


@pytest.fixture
def prog(tmp_path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(PROG)
    return path


@pytest.fixture
def short_tmp():
    """TMPDIR for ``npufarm run``: short (ipc paths) and checked empty afterwards (temp files)."""
    path = Path(tempfile.mkdtemp(prefix="nr", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(tmp: Path, *options: str, command: list[str], **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "npufarm", "run", *options, "--", *command]
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, start_new_session=True, **kwargs)


def _finish(run: subprocess.Popen, timeout_s: float = 20.0) -> tuple[str, str]:
    """Output of a finished ``npufarm run``; on a hang SIGTERM (which stops its farm), then kill
    its whole process group (its program too)."""
    try:
        return run.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        run.terminate()
        try:
            run.communicate(timeout=10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
        raise


def _run(tmp: Path, *options: str, command: list[str]) -> subprocess.CompletedProcess:
    run = _start(tmp, *options, command=command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = _finish(run)
    assert not list(tmp.iterdir()), f"npufarm run left files behind: {list(tmp.iterdir())}"
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


def _prog_cmd(prog: Path, mode: str, n: int = 3) -> list[str]:
    return [sys.executable, str(prog), mode, str(n), str(MODELS / "add.toml")]


def _ledger_row(stdout: str) -> tuple[int, ...]:
    """(submitted, completed, failed, dropped, in flight) of the printed table's total row."""
    match = re.search(r"all cards\W+(\d+)\W+(\d+)\W+(\d+)\W+(\d+)\W+(\d+)", stdout)
    assert match, stdout
    return tuple(int(n) for n in match.groups())


def _line_of(path: Path, marker: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if marker in line)


@pytest.mark.parametrize("sanitizer", [None, "warn"])
def test_program_runs_and_the_ledger_is_printed(prog, short_tmp, tmp_path, sanitizer):
    summary = tmp_path / "summary.json"
    options = ["--config", str(CI_CONFIG), "--json", str(summary)]
    options += ["--sanitizer", sanitizer] if sanitizer else []
    result = _run(short_tmp, *options, command=_prog_cmd(prog, "ok", 3))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prog: 3/3 outputs match" in result.stdout
    assert _ledger_row(result.stdout) == (3, 3, 0, 0, 0)
    expected = "sanitizer (warn): no findings" if sanitizer else "sanitizer off"
    assert expected in result.stdout
    data = json.loads(summary.read_text())
    assert data["exit_code"] == 0
    assert data["farm"]["ledger"] == {
        "submitted": 3,
        "completed": 3,
        "dropped": 0,
        "malformed": 0,
        "failed": {},
        "in_flight": 0,
    }
    cards = {card["device_id"]: card for card in data["farm"]["cards"]}
    assert (cards[0]["submitted"], cards[0]["done"], cards[1]["submitted"]) == (3, 3, 0)


def test_skipped_sync_is_named_with_the_source_line(prog, short_tmp):
    options = ["--config", str(CI_CONFIG), "--sanitizer", "warn"]
    result = _run(short_tmp, *options, command=_prog_cmd(prog, "nosync", 2))
    assert result.returncode == 0, result.stdout + result.stderr
    line = _line_of(prog, "# READ-OUTPUT")
    assert re.search(r"sanitizer \(warn\): \d+ finding\(s\): .*read_before_sync×2", result.stdout)
    expected = re.compile(
        rf"read_before_sync: acl\.rt\.memcpy \(device 0, stream \d+, task \d+\) at "
        rf"{re.escape(str(prog))}:{line}$",
        re.M,
    )
    assert len(expected.findall(result.stdout)) == 2, result.stdout
    assert _ledger_row(result.stdout)[:2] == (2, 2)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("exit7", 7),
        ([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], 137),
    ],
)
def test_the_program_exit_status_is_propagated(prog, short_tmp, command, expected):
    if command == "exit7":
        command = _prog_cmd(prog, "exit7", 1)
    result = _run(short_tmp, "--config", str(CI_CONFIG), command=command)
    assert result.returncode == expected, result.stdout + result.stderr
    assert f"program exit status: {expected}" in result.stdout
    if expected == 137:  # never reached acl.finalize(): no sanitizer report, no tasks
        assert _ledger_row(result.stdout) == (0, 0, 0, 0, 0)


def test_sigterm_is_forwarded_to_the_program(prog, short_tmp):
    options = ["--config", str(CI_CONFIG), "--sanitizer", "warn"]
    run = _start(short_tmp, *options, command=_prog_cmd(prog, "wait", 1), stdout=subprocess.PIPE)
    assert run.stdout.readline().strip() == "READY"
    run.send_signal(signal.SIGTERM)
    stdout, _ = _finish(run)
    assert run.returncode == 128 + signal.SIGTERM, stdout
    assert _ledger_row(stdout) == (1, 1, 0, 0, 0)
    assert "sanitizer no report" in stdout
    assert not list(short_tmp.iterdir())


def test_fault_plan_failures_are_listed_by_code(prog, short_tmp, tmp_path):
    plan = tmp_path / "errors.toml"
    plan.write_text(ERROR_PLAN)
    summary = tmp_path / "summary.json"
    options = ["--config", str(CI_CONFIG), "--faults", str(plan), "--json", str(summary)]
    result = _run(short_tmp, *options, command=_prog_cmd(prog, "errors", 3))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _ledger_row(result.stdout) == (3, 0, 3, 0, 0)
    assert "failed by ACL code" in result.stdout
    assert re.search(r"507015\W+ACL_ERROR_RT_AICORE_EXCEPTION\W+3", result.stdout)
    assert "fault log: 3 events (error×3)" in result.stdout
    data = json.loads(summary.read_text())
    assert data["farm"]["ledger"]["failed"] == {"507015": 3}
    assert data["farm"]["faults"]["events"] == 3


def test_attach_to_a_running_farm_shows_only_this_program(farm, prog, short_tmp):
    options = ["--address", farm.address]
    for _ in range(2):  # the second run's ledger does not include the first run's tasks
        result = _run(short_tmp, *options, command=_prog_cmd(prog, "ok", 2))
        assert result.returncode == 0, result.stdout + result.stderr
        assert _ledger_row(result.stdout) == (2, 2, 0, 0, 0)
    assert farm.process.poll() is None  # left running
    refused = _run(short_tmp, *options, "--faults", "x.toml", command=["true"])
    assert refused.returncode == 2 and "only for an embedded farm" in refused.stderr


def test_usage_errors_exit_2(short_tmp, tmp_path):
    missing = _run(short_tmp, "--config", str(CI_CONFIG), command=[])
    assert missing.returncode == 2 and "no command after '--'" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[farm]\ntime_scale = -1\n")
    result = _run(short_tmp, "--config", str(bad), command=["true"])
    assert result.returncode == 2 and "time_scale" in result.stderr, result.stderr
    plan = _run(short_tmp, "--config", str(CI_CONFIG), "--faults", "nope.toml", command=["true"])
    assert plan.returncode == 2 and "fault plan not found" in plan.stderr
    unknown = _run(short_tmp, "--config", str(CI_CONFIG), command=["no-such-program-xyz"])
    assert unknown.returncode == 127 and "command not found" in unknown.stderr
