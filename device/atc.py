"""``npufarm atc``: ATC's command line for npufarm — ONNX model in, npufarm ``.om`` out.

Users already type ``atc --model=resnet.onnx --framework=5 --output=out/resnet
--soc_version=Ascend310``; ``npufarm atc`` takes the same options (the subset that makes sense
without a real compiler) and writes ``out/resnet.om``, npufarm's container (:mod:`device.om`):
the ONNX model with every input made static, plus the metadata ATC fixes at conversion time.

* ``--framework``: only 5 (ONNX). Caffe (0), MindSpore (1) and TensorFlow (3) models must be
  exported to ONNX first.
* ``--input_shape="x:1,3,224,224;y:1,10"``: fixes dynamic dims (like ATC, conversion fails while
  an input still has one) and may override static ones.
* ``--input_format``: NCHW (default for ONNX, as in ATC), NHWC or ND; 4-D tensors report it as
  their ACL format (0 NCHW, 1 NHWC), every other tensor ND (2).
* ``--mode=1 --om=m.om --json=m.json``: dump an .om's metadata as JSON (ATC's mode 1).
* ``--npufarm_latency_ms``: not ATC: the modelled execution time per request on a 1.0-speed card
  (default 0: the real onnxruntime time only). The card completes a task after the larger of the
  two.
* Accepted and recorded, without effect: ``--precision_mode``, ``--op_select_implmode``,
  ``--log``, ``--host_env_os``, ``--host_env_cpu``. Refused with a clear message: dynamic gears
  (``--dynamic_batch_size``, ``--dynamic_image_size``, ``--dynamic_dims``), AIPP
  (``--insert_op_conf``), ``--output_type``, ``--out_nodes``, ``--weight``.

Output shapes and dtypes come from the graph; where the graph leaves an output dim open, one
inference on zeros fixes it (ATC infers shapes the same way, statically).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from device.model_spec import DTYPES
from device.om import FRAMEWORK_ONNX, FRAMEWORKS, pack_om, unpack_om
from device.onnx_kernel import make_session

__all__ = ["AtcError", "convert", "parse_input_shape", "atc_main"]

logger = logging.getLogger(__name__)

ACL_FORMATS = {"NCHW": 0, "NHWC": 1, "ND": 2}
_RECORDED = ("precision_mode", "op_select_implmode", "log", "host_env_os", "host_env_cpu")
_REFUSED = {
    "dynamic_batch_size": "dynamic batch gears",
    "dynamic_image_size": "dynamic image-size gears",
    "dynamic_dims": "dynamic dims gears",
    "insert_op_conf": "AIPP pre-processing",
    "output_type": "changing output dtypes",
    "out_nodes": "choosing output nodes",
    "weight": "Caffe weight files",
}


class AtcError(Exception):
    """The conversion cannot be done; the message says which option and why."""


def parse_input_shape(text: str | None) -> dict[str, tuple[int, ...]]:
    """``"x:1,3,224,224;y:1,10"`` → ``{"x": (1, 3, 224, 224), "y": (1, 10)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(";"))):
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None or any(d < 1 for d in shape):
            raise AtcError(f"--input_shape: {item!r} is not name:d1,d2,... with dims >= 1")
        shapes[name] = shape
    return shapes


def _onnx():
    try:
        import onnx  # optional heavy dependency (the onnx extra): imported lazily
    except ImportError as exc:
        raise AtcError("npufarm atc needs the onnx package: pip install 'npufarm[onnx]'") from exc
    return onnx


def _dims(value_info) -> list[int]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]


def _dtype(value_info) -> str:
    onnx = _onnx()
    elem = value_info.type.tensor_type.elem_type
    try:
        name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
    except (KeyError, TypeError, ValueError):
        name = str(elem)
    if name not in DTYPES:
        raise AtcError(f"tensor {value_info.name!r}: dtype {name} has no ACL data type")
    return name


def _tensor(name: str, dtype: str, shape: list[int], input_format: str) -> dict[str, Any]:
    fmt = ACL_FORMATS[input_format] if len(shape) == 4 else ACL_FORMATS["ND"]
    return {"name": name, "dtype": dtype, "shape": list(shape), "format": fmt}


def _fix_inputs(model, shapes: dict[str, tuple[int, ...]]) -> list:
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    unknown = sorted(set(shapes) - {i.name for i in inputs})
    if unknown:
        raise AtcError(
            f"--input_shape names {unknown}; the model's inputs are {[i.name for i in inputs]}"
        )
    for value_info in inputs:
        dims = _dims(value_info)
        if value_info.name in shapes:
            wanted = shapes[value_info.name]
            if len(wanted) != len(dims):
                raise AtcError(
                    f"--input_shape {value_info.name}: rank {len(wanted)}, "
                    f"the model's is {len(dims)}"
                )
            for dim, size in zip(value_info.type.tensor_type.shape.dim, wanted):
                dim.Clear()
                dim.dim_value = size
        elif -1 in dims:
            raise AtcError(
                f"input {value_info.name!r} has dynamic dims {dims}: fix them with "
                f'--input_shape="{value_info.name}:..."'
            )
    return inputs


def _output_shapes(model_bytes: bytes, inputs: list[dict[str, Any]], declared: list[list[int]]):
    if all(-1 not in dims for dims in declared):
        return declared
    session = make_session(model_bytes)
    feeds = {t["name"]: np.zeros(t["shape"], t["dtype"]) for t in inputs}
    results = session.run([o.name for o in session.get_outputs()], feeds)
    return [list(np.asarray(r).shape) for r in results]


