"""ONNX models on the farm vs onnxruntime on the host, measured in the same run.

``python -m benchmarks.onnx [--quick] [--out FILE]`` prints one JSON document.

The model is ``examples/pyacl/tiny_cnn`` at 3x64x64, batch 8, converted by ``npufarm atc`` into
a temp dir. A card runs it with onnxruntime on one thread, so the raw baselines do the same:

* ``baselines.ort_run`` - ``session.run`` p50 on the host (1 intra-op thread), same inputs;
  ``baselines.ort_parallel`` - requests/s of 2 host threads, each with its own 1-thread session
  (what 2 cards could do on this host with no farm at all).
* ``farm.exec`` - ``execute_async`` + ``synchronize_stream`` on one card, inputs already on the
  card: p50, its ratio to ``ort_run`` and the absolute overhead. Target: overhead <= 500 us.
* ``farm.request`` - H2D ``memcpy`` + ``execute_async`` + sync + D2H ``memcpy``: p50 vs ``ort_run``.
* ``farm.throughput_2cards`` - one thread per card, closed loop of ``farm.request``: requests/s
  vs ``ort_parallel``. Target: ratio >= 0.75 (the broker and the client share the host's cores).

``compute`` is the real-compute check (issue 12, goal 4): a MatMul chain of ``CHAIN_STEPS`` steps
on a [CHAIN_ROWS, CHAIN_WIDTH] input (about 10 ms per run on one thread here), N = 2 cards vs N
host onnxruntime threads, closed loops of requests, interleaved rounds (host, farm, host, ...)
in the same run; the ratio is the median of the rounds' ratios (min/max given). Target: >= 0.85.
It runs once per card profile variant: ``default`` (1 intra-op thread, no affinity) and
``pinned`` (``cpu_affinity = "auto"``: card d on CPU d mod the allowed CPUs).

The farm is ``benchmarks.core_farm.FarmProcess`` (time_scale 0: only the real compute counts).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.core_farm import FarmProcess, acl_session
from examples.pyacl.tiny_cnn import build_cnn

__all__ = ["measure", "main"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BATCH, IMAGE = 8, (3, 64, 64)
CHAIN_STEPS, CHAIN_ROWS, CHAIN_WIDTH = 12, 256, 512  # about 10 ms of onnxruntime on one thread
CARDS = 2
COMPUTE_TARGET = 0.85
PROFILE_VARIANTS = {"default": "", "pinned": ', cpu_affinity = "auto"'}
_H2D, _D2H = 1, 2


def _p50_us(samples: list[float]) -> float:
    return float(np.percentile(np.asarray(samples), 50) * 1e6)


def _convert(work: Path) -> tuple[Path, Path]:
    source = build_cnn(work / "cnn.onnx", image=IMAGE)
    return source, _atc(source, work / "cnn", (BATCH, *IMAGE))


def _chain_model(path: Path, steps: int = CHAIN_STEPS) -> Path:
    """x @ I, ``steps`` times: real onnxruntime work whose result is x again."""
    import onnx  # optional heavy dependency (the onnx extra): only this benchmark needs it
    from onnx import TensorProto, helper, numpy_helper

    names = ["x", *(f"m{i}" for i in range(steps - 1)), "y"]
    nodes = [helper.make_node("MatMul", [a, "w"], [b]) for a, b in zip(names, names[1:])]
    shape = [CHAIN_ROWS, CHAIN_WIDTH]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.eye(CHAIN_WIDTH, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _atc(source: Path, output: Path, shape: tuple[int, ...]) -> Path:
    """``npufarm atc`` of ``source`` with input x of ``shape``; the .om path."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "npufarm",
            "atc",
            f"--model={source}",
            "--framework=5",
            f"--output={output}",
            "--soc_version=Ascend910B",
            f"--input_shape=x:{','.join(map(str, shape))}",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return output.with_suffix(".om")


def _host_session(source: Path):
    import onnxruntime  # optional heavy dependency (the onnx extra): only this benchmark needs it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _baselines(source: Path, x: np.ndarray, rounds: int, window_s: float) -> dict[str, Any]:
    session = _host_session(source)
    session.run(None, {"x": x})
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    done = [0, 0]

    def loop(index: int) -> None:
        own = _host_session(source)
        deadline = time.perf_counter() + window_s
        while time.perf_counter() < deadline:
            own.run(None, {"x": x})
            done[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "ort_run": {"p50_us": _p50_us(times), "n": rounds},
        "ort_parallel": {"requests_per_s": sum(done) / window_s, "threads": 2},
    }


