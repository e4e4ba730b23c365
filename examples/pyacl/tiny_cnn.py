"""A small ONNX CNN to try the pyACL examples with, built with the ``onnx`` helper API.

conv 3x3 (8 channels) + batch norm + relu + max-pool 2x2 + conv 3x3 (16) + relu + global average
pool + flatten + gemm (10 classes) + softmax, on ``x: [N, 3, H, W]`` float32 (default 16x16) with
a symbolic batch ``N`` (ATC needs ``--input_shape`` for it, as it would for a real exported
model). Weights come from a seeded generator, so every process builds the same model.

usage: python -m examples.pyacl.tiny_cnn OUT.onnx [--image 3,16,16]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "IMAGE", "build_cnn"]

CLASSES = 10
IMAGE = (3, 16, 16)


def build_cnn(path: str | Path, seed: int = 7, image: tuple[int, int, int] = IMAGE) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, scale: float = 0.3):
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    initializers = [
        weight("w1", 8, image[0], 3, 3),
        weight("b1", 8),
        weight("gamma", 8, scale=0.1),
        weight("beta", 8, scale=0.1),
        numpy_helper.from_array(np.zeros(8, np.float32), "mean"),
        numpy_helper.from_array(np.ones(8, np.float32), "var"),
        weight("w2", 16, 8, 3, 3),
        weight("b2", 16),
        weight("fc_w", CLASSES, 16),
        weight("fc_b", CLASSES),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *image])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", CLASSES])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="npufarm-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the .onnx model")
    parser.add_argument("--image", default=",".join(map(str, IMAGE)), help="C,H,W")
    args = parser.parse_args()
    channels, height, width = (int(v) for v in args.image.split(","))
    print(build_cnn(args.out, image=(channels, height, width)))
