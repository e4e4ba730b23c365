"""Unit tests for device.models: the TOML model format, the kernels and the latency model."""

from __future__ import annotations

import logging
import math
import pathlib

import msgpack
import numpy as np
import pytest

from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID,
    ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID,
    ACL_ERROR_INVALID_PARAM,
    AclError,
)
from device.models import (
    MAX_MODEL_FILE_BYTES,
    LatencyProfile,
    ModelFormatError,
    ModelSpec,
    TensorSpec,
    build_kernel,
    load_model_file,
    modelled_duration_s,
    parse_model,
    reference,
)

__all__: list[str] = []

logger = logging.getLogger(__name__)

MODELS_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs" / "models"


def _toml(
    kind: str,
    inputs: list[tuple[str, list[int]]],
    outputs: list[tuple[str, list[int]]],
    extra: str = "",
    seed: int = 3,
) -> str:
    parts = [f'[model]\nname = "t"\nkind = "{kind}"\nseed = {seed}\n{extra}']
    for role, tensors in (("inputs", inputs), ("outputs", outputs)):
        for i, (dtype, shape) in enumerate(tensors):
            parts.append(f'[[{role}]]\nname = "{role}{i}"\ndtype = "{dtype}"\nshape = {shape}\n')
    return "\n".join(parts)


def _spec(kind: str, inputs: list, outputs: list, extra: str = "", seed: int = 3) -> ModelSpec:
    return parse_model(_toml(kind, inputs, outputs, extra, seed).encode())


def _random_inputs(spec: ModelSpec, seed: int = 11) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(t.concrete_shape) * 4).astype(t.np_dtype) for t in spec.inputs]


def _run_in_bytes(spec: ModelSpec, inputs: list[np.ndarray], pad: int = 40) -> list[np.ndarray]:
    """Run the kernel the way a card does: flat uint8 views, outputs longer than needed."""
    kernel = build_kernel(spec)
    views = [np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in inputs]
    outs = [np.full(t.nbytes + pad, 0xEE, np.uint8) for t in spec.outputs]
    kernel.run(views, outs)
    for out, tensor in zip(outs, spec.outputs):
        assert (out[tensor.nbytes :] == 0xEE).all()  # bytes past the tensor untouched
    return [
        out[: t.nbytes].view(t.np_dtype).reshape(t.concrete_shape)
        for out, t in zip(outs, spec.outputs)
    ]


def _matmul_weights(seed: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented weight recipe: float32 draws, W scaled by 1/sqrt(K), then b × 0.1."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n), dtype=np.float32) * np.float32(1 / math.sqrt(k))
    b = rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)
    return w, b


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", ["float32", "int32", "uint8", "float16"])
def test_identity_add_relu_match_numpy(dtype: str) -> None:
    shape = [2, 5]
    identity = _spec("identity", [(dtype, shape)], [(dtype, shape)])
    add = _spec("add", [(dtype, shape), (dtype, shape)], [(dtype, shape)])
    relu = _spec("relu", [(dtype, shape)], [(dtype, shape)])
    x, y = _random_inputs(add)
    np.testing.assert_array_equal(_run_in_bytes(identity, [x])[0], x)
    np.testing.assert_array_equal(_run_in_bytes(add, [x, y])[0], x + y)
    np.testing.assert_array_equal(_run_in_bytes(relu, [x])[0], np.maximum(x, 0))
    np.testing.assert_array_equal(reference(add, [x, y])[0], x + y)


def test_scale_matches_numpy() -> None:
    spec = _spec(
        "scale", [("float32", [3, 4])], [("float32", [3, 4])], "[model.params]\nscale = 2.5"
    )
    (x,) = _random_inputs(spec)
    np.testing.assert_array_equal(_run_in_bytes(spec, [x])[0], x * np.float32(2.5))
    assert spec.param("scale") == 2.5
    assert spec.param("missing", 9) == 9


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_matmul_matches_numpy(dtype: str) -> None:
    spec = _spec("matmul", [(dtype, [4, 8])], [(dtype, [4, 6])], seed=21)
    (x,) = _random_inputs(spec)
    w, b = _matmul_weights(21, 8, 6)
    expected = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    got = _run_in_bytes(spec, [x])[0]
    assert got.dtype == np.dtype(dtype)
    tolerance = 1e-2 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(got, reference(spec, [x])[0])


