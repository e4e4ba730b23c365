"""Issue 9, defect 1: a healthy card keeps its heartbeat while a kernel computes, however long.

On the ci config (0.05 s beats, liveness 4: expiry 0.2 s) one execution computes for several
expiries (a numpy matmul model, and an ONNX MatMul chain run by onnxruntime). The card must stay
READY at epoch 1 and the synchronous execute must return 0 with the right output. The converse
must stay true: a card that is really silent (SIGSTOP stops every thread of it) is lost.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from farm.admin import query_status
from tests.conftest import poll_for

pytestmark = pytest.mark.timeout(120)

EXPIRY_S = 0.05 * 4  # configs/ci.toml
WIDTH, ROWS = 4096, 6144  # numpy model: [6144, 4096] @ [4096, 4096], 206 GFLOP
ONNX_WIDTH, ONNX_ROWS, ONNX_STEPS = 1024, 1024, 64  # 137 GFLOP on one onnxruntime thread


def _synthetic_model(tmp_path: Path, rows: int) -> Path:
    """A dense layer; its weights depend on the seed and WIDTH only, not on ``rows``."""
    path = tmp_path / f"heavy{rows}.toml"
    path.write_text(
        f"""[model]
name = "heavy"
kind = "matmul"
seed = 3
[model.params]
units = {WIDTH}
bias = false
[[inputs]]
name = "x"
dtype = "float32"
shape = [{rows}, {WIDTH}]
[[outputs]]
name = "y"
dtype = "float32"
shape = [{rows}, {WIDTH}]
"""
    )
    return path


def chain_om(tmp_path: Path, steps: int, rows: int, width: int, name: str = "chain") -> Path:
    """An .om of ``steps`` MatMuls by the identity on a [rows, width] input: onnxruntime works
    for the whole chain (seconds, as sized), and the result is the input again."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from device.atc import convert

    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"m{i - 1}", "w"], [f"m{i}"])
        for i in range(steps)
    ]
    nodes.append(helper.make_node("Identity", [f"m{steps - 1}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])],
        [numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / f"{name}.onnx"))
    return Path(
        convert(str(tmp_path / f"{name}.onnx"), str(tmp_path / name), soc_version="Ascend910B")
    )


def _onnx_model(tmp_path: Path) -> Path:
    """x @ I repeated: onnxruntime works for the whole chain, the result is x again."""
    return chain_om(tmp_path, ONNX_STEPS, ONNX_ROWS, ONNX_WIDTH, "heavy_chain")


SAMPLE_ROWS = 16  # rows of the result checked against the reference (computed here)


def _expected(kind: str, tmp_path: Path, x: np.ndarray) -> np.ndarray:
    if kind == "onnx":
        return x[:SAMPLE_ROWS]  # x @ I @ I ...
    from device.kernels import reference
    from device.models import load_model_file

    small = load_model_file(str(_synthetic_model(tmp_path, SAMPLE_ROWS)))
    return reference(small, [x[:SAMPLE_ROWS]])[0]


def _card(farm, device_id: int) -> dict:
    return query_status(farm.address)["cards"][device_id]


@pytest.mark.parametrize("kind", ["numpy", "onnx"])
def test_a_long_computation_never_silences_the_card(farm, acl_on, tmp_path, kind):
    if kind == "onnx":
        pytest.importorskip("onnxruntime")
    if kind == "numpy":
        path, shape = _synthetic_model(tmp_path, ROWS), (ROWS, WIDTH)
    else:
        path, shape = _onnx_model(tmp_path), (ONNX_ROWS, ONNX_WIDTH)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        model_id, ret = acl.mdl.load_from_file(str(path))
        assert ret == 0, acl.get_recent_err_msg()
        n = x.nbytes
        d_in, _ = acl.rt.malloc(n, 0)
        d_out, _ = acl.rt.malloc(n, 0)
        inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, n))
        acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(d_out, n))
        assert acl.rt.memcpy(d_in, n, acl.util.numpy_to_ptr(x), n, 1) == 0
        start = time.monotonic()
        assert acl.mdl.execute(model_id, inputs, outputs) == 0, acl.get_recent_err_msg()
        took_s = time.monotonic() - start
        assert took_s > 2 * EXPIRY_S, f"the model computed for {took_s:.2f}s only"
        y = np.empty_like(x)
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(y), n, d_out, n, 2) == 0
        np.testing.assert_allclose(
            y[:SAMPLE_ROWS], _expected(kind, tmp_path, x), rtol=1e-4, atol=1e-4
        )
        assert acl.rt.query_device_status(0) == (0, 0)
        assert acl.mdl.unload(model_id) == 0
        for ptr in (d_in, d_out):
            assert acl.rt.free(ptr) == 0
        assert acl.rt.reset_device(0) == 0
    cards = query_status(farm.address)["cards"]
    assert [(c["state"], c["epoch"]) for c in cards] == [("ready", 1), ("ready", 1)]


def test_a_stopped_card_is_still_declared_lost(fresh_farm):
    """SIGSTOP freezes every thread of a card, the heartbeat's too: the broker declares it lost
    within about the expiry, and restarts it on demand as before."""
    pid = fresh_farm.card_pids()[1]
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_s = time.monotonic()
        poll_for(lambda: _card(fresh_farm, 1)["state"] == "lost", 5.0)
        card = _card(fresh_farm, 1)
        assert time.monotonic() - stopped_s < 2 * EXPIRY_S + 1.0
        assert "heartbeat" in card["lost_reason"]
        assert _card(fresh_farm, 0)["state"] == "ready"
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
