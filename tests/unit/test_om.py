"""The npufarm .om container and ``npufarm atc`` (pure parts; the farm runs them in
tests/system/test_programs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device import om
from device.atc import AtcError, atc_main, convert, parse_input_shape
from device.models import ModelFormatError, ModelSpec, load_model_file, parse_model, reference
from examples.pyacl.tiny_cnn import build_cnn

META = {
    "name": "m",
    "inputs": [{"name": "x", "dtype": "float32", "shape": [2, 3], "format": 2}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [2, 3], "format": 2}],
}


def test_container_round_trip_and_spec():
    data = om.pack_om(META, b"\x08\x07fake-onnx")
    meta, model = om.unpack_om(data)
    assert model == b"\x08\x07fake-onnx" and meta["name"] == "m"
    assert meta["format"] == "npufarm.om/1" and len(meta["sha256"]) == 64
    spec = parse_model(data)
    assert spec.kind == "onnx" and spec.blob == b"\x08\x07fake-onnx"
    assert [t.name for t in spec.inputs] == ["x"] and spec.outputs[0].shape == (2, 3)
    assert ModelSpec.from_dict(spec.to_dict()) == spec  # what travels to the card


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\0", "truncated"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "CRC"),
        (lambda d: d[:8] + b"\x00\x02" + d[10:], "container version"),
        (lambda d: d[:10] + b"\x00\x03" + d[12:], "only ONNX"),
        (lambda d: d[:20], "too short"),
    ],
)
def test_container_damage_is_145006(mangle, message):
    with pytest.raises(ModelFormatError, match=message) as info:
        parse_model(mangle(om.pack_om(META, b"model-bytes")))
    assert info.value.code == 145006


def test_real_ascend_om_and_raw_onnx_say_to_convert(tmp_path):
    real = tmp_path / "resnet50.om"
    real.write_bytes(b"IMOD" + bytes(252))  # GE's model-file magic 0x444F4D49
    with pytest.raises(ModelFormatError, match="npufarm atc") as info:
        load_model_file(real)
    assert info.value.code == 145006
    onnx_path = build_cnn(tmp_path / "cnn.onnx")
    with pytest.raises(ModelFormatError, match="ONNX model is not an offline model.*npufarm atc"):
        load_model_file(onnx_path)


def test_toml_models_take_no_blob_and_onnx_kind_needs_one():
    spec = parse_model(om.pack_om(META, b"m"))
    doc = spec.to_dict()
    with pytest.raises(ModelFormatError, match="takes no blob"):
        ModelSpec.from_dict({**doc, "model": {**doc["model"], "kind": "identity"}})
    with pytest.raises(ModelFormatError, match="comes in an .om container"):
        ModelSpec.from_dict({k: v for k, v in doc.items() if k != "blob"})


def test_parse_input_shape():
    assert parse_input_shape("x:1,3,224,224;y:1,10") == {"x": (1, 3, 224, 224), "y": (1, 10)}
    assert parse_input_shape("name:with:colons:4,2") == {"name:with:colons": (4, 2)}
    assert parse_input_shape(None) == {}
    for bad in ("x", "x:1,a", "x:0,3", ":1,2"):
        with pytest.raises(AtcError, match="--input_shape"):
            parse_input_shape(bad)


def test_convert_fixes_the_batch_and_the_spec_computes_like_onnxruntime(tmp_path):
    import onnxruntime

    source = build_cnn(tmp_path / "cnn.onnx")
    out = convert(
        str(source),
        str(tmp_path / "o" / "cnn"),
        soc_version="Ascend910B",
        input_shape="x:2,3,16,16",
        latency_ms=4.0,
    )
    assert out == tmp_path / "o" / "cnn.om"
    spec = load_model_file(out)
    assert spec.inputs[0].shape == (2, 3, 16, 16) and spec.inputs[0].format == 0  # NCHW
    assert spec.outputs[0].shape == (2, 10) and spec.outputs[0].format == 2  # ND
    assert spec.latency.fixed_s == pytest.approx(0.004)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    host = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    (expected,) = host.run(None, {"x": x})
    (got,) = reference(spec, [x])
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"framework": 3}, "TensorFlow.*ONNX models only"),
        ({"soc_version": "gpu"}, "Ascend SoC"),
        ({"input_shape": None}, "dynamic dims"),
        ({"input_shape": "y:1,3,16,16"}, r"names \['y'\]"),
        ({"input_shape": "x:1,3"}, "rank 2"),
        ({"input_format": "NC1HWC0"}, "--input_format"),
    ],
)
def test_convert_refuses_with_the_option_named(tmp_path, kwargs, message):
    source = build_cnn(tmp_path / "cnn.onnx")
    options = {"soc_version": "Ascend310", "input_shape": "x:1,3,16,16", **kwargs}
    with pytest.raises(AtcError, match=message):
        convert(str(source), str(tmp_path / "cnn"), **options)


def test_atc_command_line(tmp_path, capsys):
    source = build_cnn(tmp_path / "cnn.onnx")
    common = [f"--model={source}", "--framework=5", f"--output={tmp_path / 'cnn'}"]
    assert (
        atc_main(
            [
                *common,
                "--soc_version=Ascend310",
                "--input_shape=x:1,3,16,16",
                "--precision_mode=allow_fp32_to_fp16",
            ]
        )
        == 0
    )
    assert "ATC run success" in capsys.readouterr().out
    meta, _ = om.unpack_om((tmp_path / "cnn.om").read_bytes())
    assert meta["atc"]["precision_mode"] == "allow_fp32_to_fp16"
    assert atc_main(common) == 1  # no --soc_version
    assert "--soc_version" in capsys.readouterr().err
    assert atc_main([*common, "--soc_version=Ascend310", "--dynamic_batch_size=1,2,4"]) == 1
    assert "dynamic batch" in capsys.readouterr().err
    assert (
        atc_main(["--mode=1", f"--om={tmp_path / 'cnn.om'}", f"--json={tmp_path / 'm.json'}"]) == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["inputs"][0]["shape"] == [1, 3, 16, 16]


def test_two_inputs_two_outputs_and_integer_dtypes(tmp_path):
    """Every input and output keeps its name, dtype and shape; integer tensors map to their ACL
    data types (int32 3, int64 9) and 2-D tensors report ND."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Cast", ["sum"], ["wide"], to=TensorProto.INT64),
        ],
        "two_io",
        [
            helper.make_tensor_value_info("a", TensorProto.INT32, [2, 5]),
            helper.make_tensor_value_info("b", TensorProto.INT32, [2, 5]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.INT32, [2, 5]),
            helper.make_tensor_value_info("wide", TensorProto.INT64, [2, 5]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "two_io.onnx"))
    spec = load_model_file(
        convert(str(tmp_path / "two_io.onnx"), str(tmp_path / "two_io"), soc_version="Ascend310P3")
    )
    assert [(t.name, t.dtype, t.acl_dtype, t.format) for t in spec.inputs] == [
        ("a", "int32", 3, 2),
        ("b", "int32", 3, 2),
    ]
    assert [(t.name, t.dtype, t.acl_dtype, t.nbytes) for t in spec.outputs] == [
        ("sum", "int32", 3, 40),
        ("wide", "int64", 9, 80),
    ]
    a = np.arange(10, dtype=np.int32).reshape(2, 5)
    b = np.full((2, 5), 7, np.int32)
    total, wide = reference(spec, [a, b])
    np.testing.assert_array_equal(total, a + b)
    assert wide.dtype == np.int64 and (wide == a + b).all()


def test_damaged_containers_only_ever_raise_145006():
    """Bad input gets a clear error: random damage anywhere in a container (header, metadata,
    model) is a ModelFormatError with 145006, never another exception."""
    good = om.pack_om(META, b"\x08\x07" + bytes(range(200)))
    rng = np.random.default_rng(2026)
    for _ in range(500):
        data = bytearray(good)
        for where in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[where] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        try:
            spec = parse_model(bytes(data))
        except ModelFormatError as exc:
            assert exc.code == 145006
        else:  # damage that happens to keep a valid container: still a sane spec
            assert spec.kind == "onnx" and spec.inputs and spec.outputs
