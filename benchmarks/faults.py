"""Fault detection and recovery times: ``python -m benchmarks.faults [--quick] [--out FILE]``.

- detection, crash: SIGKILL a card's process; time until the client's device reports abnormal
  (the broker sees the process sentinel at once; no heartbeat expiry is needed);
- detection, silent card: inject ``heartbeat_loss`` (the process lives, its heartbeats stop);
  time until the client sees 507010, against the configured heartbeat expiry;
- recovery: ``reset_device`` + ``set_device`` (the supervisor restarts the card, new epoch) until
  the first task on the restarted card completes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import acl
from client import RUNTIME
from farm.admin import broker_request, up_command

__all__ = ["measure"]

_REPO = Path(__file__).resolve().parents[1]
_CONFIG = _REPO / "configs" / "ci.toml"
_MODEL = _REPO / "configs" / "models" / "identity.toml"


def _start_farm(runtime_dir: Path) -> subprocess.Popen:
    config = runtime_dir / "bench.toml"  # ci.toml, but a card may restart as often as we kill it
    config.write_text(_CONFIG.read_text().replace("restart_max = 3", "restart_max = 1000"))
    process = subprocess.Popen(
        up_command(config, runtime_dir, "fb", 2, "--watch-parent", str(os.getpid())),
        cwd=_REPO,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (runtime_dir / "fb.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("benchmark farm did not start")
        time.sleep(0.01)
    return process


def _first_task_s(acl) -> float:
    """set_device + one execute on device 0; seconds."""
    started = time.perf_counter()
    assert acl.rt.set_device(0) == 0
    model_id, ret = acl.mdl.load_from_file(str(_MODEL))
    assert ret == 0
    n = 1024 * 4
    a, _ = acl.rt.malloc(n, 0)
    b, _ = acl.rt.malloc(n, 0)
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(a, n))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(b, n))
    assert acl.mdl.execute(model_id, inputs, outputs) == 0
    return time.perf_counter() - started


def _wait_lost(acl, timeout_s: float = 10.0) -> float:
    started = time.perf_counter()
    while acl.rt.query_device_status(0) != (1, 0):
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError("the loss was not detected")
        time.sleep(0.0005)
    return time.perf_counter() - started


def measure(rounds: int = 5) -> dict[str, Any]:
    runtime_dir = Path(tempfile.mkdtemp(prefix="nfb", dir="/tmp"))
    farm = _start_farm(runtime_dir)
    address = f"ipc://{runtime_dir}/fb.sock"
    os.environ["NPUFARM_ADDRESS"] = address
    crash, silent, recovery = [], [], []
    try:
        assert acl.init() == 0
        expiry_s = RUNTIME.session.heartbeat_expiry_s
        _first_task_s(acl)
        for round_index in range(rounds):
            pid = RUNTIME.session.card(0)["pid"]
            if round_index % 2 == 0:
                os.kill(pid, signal.SIGKILL)
                crash.append(_wait_lost(acl))
            else:
                rule = {"kind": "heartbeat_loss", "card": 0}
                broker_request(address, {"op": "inject", "rule": rule})
                silent.append(_wait_lost(acl))
                broker_request(address, {"op": "recover", "kinds": ["heartbeat_loss"]})
            assert acl.rt.reset_device(0) == 0
            recovery.append(_first_task_s(acl))
        assert acl.rt.reset_device(0) == 0
        assert acl.finalize() == 0
    finally:
        os.environ.pop("NPUFARM_ADDRESS", None)
        farm.send_signal(signal.SIGTERM)
        try:
            farm.wait(timeout=15)
        except subprocess.TimeoutExpired:
            farm.kill()
            farm.wait()
        shutil.rmtree(runtime_dir, ignore_errors=True)

    def stats(values: list[float]) -> dict[str, float]:
        ms = [v * 1000.0 for v in values]
        return {"n": len(ms), "median_ms": statistics.median(ms), "max_ms": max(ms)}

    return {
        "heartbeat_expiry_ms": expiry_s * 1000.0,
        "detect_crash": stats(crash),
        "detect_silent_card": {
            **stats(silent),
            "ratio_to_expiry": statistics.median(silent) / expiry_s,
        },
        "recover_reset_to_first_task": stats(recovery),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    result = measure(rounds=4 if args.quick else 10)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