class _CardRig:
    """One card opened in the pyACL way, with the model loaded and one request's buffers."""

    def __init__(self, acl, device_id: int, om: Path) -> None:
        self.acl, self.device_id = acl, device_id
        assert acl.rt.set_device(device_id) == 0
        self.context, _ = acl.rt.create_context(device_id)
        self.stream, _ = acl.rt.create_stream()
        self.model_id, ret = acl.mdl.load_from_file(str(om))
        assert ret == 0, ret
        desc = acl.mdl.create_desc()
        acl.mdl.get_desc(desc, self.model_id)
        self.n_in = acl.mdl.get_input_size_by_index(desc, 0)
        self.n_out = acl.mdl.get_output_size_by_index(desc, 0)
        acl.mdl.destroy_desc(desc)
        self.d_in, _ = acl.rt.malloc(self.n_in, 0)
        self.d_out, _ = acl.rt.malloc(self.n_out, 0)
        self.inputs, self.outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(self.inputs, acl.create_data_buffer(self.d_in, self.n_in))
        acl.mdl.add_dataset_buffer(self.outputs, acl.create_data_buffer(self.d_out, self.n_out))
        self.y = np.empty(self.n_out // 4, np.float32)

    def execute(self) -> None:
        acl = self.acl
        assert acl.mdl.execute_async(self.model_id, self.inputs, self.outputs, self.stream) == 0
        assert acl.rt.synchronize_stream(self.stream) == 0

    def request(self, x: np.ndarray) -> None:
        acl = self.acl
        assert acl.rt.memcpy(self.d_in, self.n_in, acl.util.numpy_to_ptr(x), x.nbytes, _H2D) == 0
        self.execute()
        y_ptr = acl.util.numpy_to_ptr(self.y)
        assert acl.rt.memcpy(y_ptr, self.n_out, self.d_out, self.n_out, _D2H) == 0

    def close(self) -> None:
        acl = self.acl
        acl.rt.set_context(self.context)
        acl.mdl.unload(self.model_id)
        acl.rt.free(self.d_in)
        acl.rt.free(self.d_out)
        acl.rt.destroy_stream(self.stream)
        acl.rt.destroy_context(self.context)
        acl.rt.reset_device(self.device_id)


def _timed(fn, rounds: int) -> list[float]:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _farm_figures(
    om: Path, x: np.ndarray, expected: np.ndarray, rounds: int, window_s: float
) -> tuple[float, float, float]:
    """On a 2-card farm: exec p50 and request p50 on card 0 (µs), then requests/s of one
    closed-loop thread per card. Card 0's outputs are checked against ``expected`` first."""
    with FarmProcess(cards=2) as farm, acl_session(farm.endpoint) as acl:
        rigs = [_CardRig(acl, d, om) for d in range(2)]
        try:
            rigs[0].request(x)
            y = rigs[0].y.reshape(BATCH, -1)
            assert np.abs(y - expected).max() <= 1e-5, "the card's outputs differ"
            acl.rt.set_context(rigs[0].context)
            exec_us = _p50_us(_timed(rigs[0].execute, rounds))
            request_us = _p50_us(_timed(lambda: rigs[0].request(x), rounds))
            done = [0, 0]

            def loop(rig: _CardRig, index: int) -> None:
                acl.rt.set_context(rig.context)
                deadline = time.perf_counter() + window_s
                while time.perf_counter() < deadline:
                    rig.request(x)
                    done[index] += 1

            threads = [threading.Thread(target=loop, args=(r, i)) for i, r in enumerate(rigs)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for rig in rigs:
                rig.close()
    return exec_us, request_us, sum(done) / window_s


def _closed_loops(bodies: list, window_s: float) -> float:
    """Requests/s of one thread per body, each calling its body in a loop for ``window_s``."""
    done = [0] * len(bodies)

    def loop(index: int) -> None:
        body = bodies[index]
        body()  # warm (and, for a card rig, bind the thread's context)
        deadline = time.perf_counter() + window_s
        while time.perf_counter() < deadline:
            body()
            done[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / window_s


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": min(values), "max": max(values)}


def _compute_variant(
    source: Path, om: Path, x: np.ndarray, keys: str, rounds: int, window_s: float
) -> dict[str, Any]:
    """Interleaved rounds of N host threads (own 1-thread sessions) and N cards (one client
    thread per card, H2D + execute + sync + D2H) on a farm whose profile adds ``keys``."""
    sessions = [_host_session(source) for _ in range(CARDS)]
    host_bodies = [lambda s=s: s.run(None, {"x": x}) for s in sessions]
    host, farm_rates = [], []
    with FarmProcess(cards=CARDS, profile_keys=keys) as farm, acl_session(farm.endpoint) as acl:
        rigs = [_CardRig(acl, d, om) for d in range(CARDS)]
        try:
            rigs[0].request(x)
            assert np.abs(rigs[0].y.reshape(x.shape) - x).max() <= 1e-5, "card outputs differ"

            def card_body(rig: _CardRig) -> None:
                acl.rt.set_context(rig.context)
                rig.request(x)

            farm_bodies = [lambda r=r: card_body(r) for r in rigs]
            for _ in range(rounds):
                host.append(_closed_loops(host_bodies, window_s))
                farm_rates.append(_closed_loops(farm_bodies, window_s))
        finally:
            for rig in rigs:
                rig.close()
    ratios = [f / h for f, h in zip(farm_rates, host)]
    return {
        "profile_keys": keys.lstrip(", ") or "(none)",
        "host_requests_per_s": _spread(host),
        "farm_requests_per_s": _spread(farm_rates),
        "ratio": _spread(ratios),
        "rounds": rounds,
        "meets_target": float(np.median(ratios)) >= COMPUTE_TARGET,
    }


def measure_compute(quick: bool = False, steps: int = CHAIN_STEPS) -> dict[str, Any]:
    """The real-compute figures (goal 4): the chain model of ``steps`` MatMuls, each profile
    variant."""
    rounds, window_s = (1, 0.5) if quick else (5, 3.0)
    variants = {"default": ""} if quick else PROFILE_VARIANTS
    x = np.random.default_rng(1).standard_normal((CHAIN_ROWS, CHAIN_WIDTH)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="nfo-") as work:
        source = _chain_model(Path(work) / "chain.onnx", steps)
        om = _atc(source, Path(work) / "chain", x.shape)
        session = _host_session(source)
        run_ms = _p50_us(_timed(lambda: session.run(None, {"x": x}), 20)) / 1e3
        figures = {
            name: _compute_variant(source, om, x, keys, rounds, window_s)
            for name, keys in variants.items()
        }
    return {
        "model": {"name": "matmul_chain", "input": list(x.shape), "steps": steps},
        "ort_run_p50_ms": run_ms,
        "cards": CARDS,
        "target": f"median ratio >= {COMPUTE_TARGET}",
        "variants": figures,
    }


def measure(quick: bool = False, steps: int = CHAIN_STEPS) -> dict[str, Any]:
    """Convert the model, measure the host baselines, then the farm; the JSON-able result."""
    rounds, window_s = (50, 1.0) if quick else (400, 4.0)
    x = np.random.default_rng(0).standard_normal((BATCH, *IMAGE)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="nfo-") as work:
        source, om = _convert(Path(work))
        baselines = _baselines(source, x, rounds, window_s)
        expected = _host_session(source).run(None, {"x": x})[0]
        exec_us, request_us, throughput = _farm_figures(om, x, expected, rounds, window_s)
    raw_us = baselines["ort_run"]["p50_us"]
    parallel = baselines["ort_parallel"]["requests_per_s"]
    return {
        "schema": "npufarm.bench.onnx/1",
        "model": {"name": "tiny_cnn", "input": [BATCH, *IMAGE], "dtype": "float32"},
        "baselines": baselines,
        "farm": {
            "exec": {
                "p50_us": exec_us,
                "ratio": exec_us / raw_us,
                "overhead_us": exec_us - raw_us,
                "target": "overhead_us <= 500",
                "meets_target": exec_us - raw_us <= 500,
            },
            "request": {
                "p50_us": request_us,
                "ratio": request_us / raw_us,
                "overhead_us": request_us - raw_us,
            },
            "throughput_2cards": {
                "requests_per_s": throughput,
                "ratio": throughput / parallel,
                "target": "ratio >= 0.75",
                "meets_target": throughput / parallel >= 0.75,
            },
        },
        "compute": measure_compute(quick, steps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ONNX on the farm vs onnxruntime on the host")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for the tests)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument(
        "--chain-steps", type=int, default=CHAIN_STEPS, help="MatMuls of the compute model"
    )
    parser.add_argument(
        "--compute-only", action="store_true", help="only the real-compute part (goal 4)"
    )
    args = parser.parse_args(argv)
    if args.chain_steps < 1:
        parser.error("--chain-steps must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    if args.compute_only:
        result = {
            "schema": "npufarm.bench.onnx/1",
            "compute": measure_compute(args.quick, args.chain_steps),
        }
    else:
        result = measure(quick=args.quick, steps=args.chain_steps)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
