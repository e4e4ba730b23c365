"""``npufarm demo`` / ``make demo``: a farm, a short multi-card workload, a summary.

Starts a farm from the config (default: ``configs/default.toml``, 4 cards), runs one host thread
per card in the pyACL style (set_device, stream, load model, malloc, memcpy, execute_async_v2
with an exec-config sync timeout, synchronize_stream, memcpy back), checks every output against
the model computed on the host, and prints per-card latency and the farm's own counters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.models import load_model_file, reference

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[1]
_MODEL = _REPO / "configs" / "models" / "matmul.toml"
_H2D, _D2H = 1, 2
_STREAM_SYNC_TIMEOUT = 0


@dataclass
class CardResult:
    device_id: int
    latencies_ms: list[float] = field(default_factory=list)
    correct: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    wall_s: float = 0.0


def _card_worker(acl, device_id: int, requests: int, result: CardResult, progress) -> None:
    spec = load_model_file(_MODEL)
    assert acl.rt.set_device(device_id) == 0
    stream, _ = acl.rt.create_stream()
    model_id, ret = acl.mdl.load_from_file(str(_MODEL))
    if ret != 0:
        result.errors[ret] = result.errors.get(ret, 0) + 1
        return
    n_in, n_out = spec.inputs[0].nbytes, spec.outputs[0].nbytes
    d_in, _ = acl.rt.malloc(n_in, 0)
    d_out, _ = acl.rt.malloc(n_out, 0)
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(d_in, n_in))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(d_out, n_out))
    config = acl.mdl.create_exec_config_handle()
    acl.mdl.set_exec_config_opt(config, _STREAM_SYNC_TIMEOUT, 2000)
    rng = np.random.default_rng(device_id)
    y = np.empty(spec.outputs[0].shape, np.float32)
    started = time.perf_counter()
    for _ in range(requests):
        x = rng.standard_normal(spec.inputs[0].shape).astype(np.float32)
        t0 = time.perf_counter()
        acl.rt.memcpy(d_in, n_in, acl.util.numpy_to_ptr(x), n_in, _H2D)
        ret = acl.mdl.execute_async_v2(model_id, inputs, outputs, stream, config)
        if ret == 0:
            ret = acl.rt.synchronize_stream(stream)
        if ret == 0:
            acl.rt.memcpy(acl.util.numpy_to_ptr(y), n_out, d_out, n_out, _D2H)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            result.correct += bool(np.allclose(y, reference(spec, [x])[0], atol=1e-4))
        else:
            result.errors[ret] = result.errors.get(ret, 0) + 1
        progress(1)
    result.wall_s = time.perf_counter() - started
    acl.mdl.destroy_exec_config_handle(config)
    acl.mdl.unload(model_id)
    acl.rt.reset_device(device_id)


def _render(results: list[CardResult], farm: dict, ledger: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from farm.cli import render_status

    table = Table(title="npufarm demo: matmul [1,256] on every card, one thread per card")
    for column in ("card", "requests", "correct", "errors", "p50 ms", "p99 ms", "req/s"):
        table.add_column(column, justify="right")
    for r in results:
        lat = np.array(r.latencies_ms) if r.latencies_ms else np.array([np.nan])
        table.add_row(
            str(r.device_id),
            str(len(r.latencies_ms) + sum(r.errors.values())),
            str(r.correct),
            ", ".join(f"{c}×{n}" for c, n in r.errors.items()) or "0",
            f"{np.percentile(lat, 50):.2f}",
            f"{np.percentile(lat, 99):.2f}",
            f"{len(r.latencies_ms) / r.wall_s:.0f}" if r.wall_s else "-",
        )
    console = Console()
    console.print(table)
    render_status(farm)
    console.print(f"client ledger: {ledger}")


def _settled_status(address: str, submitted: int, timeout_s: float = 3.0) -> dict:
    """The farm's status once the cards' heartbeats have reported every submitted task."""
    from farm.cli import query_status

    deadline = time.monotonic() + timeout_s
    while True:
        status = query_status(address)
        ended = sum(
            c["stats"].get("done", 0) + c["stats"].get("failed", 0) for c in status["cards"]
        )
        if ended >= submitted or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def run_demo(config_path: str | None, requests: int = 200) -> int:
    """Run the demo; return a process exit code (0 when every output was correct)."""
    from rich.progress import Progress

    import acl
    from client import RUNTIME
    from client.embedded import EmbeddedFarm

    farm = EmbeddedFarm(config_path)
    os.environ["NPUFARM_ADDRESS"] = farm.address
    try:
        if acl.init() != 0:
            logger.error("could not reach the farm: %s", acl.get_recent_err_msg())
            return 1
        count, _ = acl.rt.get_device_count()
        results = [CardResult(d) for d in range(count)]
        with Progress(transient=True) as progress:
            task = progress.add_task(f"{count} cards × {requests} requests", total=count * requests)

            def advance(n: int) -> None:
                progress.update(task, advance=n)

            threads = [
                threading.Thread(target=_card_worker, args=(acl, d, requests, results[d], advance))
                for d in range(count)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        ledger = RUNTIME.session.ledger.as_dict()
        acl.finalize()
        status = _settled_status(farm.address, ledger["submitted"])
        _render(results, status, ledger)
        ok = all(r.correct == requests and not r.errors for r in results)
        return 0 if ok else 1
    finally:
        os.environ.pop("NPUFARM_ADDRESS", None)
        farm.stop()