def convert(
    model_path: str,
    output: str,
    *,
    framework: int = FRAMEWORK_ONNX,
    soc_version: str,
    input_shape: str | None = None,
    input_format: str = "NCHW",
    latency_ms: float = 0.0,
    recorded: dict[str, Any] | None = None,
) -> Path:
    """Convert an ONNX model into ``<output>.om``; return that path."""
    if framework != FRAMEWORK_ONNX:
        name = FRAMEWORKS.get(framework, "unknown")
        raise AtcError(
            f"--framework={framework} ({name}): npufarm atc converts ONNX models "
            "only (--framework=5); export the model to ONNX first"
        )
    if not soc_version or not soc_version.startswith("Ascend"):
        raise AtcError(f"--soc_version={soc_version!r}: expected an Ascend SoC, e.g. Ascend310")
    if input_format not in ACL_FORMATS:
        raise AtcError(f"--input_format={input_format}: one of {', '.join(ACL_FORMATS)}")
    if not latency_ms >= 0:
        raise AtcError(f"--npufarm_latency_ms={latency_ms}: must be >= 0")
    onnx = _onnx()
    try:
        model = onnx.load_model(model_path)
        onnx.checker.check_model(model)
    except FileNotFoundError as exc:
        raise AtcError(f"--model={model_path}: no such file") from exc
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise AtcError(f"--model={model_path}: not a valid ONNX model ({exc})") from exc
    graph_inputs = _fix_inputs(model, parse_input_shape(input_shape))
    model_bytes = model.SerializeToString()
    inputs = [_tensor(i.name, _dtype(i), _dims(i), input_format) for i in graph_inputs]
    declared = [_dims(o) for o in model.graph.output]
    shapes = _output_shapes(model_bytes, inputs, declared)
    outputs = [
        _tensor(o.name, _dtype(o), shape, input_format)
        for o, shape in zip(model.graph.output, shapes)
    ]
    out = Path(output if output.endswith(".om") else output + ".om")
    metadata = {
        "name": out.stem,
        "framework": framework,
        "soc_version": soc_version,
        "source": Path(model_path).name,
        "inputs": inputs,
        "outputs": outputs,
        "latency": {"fixed_s": latency_ms / 1000.0},
        "atc": {"input_shape": input_shape or "", "input_format": input_format, **(recorded or {})},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pack_om(metadata, model_bytes, framework))
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npufarm atc",
        description="Convert an ONNX model into an npufarm .om (ATC's options).",
    )
    add = parser.add_argument
    add("--mode", type=int, default=0, choices=(0, 1), help="0: convert; 1: .om to JSON")
    add("--model", help="the ONNX model (mode 0)")
    add("--framework", type=int, help="5 = ONNX (the only one npufarm converts)")
    add("--output", help="output path without .om (mode 0)")
    add("--soc_version", help="target SoC, recorded in the .om, e.g. Ascend310, Ascend910B")
    add("--input_shape", help='fix input shapes: "name:1,3,224,224;name2:1,10"')
    add("--input_format", default="NCHW", help="NCHW (default), NHWC or ND")
    add("--om", help="the .om to dump (mode 1)")
    add("--json", help="the JSON file to write (mode 1)")
    add(
        "--npufarm_latency_ms",
        type=float,
        default=0.0,
        help="npufarm only: modelled execution time per request (ms)",
    )
    for name in _RECORDED:
        add(f"--{name}", help="accepted and recorded in the .om; no effect on npufarm")
    for name, what in _REFUSED.items():
        add(f"--{name}", help=f"not supported by npufarm ({what})")
    return parser


def _mode_1(args: argparse.Namespace) -> None:
    if not args.om or not args.json:
        raise AtcError("--mode=1 needs --om=<model.om> and --json=<out.json>")
    try:
        data = Path(args.om).read_bytes()
    except OSError as exc:
        raise AtcError(f"--om={args.om}: {exc}") from exc
    try:
        metadata, model = unpack_om(data, args.om)
    except Exception as exc:
        raise AtcError(str(exc)) from exc
    metadata["model_bytes"] = len(model)
    Path(args.json).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def atc_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        refused = [f"--{name} ({what})" for name, what in _REFUSED.items() if getattr(args, name)]
        if refused:
            raise AtcError(f"not supported by npufarm atc: {', '.join(refused)}")
        if args.mode == 1:
            _mode_1(args)
        else:
            missing = [
                f"--{o}"
                for o in ("model", "framework", "output", "soc_version")
                if getattr(args, o) is None
            ]
            if missing:
                raise AtcError(f"missing required option(s): {', '.join(missing)}")
            print("ATC start working now, please wait for a moment.")
            out = convert(
                args.model,
                args.output,
                framework=args.framework,
                soc_version=args.soc_version,
                input_shape=args.input_shape,
                input_format=args.input_format,
                latency_ms=args.npufarm_latency_ms,
                recorded={n: getattr(args, n) for n in _RECORDED if getattr(args, n) is not None},
            )
            print(f"wrote {out}")
    except AtcError as exc:
        print(f"npufarm atc: {exc}", file=sys.stderr)
        print(
            "ATC run failed, Please check the detail log, Try 'npufarm atc --help' for more "
            "information",
            file=sys.stderr,
        )
        return 1
    print("ATC run success, welcome to the next use.")
    return 0