def test_matmul_without_bias() -> None:
    spec = _spec(
        "matmul", [("float32", [1, 8])], [("float32", [1, 3])], "[model.params]\nbias = false"
    )
    (x,) = _random_inputs(spec)
    w, _ = _matmul_weights(3, 8, 3)
    np.testing.assert_allclose(_run_in_bytes(spec, [x])[0], x @ w, rtol=1e-5, atol=1e-6)


def test_matmul_is_deterministic_per_seed() -> None:
    spec = _spec("matmul", [("float32", [2, 16])], [("float32", [2, 16])], seed=7)
    (x,) = _random_inputs(spec)
    first, second = _run_in_bytes(spec, [x])[0], _run_in_bytes(spec, [x])[0]
    np.testing.assert_array_equal(first, second)
    other = _spec("matmul", [("float32", [2, 16])], [("float32", [2, 16])], seed=8)
    assert not np.array_equal(first, _run_in_bytes(other, [x])[0])


def test_softmax_classifier_matches_numpy() -> None:
    spec = _spec("softmax_classifier", [("float32", [2, 3, 4, 4])], [("float32", [2, 10])], seed=5)
    (x,) = _random_inputs(spec)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((48, 10), dtype=np.float32) * np.float32(1 / math.sqrt(48))
    logits = x.reshape(2, 48).astype(np.float64) @ w.astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    got = _run_in_bytes(spec, [x])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_reference_accepts_raw_bytes() -> None:
    spec = _spec("relu", [("float32", [8])], [("float32", [8])])
    (x,) = _random_inputs(spec)
    raw = np.concatenate([x.view(np.uint8), np.zeros(5, np.uint8)])
    np.testing.assert_array_equal(reference(spec, [raw])[0], np.maximum(x, 0))
    with pytest.raises(ValueError):
        reference(spec, [np.zeros(3, np.float32)])
    with pytest.raises(ValueError):
        reference(spec, [])


def test_run_rejects_short_buffers_and_wrong_counts() -> None:
    spec = _spec("identity", [("float32", [4])], [("float32", [4])])
    kernel = build_kernel(spec)
    good, short = np.zeros(16, np.uint8), np.zeros(15, np.uint8)
    with pytest.raises(AclError) as info:
        kernel.run([short], [good])
    assert info.value.code == ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID
    with pytest.raises(AclError) as info:
        kernel.run([good, good], [good])
    assert info.value.code == ACL_ERROR_INVALID_PARAM
    with pytest.raises(AclError) as info:
        kernel.run([np.zeros(4, np.float32)], [good])
    assert info.value.code == ACL_ERROR_INVALID_PARAM


def test_in_place_on_the_same_buffer() -> None:
    spec = _spec("scale", [("float32", [4])], [("float32", [4])], "[model.params]\nscale = 3.0")
    buffer = np.arange(4, dtype=np.float32).view(np.uint8)
    build_kernel(spec).run([buffer], [buffer])
    assert buffer.view(np.float32).tolist() == [0.0, 3.0, 6.0, 9.0]


# --------------------------------------------------------------------------- specs


def test_tensor_spec_properties_and_dynamic_dims() -> None:
    tensor = TensorSpec("x", "float16", (-1, 3, 4))
    assert tensor.is_dynamic
    assert tensor.concrete_shape == (1, 3, 4)
    assert tensor.nbytes == 24
    assert tensor.acl_dtype == 1
    assert tensor.np_dtype == np.float16
    assert tensor.format == 2
    codes = {
        d: TensorSpec("t", d, (1,)).acl_dtype
        for d in ("float32", "int8", "int32", "uint8", "int64", "float64", "bool")
    }
    assert codes == {
        "float32": 0,
        "int8": 2,
        "int32": 3,
        "uint8": 4,
        "int64": 9,
        "float64": 11,
        "bool": 12,
    }


