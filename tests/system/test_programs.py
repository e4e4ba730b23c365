"""Unmodified pyACL programs (examples/pyacl/) on the farm with a real ONNX model.

The model is a small CNN built with the ``onnx`` helper API, converted by the real CLI
(``npufarm atc``), loaded by the programs from the ``.om`` file (or from memory), executed by
onnxruntime inside the card processes on shared-memory tensors, and compared with onnxruntime run
directly on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from examples.pyacl.tiny_cnn import CLASSES, IMAGE, build_cnn
from tests.system.conftest import CI_CONFIG, REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

PROGRAMS = REPO / "examples" / "pyacl"
BATCH, STEPS = 4, 6
TOLERANCE = 1e-6  # the card runs onnxruntime with one thread, the host with its default


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """(om path, images path, host reference [STEPS, BATCH, CLASSES], workdir)."""
    import onnxruntime

    work = tmp_path_factory.mktemp("cnn")
    onnx_path = build_cnn(work / "tiny_cnn.onnx")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "npufarm",
            "atc",
            f"--model={onnx_path}",
            "--framework=5",
            f"--output={work / 'out' / 'tiny_cnn'}",
            "--soc_version=Ascend310",
            f"--input_shape=x:{BATCH},{','.join(map(str, IMAGE))}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ATC run success" in done.stdout
    images = np.random.default_rng(11).standard_normal((STEPS, BATCH, *IMAGE)).astype(np.float32)
    np.save(work / "images.npy", images)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = np.stack([session.run(None, {"x": batch})[0] for batch in images])
    assert reference.shape == (STEPS, BATCH, CLASSES)
    return work / "out" / "tiny_cnn.om", work / "images.npy", reference, work


def run_program(name, *args, address=None, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
    if address is not None:
        env["NPUFARM_ADDRESS"] = address
    env.update(env_extra or {})
    done = subprocess.run(
        [sys.executable, str(PROGRAMS / name), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def assert_matches(out_path, reference):
    result = np.load(out_path)
    assert result.shape == reference.shape and result.dtype == np.float32
    assert np.abs(result - reference).max() <= TOLERANCE
    assert (result.argmax(-1) == reference.argmax(-1)).all()
    assert not np.allclose(result, result[0])  # different images, different answers


def test_sync_program_matches_onnxruntime_on_the_host(farm, cnn):
    om, images, reference, work = cnn
    stdout = run_program(
        "classify_sync.py", om, images, work / "sync.npy", 1, address=farm.address, cwd=work
    )
    assert_matches(work / "sync.npy", reference)
    described = stdout.splitlines()[0]
    # the model description reports the tensors exactly as the converted model defines them
    facts = (
        "'input_name': 'x'",
        f"'input_dims': [{BATCH}, 3, 16, 16]",
        "'input_dtype': 0",
        "'input_format': 0",
        "'output_name': 'prob'",
        f"'output_dims': [{BATCH}, 10]",
    )
    for fact in facts:
        assert fact in described, described


def test_sync_program_loading_from_memory(farm, cnn):
    om, images, reference, work = cnn
    run_program(
        "classify_sync.py",
        om,
        images,
        work / "mem.npy",
        0,
        "--from-mem",
        address=farm.address,
        cwd=work,
    )
    assert_matches(work / "mem.npy", reference)


def test_async_program_with_callbacks_events_and_three_streams(farm, cnn):
    om, images, reference, work = cnn
    stdout = run_program(
        "classify_async.py", om, images, work / "async.npy", 3, address=farm.address, cwd=work
    )
    assert_matches(work / "async.npy", reference)
    assert f"{STEPS} requests on 3 streams; end event status 1" in stdout


def test_multicard_program_one_thread_per_device(farm, cnn):
    om, images, reference, work = cnn
    stdout = run_program(
        "classify_multicard.py", om, images, work / "multi.npy", address=farm.address, cwd=work
    )
    assert_matches(work / "multi.npy", reference)
    assert "on devices [0, 1]" in stdout


def test_plain_python_prog_starts_an_embedded_farm(cnn):
    """``python prog.py`` with nothing set: acl.init() starts a farm, finalize stops it."""
    om, images, reference, work = cnn
    run_program(
        "classify_sync.py",
        om,
        images,
        work / "embedded.npy",
        env_extra={"NPUFARM_CONFIG": str(CI_CONFIG)},
        cwd=work,
    )
    assert_matches(work / "embedded.npy", reference)


def test_atc_mode_1_dumps_the_metadata(cnn):
    om, _, _, work = cnn
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "npufarm",
            "atc",
            "--mode=1",
            f"--om={om}",
            f"--json={work / 'meta.json'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((work / "meta.json").read_text())
    assert meta["soc_version"] == "Ascend310" and meta["framework"] == 5
    assert meta["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": [BATCH, 3, 16, 16], "format": 0}
    ]
    assert meta["outputs"] == [
        {"name": "prob", "dtype": "float32", "shape": [BATCH, 10], "format": 2}
    ]


def test_bad_models_get_145006_and_the_card_lives_on(farm, cnn, acl_on, tmp_path):
    """A container whose model onnxruntime rejects fails on the card with 145006 (the card stays
    up); a real Ascend .om and a raw ONNX file fail in the client, naming ``npufarm atc``."""
    from device.om import pack_om

    om, _, _, work = cnn
    broken = tmp_path / "broken.om"
    meta = {
        "name": "broken",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}],
    }
    broken.write_bytes(pack_om(meta, b"\x08\x07 not a graph"))
    real = tmp_path / "real.om"
    real.write_bytes(b"IMOD" + bytes(512))
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        assert acl.mdl.load_from_file(str(broken)) == (0, 145006)
        assert "onnxruntime cannot load the model" in acl.get_recent_err_msg()
        assert acl.mdl.load_from_file(str(real)) == (0, 145006)
        assert "npufarm atc" in acl.get_recent_err_msg()
        assert acl.mdl.load_from_file(str(work / "tiny_cnn.onnx")) == (0, 145006)
        assert "npufarm atc" in acl.get_recent_err_msg()
        model_id, ret = acl.mdl.load_from_file(str(om))  # the same card still loads models
        assert ret == 0 and acl.mdl.unload(model_id) == 0
        assert acl.rt.reset_device(0) == 0


def test_a_long_model_build_never_silences_the_card(farm, acl_on, tmp_path):
    """onnxruntime needs about a second to build a graph of 30,000 nodes, five times the ci
    farm's 0.2 s heartbeat expiry; the card builds it off its loop, keeps beating, and answers
    the load when the build is done. Its other card, and this one, stay at epoch 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from device.atc import convert
    from farm.admin import query_status

    steps, width = 30_000, 16
    nodes = [
        helper.make_node("Add", ["x" if i == 0 else f"a{i - 1}", "c"], [f"a{i}"])
        for i in range(steps)
    ]
    nodes.append(helper.make_node("Identity", [f"a{steps - 1}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "long_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [numpy_helper.from_array(np.full((1, width), 0.001, np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "chain.onnx"))
    om = convert(str(tmp_path / "chain.onnx"), str(tmp_path / "chain"), soc_version="Ascend910B")
    x = np.arange(width, dtype=np.float32)[None, :]
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        model_id, ret = acl.mdl.load_from_file(str(om))
        assert ret == 0, acl.get_recent_err_msg()
        assert acl.rt.query_device_status(0) == (0, 0)
        n = x.nbytes
        d_in, _ = acl.rt.malloc(n, 0)
        d_out, _ = acl.rt.malloc(n, 0)
        inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, n))
        acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(d_out, n))
        assert acl.rt.memcpy(d_in, n, acl.util.numpy_to_ptr(x), n, 1) == 0
        assert acl.mdl.execute(model_id, inputs, outputs) == 0
        y = np.empty_like(x)
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(y), n, d_out, n, 2) == 0
        np.testing.assert_allclose(y, x + steps * np.float32(0.001), rtol=1e-3)
        assert acl.mdl.unload(model_id) == 0
        assert acl.rt.reset_device(0) == 0
    cards = query_status(farm.address)["cards"]
    assert [(c["state"], c["epoch"]) for c in cards] == [("ready", 1), ("ready", 1)]
