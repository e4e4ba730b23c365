"""``npufarm demo`` / ``make demo``: a fault experiment on a default 4-card farm, with a report.

1. Starts a farm from the config (default ``configs/default.toml``: 4 Ascend 910B-class cards)
   with the fault plan ``configs/faults/demo.toml`` (card 1 a 3× straggler), tracing on; a link
   drop of card 3 is injected at run time, timed to fall 3 s into the load (however long the
   load generator took to start).
2. Checks real compute: one thread per card in the pyACL style runs the matmul model and compares
   every output with the model computed on the host; then the same with an ONNX CNN converted by
   ``npufarm atc`` (``examples/pyacl/tiny_cnn``), against onnxruntime on the host (skipped without
   the ``onnx`` extra).
3. Runs an open-loop Poisson load on every card through ``npufarm bench`` (latency from the
   intended send time); when card 3 is lost the load generator sees 507010, resets the device
   and carries on with the restarted card.
4. Writes the report into an output folder and prints its path: ``result.json``,
   ``summary.csv``, ``requests.jsonl``, PNG plots, the farm's ``trace.json`` (ui.perfetto.dev)
   and ``faults.jsonl``; the terminal gets the summary tables.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

import acl
from client.embedded import EmbeddedFarm
from core.errors import NpuFarmError
from device.atc import convert
from device.models import load_model_file, reference
from farm.admin import broker_request, query_status
from loadtest.loadgen import run_bench
from loadtest.plan import BenchConfig
from loadtest.plots import render_all
from loadtest.render import load_samples, render_terminal

__all__ = ["demo_config", "run_demo"]

logger = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[1]
_MODEL = _REPO / "configs" / "models" / "matmul.toml"
_PLAN = _REPO / "configs" / "faults" / "demo.toml"
_H2D, _D2H = 1, 2


def _check_card(
    acl, device_id: int, model: Path, requests: int, results: dict[int, tuple[int, int]]
) -> None:
    """pyACL style on one card: outputs must equal the host reference. (correct, total)."""
    spec = load_model_file(model)
    correct = 0
    results[device_id] = (0, requests)  # until the checks ran: none of them counts as correct
    ret = acl.rt.set_device(device_id)
    if ret != 0:
        logger.error("card %d: set_device returned %d; its compute check failed", device_id, ret)
        return
    stream, _ = acl.rt.create_stream()
    model_id, _ = acl.mdl.load_from_file(str(model))
    n_in, n_out = spec.inputs[0].nbytes, spec.outputs[0].nbytes
    d_in, _ = acl.rt.malloc(n_in, 0)
    d_out, _ = acl.rt.malloc(n_out, 0)
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, n_in))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(d_out, n_out))
    rng = np.random.default_rng(device_id)
    y = np.empty(spec.outputs[0].concrete_shape, np.float32)
    for _ in range(requests):
        x = rng.standard_normal(spec.inputs[0].concrete_shape).astype(np.float32)
        acl.rt.memcpy(d_in, n_in, acl.util.numpy_to_ptr(x), n_in, _H2D)
        if acl.mdl.execute_async(model_id, inputs, outputs, stream) == 0 and (
            acl.rt.synchronize_stream(stream) == 0
        ):
            acl.rt.memcpy(acl.util.numpy_to_ptr(y), n_out, d_out, n_out, _D2H)
            correct += bool(np.allclose(y, reference(spec, [x])[0], atol=1e-4))
    acl.mdl.unload(model_id)
    acl.rt.reset_device(device_id)
    results[device_id] = (correct, requests)


def _check_compute(address: str, model: Path, requests: int) -> dict[int, tuple[int, int]]:
    os.environ["NPUFARM_ADDRESS"] = address
    results: dict[int, tuple[int, int]] = {}
    ret = acl.init()
    if ret != 0:
        raise NpuFarmError(f"demo: acl.init() returned {ret} against the farm at {address}")
    try:
        count, _ = acl.rt.get_device_count()
        threads = [
            threading.Thread(target=_check_card, args=(acl, d, model, requests, results))
            for d in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        acl.finalize()
    return results


_ONNX_REQUESTS = 10
_ONNX_MODULES = ("onnx", "onnxruntime")


def _convert_tiny_cnn(out: Path) -> Path | None:
    """examples/pyacl/tiny_cnn as ``out/tiny_cnn.om`` (None without the onnx extra or the
    repository's examples folder)."""
    builder = _REPO / "examples" / "pyacl" / "tiny_cnn.py"
    if not builder.exists() or None in (importlib.util.find_spec(m) for m in _ONNX_MODULES):
        return None
    module_spec = importlib.util.spec_from_file_location("npufarm_tiny_cnn", builder)
    tiny_cnn = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(tiny_cnn)
    source = tiny_cnn.build_cnn(out / "tiny_cnn.onnx")
    shape = ",".join(map(str, (4, *tiny_cnn.IMAGE)))
    return convert(
        str(source), str(out / "tiny_cnn"), soc_version="Ascend910B", input_shape=f"x:{shape}"
    )


_DROP_INTO_LOAD_S = 3.0  # the link drop falls this long after the load (warm-up included) starts


def _link_drop(address: str, at_monotonic_s: float) -> float:
    """Inject a disconnect of card 3 at ``at_monotonic_s`` (this host's monotonic clock), as a
    farm-time rule; return that farm time."""
    at_s = query_status(address)["uptime_s"] + max(0.0, at_monotonic_s - time.monotonic())
    rule = {"kind": "disconnect", "card": 3, "at_s": round(at_s, 3), "name": "card3-link-drop"}
    reply = broker_request(address, {"op": "inject", "rule": rule})
    if reply.get("code"):
        raise NpuFarmError(f"demo: could not inject the link drop: {reply.get('error', reply)}")
    return at_s


def _check_all(console: Console, address: str, out: Path, check_requests: int) -> dict:
    """Step 2: the matmul check on every card, then the ONNX CNN one when it can run; the
    (correct, total) per card (ONNX ones under ``-1 - card``)."""
    checks = _check_compute(address, _MODEL, check_requests)
    for device_id, (correct, total) in sorted(checks.items()):
        console.print(f"card {device_id}: {correct}/{total} matmul outputs equal the host's")
    onnx_model = _convert_tiny_cnn(out)
    if onnx_model is None:
        console.print("ONNX check skipped: needs the onnx extra and examples/pyacl")
        return checks
    onnx_checks = _check_compute(address, onnx_model, _ONNX_REQUESTS)
    for device_id, (correct, total) in sorted(onnx_checks.items()):
        console.print(
            f"card {device_id}: {correct}/{total} outputs of an ONNX CNN "
            "(npufarm atc .om) equal host onnxruntime's"
        )
    return {**checks, **{-1 - d: v for d, v in onnx_checks.items()}}


def _load(console: Console, address: str, out: Path, duration_s: float, rate: float) -> dict:
    """Step 3: the open-loop load with the link drop timed into it; the bench result."""
    console.print(
        f"open-loop Poisson load, {rate:g} req/s for {duration_s:g} s; card 1 is a 3× "
        f"straggler, card 3 drops its link {_DROP_INTO_LOAD_S:g} s into the load and is "
        "reset by the clients"
    )

    def on_phase_start(name: str, t0: float) -> None:
        at_s = _link_drop(address, t0 + _DROP_INTO_LOAD_S)
        logger.info("phase %s: card 3 link drop at farm time %.1f s", name, at_s)

    config = demo_config(out, rate, duration_s, address=address, model=str(_MODEL), workers=2)
    return run_bench(config, on_phase_start=on_phase_start)


def demo_config(out: Path, rate: float, duration_s: float, **target: Any) -> BenchConfig:
    """The demo's load (open-loop Poisson at ``rate``, per-request samples into ``out``, SLO
    50 ms) against ``target`` (``address=`` or ``ray=``, the model, ...); the local and the
    Ray demo share it."""
    return BenchConfig(
        mode="open",
        rates=(rate,),
        arrival="poisson",
        duration_s=duration_s,
        warmup_s=0.5,
        slo_ms=50.0,
        per_request=True,
        out_dir=str(out),
        seed=2026,
        sync_timeout_ms=2000,
        live=None,
        **target,
    )


def _report(console: Console, result: dict, out: Path, trace: Path) -> None:
    """Step 4: the terminal tables, the PNGs, and the list of what the folder holds."""
    samples = list(load_samples(out / "requests.jsonl"))
    render_terminal(result, console)
    pictures = render_all(result, out, samples=samples)
    console.print(f"\nreport: {out}")
    for path in [out / "result.json", out / "summary.csv", *pictures, trace, out / "faults.jsonl"]:
        console.print(f"  {path.name}" + ("" if path.exists() else "  (missing)"))


def run_demo(
    config_path: str | None,
    out_dir: str | None = None,
    duration_s: float = 8.0,
    rate: float = 400.0,
    check_requests: int = 50,
) -> int:
    """Run the experiment; return 0 when compute was correct and the run completed."""
    console = Console()
    out = Path(out_dir or f"out/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.json"
    farm = EmbeddedFarm(
        config_path,
        faults=str(_PLAN),
        extra=["--trace", str(trace), "--fault-log", str(out / "faults.jsonl")],
    )
    try:
        checks = _check_all(console, farm.address, out, check_requests)
        result = _load(console, farm.address, out, duration_s, rate)
    finally:
        os.environ.pop("NPUFARM_ADDRESS", None)
        farm.stop()  # the farm writes trace.json as it stops
    _report(console, result, out, trace)
    compute_ok = all(correct == total for correct, total in checks.values())
    return 0 if compute_ok and trace.exists() else 1
