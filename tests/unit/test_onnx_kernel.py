"""Card onnxruntime sessions: the card's thread count, and pool threads that never spin (they
would burn the host cores the other cards need)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from device.onnx_kernel import make_session  # noqa: E402


def _identity_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "ident",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("threads", [1, 2])
def test_card_session_threads_and_no_spinning(threads):
    session = make_session(_identity_model(), threads)
    options = session.get_session_options()
    assert options.intra_op_num_threads == threads
    assert options.inter_op_num_threads == 1
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == "0"
    x = np.arange(2, dtype=np.float32)
    assert np.array_equal(session.run(None, {"x": x})[0], x)
