"""A real farm for the fuzzer and the soak, and the probes both use to judge its health.

Why here and not in tests/: ``python -m benchmarks.fuzz`` and ``python -m benchmarks.soak`` run
outside pytest and must start, watch and stop a farm the same way the system tests do
(``python -m npufarm up`` on an ipc endpoint in a short temp dir). The farm's stderr goes to a log
file: the soak reads the broker's "card N epoch E lost: ..." lines from it to tell every loss
the farm declared.

The probes are what "the farm is healthy" means for both harnesses: it answers STATUS, a pyACL
client still computes the right bytes, its processes are alive, its ledger balances.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import acl
from farm.admin import up_command

__all__ = [
    "REPO",
    "MODELS",
    "FarmProcess",
    "start_farm",
    "pid_alive",
    "malformed_total",
    "ledger_problems",
    "acl_roundtrip",
    "LOSS_LINE",
]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CI_CONFIG = REPO / "configs" / "ci.toml"
MODELS = REPO / "configs" / "models"
#: the broker's log line for a declared loss (farm/broker.py ``lose``)
LOSS_LINE = re.compile(r"card (\d+) epoch (\d+) lost: (.*)$")


@dataclass
class FarmProcess:
    process: subprocess.Popen
    runtime_dir: Path
    name: str
    state: dict
    log_path: Path
    _log: Any = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return self.state["endpoint"]

    @property
    def farm_id(self) -> str:
        return self.state.get("farm_id") or f"{self.name}-{self.process.pid}"

    @property
    def backend_address(self) -> str:
        return f"ipc://{self.runtime_dir}/{self.farm_id}-cards.sock"

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_farm(
    cards: int = 2,
    extra: list[str] | None = None,
    config: Path = CI_CONFIG,
    log_path: Path | None = None,
    timeout_s: float = 60.0,
) -> FarmProcess:
    """``python -m npufarm up`` in a fresh runtime dir; returns once its state file exists."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="nfz", dir="/tmp"))
    name = f"z{os.getpid()}"
    log_path = log_path or runtime_dir / "farm.log"
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in stop())
    cmd = up_command(config, runtime_dir, name, cards, *(extra or []))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
    process = subprocess.Popen(
        cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
    )
    state_file = runtime_dir / f"{name}.json"
    deadline = time.monotonic() + timeout_s
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log.close()
            text = log_path.read_text(errors="replace")[-2000:]
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise RuntimeError(f"farm did not come up (exit {process.returncode}): {text}")
        time.sleep(0.02)
    state = json.loads(state_file.read_text())
    return FarmProcess(process, runtime_dir, name, state, log_path, log)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except Exception:  # psutil.NoSuchProcess and friends
        return False


def malformed_total(describe: Mapping[str, Any]) -> int | None:
    """The farm's count of malformed messages (broker ``malformed`` plus the cards' own, each a
    number or a map of numbers); None when the farm reports no such count."""

    def total(value: Any) -> int:
        if isinstance(value, bool):
            return 0
        if isinstance(value, int | float):
            return int(value)
        if isinstance(value, Mapping):
            return sum(total(v) for v in value.values())
        return 0

    found = "malformed" in describe
    count = total(describe.get("malformed"))
    for card in describe.get("cards") or []:
        stats = card.get("stats") or {}
        if "malformed" in stats:
            found = True
            count += total(stats["malformed"])
    return count if found else None


def ledger_problems(ledger: Mapping[str, Any], drained: bool = True) -> list[str]:
    """Why a farm ledger does not balance (empty when it does)."""
    failed = sum(int(n) for n in (ledger.get("failed") or {}).values())
    ended = ledger["completed"] + failed + ledger["dropped"]
    problems = []
    if ledger["in_flight"] < 0:
        problems.append(f"ledger in_flight {ledger['in_flight']} < 0 (a task ended twice)")
    if ledger["submitted"] != ended + ledger["in_flight"]:
        problems.append(
            f"ledger: submitted {ledger['submitted']} != completed {ledger['completed']} + "
            f"failed {failed} + dropped {ledger['dropped']} + in flight {ledger['in_flight']}"
        )
    if drained and ledger["in_flight"] != 0:
        problems.append(f"ledger: {ledger['in_flight']} tasks still in flight after draining")
    return problems


def acl_roundtrip(address: str, device_id: int, model: str = "add") -> str | None:
    """One pyACL session against ``address``: load a model, copy inputs in, execute, read the
    output back and compare with numpy. None when all is right, else what went wrong."""
    previous = os.environ.get("NPUFARM_ADDRESS")
    os.environ["NPUFARM_ADDRESS"] = address
    try:
        ret = acl.init()
        if ret != 0:
            return f"acl.init returned {ret}"
        try:
            return _roundtrip(acl, device_id, model)
        finally:
            if (final := acl.finalize()) != 0:
                logger.warning("acl.finalize returned %s", final)
    finally:
        if previous is None:
            os.environ.pop("NPUFARM_ADDRESS", None)
        else:
            os.environ["NPUFARM_ADDRESS"] = previous


def _roundtrip(acl, device_id: int, model: str) -> str | None:
    h2d, d2h = 1, 2
    if (ret := acl.rt.set_device(device_id)) != 0:
        return f"set_device({device_id}) returned {ret}"
    model_id, ret = acl.mdl.load_from_file(str(MODELS / f"{model}.toml"))
    if ret != 0:
        return f"load_from_file({model}) returned {ret}"
    desc = acl.mdl.create_desc()
    acl.mdl.get_desc(desc, model_id)
    size = acl.mdl.get_input_size_by_index(desc, 0)
    ptrs = []
    for _ in range(3):
        ptr, ret = acl.rt.malloc(size, 0)
        if ret != 0:
            return f"malloc({size}) on device {device_id} returned {ret}"
        ptrs.append(ptr)
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    for ptr in ptrs[:2]:
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(ptr, size))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(ptrs[2], size))
    rng = np.random.default_rng(device_id)
    x = rng.standard_normal(size // 4).astype(np.float32)
    y = rng.standard_normal(size // 4).astype(np.float32)
    for ptr, host in zip(ptrs[:2], (x, y)):
        if (ret := acl.rt.memcpy(ptr, size, acl.util.numpy_to_ptr(host), size, h2d)) != 0:
            return f"memcpy H2D returned {ret}"
    if (ret := acl.mdl.execute(model_id, inputs, outputs)) != 0:
        return f"execute on device {device_id} returned {ret}"
    out = np.empty_like(x)
    if (ret := acl.rt.memcpy(acl.util.numpy_to_ptr(out), size, ptrs[2], size, d2h)) != 0:
        return f"memcpy D2H returned {ret}"
    expected = x + y if model == "add" else x
    if not np.array_equal(out, expected):
        bad = int(np.count_nonzero(out != expected))
        return f"device {device_id}: {bad} of {out.size} output values wrong"
    for ptr in ptrs:
        acl.rt.free(ptr)
    acl.mdl.unload(model_id)
    acl.rt.reset_device(device_id)
    return None