def test_to_dict_round_trips_through_msgpack() -> None:
    extra = "[model.params]\nunits = 6\n[latency]\nfixed_s = 0.5\njitter_sigma = 0.1\n"
    spec = _spec("matmul", [("float32", [-1, 8])], [("float32", [-1, 6])], extra)
    wire = msgpack.unpackb(msgpack.packb(spec.to_dict(), use_bin_type=True), raw=False)
    again = ModelSpec.from_dict(wire)
    assert again == spec
    assert again.inputs[0].shape == (-1, 8)
    assert again.latency == LatencyProfile(fixed_s=0.5, jitter_sigma=0.1)
    assert spec.input_bytes == 32
    with pytest.raises(ModelFormatError):
        ModelSpec.from_dict({"model": "nope"})


GOOD = _toml("identity", [("float32", [1, 4])], [("float32", [1, 4])])
BAD_MODELS = {
    "not utf-8": b"\xff\xfe[model]",
    "not toml": b"[model\nkind = ",
    "empty": b"",
    "missing model": b'[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [1]\n',
    "model not a table": b'model = "identity"\n',
    "unknown kind": GOOD.replace('"identity"', '"conv"').encode(),
    "missing kind": GOOD.replace('kind = "identity"', "").encode(),
    "bool seed": GOOD.replace("seed = 3", "seed = true").encode(),
    "negative seed": GOOD.replace("seed = 3", "seed = -1").encode(),
    "long name": GOOD.replace('name = "t"', f'name = "{"n" * 128}"').encode(),
    "unknown model key": GOOD.replace("seed = 3", "seed = 3\ncolour = 1").encode(),
    "unknown top-level table": (GOOD + "\n[extra]\na = 1\n").encode(),
    "bad dtype": GOOD.replace('"float32"', '"bfloat16"', 1).encode(),
    "zero dim": GOOD.replace("[1, 4]", "[0, 4]", 1).encode(),
    "float dim": GOOD.replace("[1, 4]", "[1.5, 4]", 1).encode(),
    "string shape": GOOD.replace("[1, 4]", '"1x4"', 1).encode(),
    "too many dims": GOOD.replace("[1, 4]", str([1] * 129), 1).encode(),
    "bad format": GOOD.replace("shape = [1, 4]", 'shape = [1, 4]\nformat = "ND"', 1).encode(),
    "unknown tensor key": GOOD.replace("shape = [1, 4]", "shape = [1, 4]\nrank = 2", 1).encode(),
    "missing outputs": GOOD.split("[[outputs]]")[0].encode(),
    "shape mismatch": _toml("identity", [("float32", [1, 4])], [("float32", [1, 5])]).encode(),
    "dtype mismatch": _toml("identity", [("float32", [4])], [("int32", [4])]).encode(),
    "too many inputs": _toml("relu", [("float32", [4])] * 2, [("float32", [4])]).encode(),
    "add one input": _toml("add", [("float32", [4])], [("float32", [4])]).encode(),
    "add shapes": _toml("add", [("float32", [4]), ("float32", [5])], [("float32", [4])]).encode(),
    "matmul 3-d": _toml("matmul", [("float32", [1, 2, 3])], [("float32", [1, 3])]).encode(),
    "matmul batch": _toml("matmul", [("float32", [2, 3])], [("float32", [1, 3])]).encode(),
    "matmul ints": _toml("matmul", [("int32", [1, 3])], [("int32", [1, 3])]).encode(),
    "matmul units": _toml(
        "matmul", [("float32", [1, 3])], [("float32", [1, 3])], "[model.params]\nunits = 4"
    ).encode(),
    "huge weights": _toml("matmul", [("float32", [1, 65536])], [("float32", [1, 65536])]).encode(),
    "classifier 1-d": _toml(
        "softmax_classifier", [("float32", [12])], [("float32", [1, 10])]
    ).encode(),
    "scale ints": _toml("scale", [("int32", [4])], [("int32", [4])]).encode(),
    "unknown param": _toml(
        "identity", [("float32", [4])], [("float32", [4])], "[model.params]\nscale = 2.0"
    ).encode(),
    "bad param type": _toml(
        "scale", [("float32", [4])], [("float32", [4])], '[model.params]\nscale = "2"'
    ).encode(),
    "negative latency": (GOOD + "\n[latency]\nfixed_s = -0.1\n").encode(),
    "unknown latency key": (GOOD + "\n[latency]\nfixed_ms = 2\n").encode(),
    "duplicate names": _toml("add", [("float32", [4])] * 2, [("float32", [4])])
    .replace('name = "inputs1"', 'name = "inputs0"')
    .encode(),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_parse_model_rejects(case: str) -> None:
    with pytest.raises(ModelFormatError) as info:
        parse_model(BAD_MODELS[case], source="case.toml")
    assert info.value.code == ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID
    assert "case.toml" in str(info.value)


def test_load_model_file_paths(tmp_path: pathlib.Path) -> None:
    for path in (tmp_path / "missing.toml", tmp_path, "", "bad\0path"):
        with pytest.raises(ModelFormatError) as info:
            load_model_file(path)
        assert info.value.code == ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID
    junk = tmp_path / "junk.om"
    junk.write_bytes(b"\x00\x01binary")
    with pytest.raises(ModelFormatError) as info:
        load_model_file(junk)
    assert info.value.code == ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID
    huge = tmp_path / "huge.toml"
    huge.write_bytes(GOOD.encode() + b"#" * MAX_MODEL_FILE_BYTES)
    with pytest.raises(ModelFormatError) as info:
        load_model_file(huge)
    assert info.value.code == ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    assert load_model_file(good).kind == "identity"


def test_shipped_models_parse() -> None:
    files = {path.stem: load_model_file(path) for path in sorted(MODELS_DIR.glob("*.toml"))}
    assert {"identity", "add", "matmul", "classifier", "zero"} <= set(files)
    assert files["classifier"].outputs[0].shape == (1, 1000)
    assert files["classifier"].inputs[0].shape == (1, 3, 32, 32)
    assert files["matmul"].latency.fixed_s == 0.002
    assert files["zero"].latency == LatencyProfile()
    assert len(files["add"].inputs) == 2


# --------------------------------------------------------------------------- latency


def test_modelled_duration() -> None:
    latency = LatencyProfile(fixed_s=0.01, per_batch_s=0.001, per_mib_s=0.5)
    spec = _spec("identity", [("float32", [4, 65536])], [("float32", [4, 65536])])
    rng = np.random.default_rng(0)
    expected = 0.01 + 0.001 * 4 + 0.5 * 1.0
    assert modelled_duration_s(latency, spec, 1.0, 1.0, rng) == pytest.approx(expected)
    assert modelled_duration_s(latency, spec, 2.0, 1.0, rng) == pytest.approx(expected / 2)
    assert modelled_duration_s(latency, spec, 1.0, 0.1, rng) == pytest.approx(expected / 10)
    assert modelled_duration_s(latency, spec, 1.0, 0.0, rng) == 0.0
    for speed, scale in ((0.0, 1.0), (-1.0, 1.0), (1.0, -0.5)):
        with pytest.raises(ValueError):
            modelled_duration_s(latency, spec, speed, scale, rng)


def test_modelled_duration_jitter_is_seeded() -> None:
    latency = LatencyProfile(fixed_s=1.0, jitter_sigma=0.2)
    spec = _spec("identity", [("float32", [1])], [("float32", [1])])
    draws = [
        [modelled_duration_s(latency, spec, 1.0, 1.0, rng) for _ in range(200)]
        for rng in (np.random.default_rng(4), np.random.default_rng(4))
    ]
    assert draws[0] == draws[1]
    assert len(set(draws[0])) == 200
    assert 0.9 < float(np.median(draws[0])) < 1.1
