"""C and C++ programs (examples/c/) built the Ascend samples' way against the toolkit tree and
run unmodified on a farm, with ``set_env.sh`` sourced.

The farm adds a completion delay (so a read that skips the sync lands while the task runs) and
carries a hang fault on card 1's first execution, ended by a 1 s device watchdog; card 0 is
for everything else. The C++ sample's outputs are compared with numpy and with onnxruntime.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from examples.pyacl.tiny_cnn import CLASSES, IMAGE, build_cnn
from tests.conftest import npufarm_segments
from tests.system.cabi_fixtures import (
    EXAMPLES,
    build_sample,
    dynamic_section,
    run_sourced,
    session_tree,
)
from tests.system.conftest import CI_CONFIG, MODELS, start_farm, stop_and_check

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

SAMPLES = ("classify", "companions", "pitfalls")
HANG_DEVICE, DEVICE = 1, 0
BATCH = 4
HANG_PLAN = """\
seed = 0

[[fault]]
name = "c-hang"
kind = "hang"
card = 1
api = "execute"
count = 1
"""


@pytest.fixture(scope="module")
def sdk_root(tmp_path_factory) -> Path:
    return session_tree(tmp_path_factory)


@pytest.fixture(scope="module")
def c_farm(tmp_path_factory):
    work = tmp_path_factory.mktemp("cfarm")
    text = CI_CONFIG.read_text()
    text = text.replace("[cards]", "min_completion_delay_s = 0.2\n\n[cards]")
    text = text.replace('hbm_bytes = "256MiB" }', 'hbm_bytes = "256MiB", op_timeout_s = 1.0 }')
    (work / "farm.toml").write_text(text)
    (work / "hang.toml").write_text(HANG_PLAN)
    farm = start_farm(
        cards=2, config=work / "farm.toml", extra=["--faults", str(work / "hang.toml")]
    )
    yield farm
    stop_and_check(farm)


@pytest.fixture(scope="module")
def samples(sdk_root, tmp_path_factory) -> dict[str, Path]:
    """Every sample built with the recipe: name -> its ``main``."""
    work = tmp_path_factory.mktemp("samples")
    return {name: build_sample(sdk_root, name, work / name) for name in SAMPLES}


@pytest.fixture
def env(c_farm) -> dict[str, str]:
    return {**os.environ, "NPUFARM_ADDRESS": c_farm.address}


@pytest.fixture
def add_model(tmp_path) -> Path:
    path = tmp_path / "add.toml"
    shutil.copy(MODELS / "add.toml", path)
    return path


def not_emulated(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "is not emulated" in line]


def test_classify_sample_adds_as_numpy_does(sdk_root, samples, env, add_model, tmp_path):
    rng = np.random.default_rng(3)
    x, y = (rng.standard_normal((1, 1024)).astype(np.float32) for _ in range(2))
    x.tofile(tmp_path / "x.bin")
    y.tofile(tmp_path / "y.bin")
    argv = [samples["classify"], "-c", EXAMPLES / "classify" / "src" / "acl.json", "-d", DEVICE]
    argv += ["-m", add_model, "-o", tmp_path / "out", tmp_path / "x.bin", tmp_path / "y.bin"]
    done = run_sourced(sdk_root, argv, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run success" in done.stdout and "released" in done.stdout
    assert "output 0 (z) [1,1024]" in done.stdout
    assert not_emulated(done.stderr) == []  # the classic flow is emulated end to end
    assert np.array_equal(np.fromfile(tmp_path / "out_0.bin", np.float32), (x + y).ravel())
    # linked as the samples link: against the stub, no run path; set_env.sh finds the real one
    linked = dynamic_section(samples["classify"])
    assert "libascendcl.so" in linked["NEEDED"]
    assert "RUNPATH" not in linked and "RPATH" not in linked


def test_classify_sample_runs_an_atc_converted_cnn_as_onnxruntime_does(
    sdk_root, samples, env, tmp_path
):
    import onnxruntime  # optional heavy dependency (the onnx extra): only this test needs it

    onnx_path = build_cnn(tmp_path / "tiny_cnn.onnx")
    atc = [
        "atc",  # the tree's bin/atc, found on the PATH set_env.sh sets
        f"--model={onnx_path}",
        "--framework=5",
        f"--output={tmp_path / 'tiny_cnn'}",
        "--soc_version=Ascend310",
        f"--input_shape=x:{BATCH},{','.join(map(str, IMAGE))}",
    ]
    converted = run_sourced(sdk_root, atc, env, tmp_path)
    assert converted.returncode == 0, converted.stdout + converted.stderr
    images = np.random.default_rng(5).standard_normal((BATCH, *IMAGE)).astype(np.float32)
    images.tofile(tmp_path / "images.bin")
    argv = [samples["classify"], "-c", EXAMPLES / "classify" / "src" / "acl.json", "-d", DEVICE]
    argv += ["-m", tmp_path / "tiny_cnn.om", "-o", tmp_path / "out", tmp_path / "images.bin"]
    done = run_sourced(sdk_root, argv, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    got = np.fromfile(tmp_path / "out_0.bin", np.float32).reshape(BATCH, CLASSES)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": images})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_c99_program_with_the_companion_libraries_gets_200006_and_goes_on(
    sdk_root, samples, env, tmp_path
):
    done = run_sourced(sdk_root, [samples["companions"], DEVICE], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    results = dict(line.split(" -> ") for line in done.stdout.splitlines() if " -> " in line)
    assert results["acldvppCreateChannelDesc"] == "NULL"
    assert results["acldvppCreateChannel"] == "200006"
    assert results["aclblasHgemm"] == "200006"
    assert results["acldvppMalloc"] == results["acldvppFree"] == "0"  # device memory works
    assert results["round trip"] == "equal"
    assert done.stdout.splitlines()[-1] == "done"
    told = not_emulated(done.stderr)
    assert sorted(told) == sorted(
        [
            "npufarm: acldvppCreateChannelDesc is not emulated; returning NULL",
            "npufarm: acldvppCreateChannel is not emulated; returning 200006 "
            "(ACL_ERROR_FEATURE_UNSUPPORTED)",
            "npufarm: aclblasHgemm is not emulated; returning 200006 "
            "(ACL_ERROR_FEATURE_UNSUPPORTED)",
        ]
    )


def test_c_program_that_skips_the_sync_reads_poison(sdk_root, samples, env, add_model, tmp_path):
    argv = [samples["pitfalls"], "skip-sync", add_model, DEVICE]
    done = run_sourced(sdk_root, argv, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unsynced read: nan=1024 stale=0 of 1024" in done.stdout
    assert "synced read: correct=1024 of 1024" in done.stdout


def test_c_program_timed_sync_against_a_hang_gets_507046(
    sdk_root, samples, env, add_model, tmp_path
):
    argv = [samples["pitfalls"], "hang-timeout", add_model, HANG_DEVICE]
    done = run_sourced(sdk_root, argv, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "aclrtSynchronizeStreamWithTimeout(300 ms) -> 507046" in lines
    assert "aclrtSynchronizeStream -> 507014" in lines  # the device watchdog ended the task
    assert "aclrtSynchronizeStream again -> 0" in lines


def _watched_by(pid: int) -> list[int]:
    """Live processes started with ``--watch-parent PID`` (an embedded farm of ``pid``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--watch-parent" in argv and argv[argv.index(b"--watch-parent") + 1 :][:1] == [
                str(pid).encode()
            ]:
                found.append(int(entry.name))
    return found


def test_exit_without_finalize_leaves_no_pinned_segment(
    sdk_root, samples, env, add_model, tmp_path
):
    argv = [samples["pitfalls"], "no-finalize", add_model, DEVICE]
    done = run_sourced(sdk_root, argv, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leaving without aclFinalize" in done.stdout
    assert [s for s in npufarm_segments() if f"-h{done.pid}-" in s] == []


def test_exit_without_finalize_stops_the_embedded_farm(sdk_root, samples, add_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NPUFARM_ADDRESS"}
    env["NPUFARM_RUNTIME_DIR"] = str(tmp_path)  # no developer farm to find: aclInit embeds one
    env["NPUFARM_CONFIG"] = str(CI_CONFIG)
    argv = [samples["pitfalls"], "no-finalize", add_model, DEVICE]
    done = run_sourced(sdk_root, argv, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _watched_by(done.pid) == []  # stopped at exit, not left to notice its parent died
    assert [s for s in npufarm_segments() if f"embedded{done.pid}-" in s] == []
    assert [s for s in npufarm_segments() if f"-h{done.pid}-" in s] == []
