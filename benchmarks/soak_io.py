"""The chaos soak's files and samples: the farm config, models and fault plan it writes, the client
journals it reads back, and the psutil resource samples of the farm's processes.

Why apart from soak.py: these are the soak's inputs and raw observations, kept free of
decisions so :mod:`benchmarks.soak_checks` judges plain data.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from benchmarks.soak_checks import Session
from core.faults import FaultPlan

__all__ = ["write_config", "write_models", "write_plan", "read_journals", "resource_sample"]

logger = logging.getLogger(__name__)

LIGHT_MODELS = ("add", "identity", "matmul", "classifier")
#: heavy: [2048, 4096] x [4096, 4096] (~69 GFLOP, 64 MiB of weights per load; ~0.1-0.5 s of
#: real compute on this box; cards must keep beating through it)
HEAVY_MODEL = """\
[model]
name = "heavy"
kind = "matmul"
seed = 3

[model.params]
units = 4096

[[inputs]]
name = "x"
dtype = "float32"
shape = [2048, 4096]

[[outputs]]
name = "y"
dtype = "float32"
shape = [2048, 4096]
"""


def write_config(path: Path, args: Any) -> Path:
    path.write_text(
        f"""\
[farm]
name = "soak"
endpoint = "ipc"
time_scale = 1.0
heartbeat_interval_s = {args.heartbeat_interval_s}
heartbeat_liveness = {args.liveness}
restart_max = 1000
restart_window_s = 10.0
skip_sync = "poison"
sanitizer = "off"
seed = {args.seed}

[cards]
count = {args.cards}
profile = {{ base = "910b", name = "910b-soak", hbm_bytes = "512MiB" }}
"""
    )
    return path


def write_models(folder: Path, models: Path, heavy: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in LIGHT_MODELS:
        shutil.copy(models / f"{name}.toml", folder / f"{name}.toml")
    if heavy:
        (folder / "heavy.toml").write_text(HEAVY_MODEL)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_plan(path: Path, plan: FaultPlan) -> Path:
    lines = [f"seed = {plan.seed}"]
    for rule in plan.rules:
        lines += ["", "[[fault]]"] + [f"{k} = {_toml_value(v)}" for k, v in rule.to_dict().items()]
    path.write_text("\n".join(lines) + "\n")
    if FaultPlan.from_toml(path) != plan:  # what the farm reads is what was meant
        raise RuntimeError(f"{path} does not read back as the plan written")
    return path


def read_journals(paths: Iterable[Path]) -> list[Session]:
    """Sessions of every client journal (``client<slot>-g<generation>.jsonl``)."""
    sessions: list[Session] = []
    for path in paths:
        slot = path.stem.split("-")[0].removeprefix("client")
        client = int(slot) if slot.isdigit() else -1
        current: dict[int, Session] = {}
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a SIGKILL cut
            sid = entry.get("sid")
            kind = entry.get("e")
            if kind == "session":
                current[sid] = Session(client, sid)
                sessions.append(current[sid])
                continue
            s = current.get(sid)
            if s is None:
                continue
            if kind == "intent":
                s.intent += entry["n"]
            elif kind == "sub":
                s.sub += entry["n"]
            elif kind == "iter":
                s.iterations += 1
                s.codes[entry["code"]] += 1
                if entry.get("wrong"):
                    s.wrong.append((entry["card"], entry["epoch"]))
            elif kind == "final":
                s.finished = entry.get("ret") == 0 and entry.get("ledger") is not None
                s.ledger = entry.get("ledger")
    return sessions


def _proc(pid: int) -> dict[str, int] | None:
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            memory = process.memory_info()
            return {
                "pid": pid,
                "fds": process.num_fds(),
                "threads": process.num_threads(),
                "rss": memory.rss - memory.shared,  # anonymous: shm pages are the HBM's
            }
    except psutil.Error:
        return None


def resource_sample(farm: Any, status: dict[str, Any]) -> dict[str, Any]:
    """fds / threads / anonymous RSS of the broker and each ready card, and the farm's
    /dev/shm segments (``stray_segments``: those that are no ready card's HBM)."""
    procs = {"broker": _proc(farm.process.pid)}
    for card in status["cards"]:
        if card["state"] == "ready" and card.get("pid"):
            procs[f"card{card['device_id']}"] = _proc(card["pid"])
    segments = sorted(p.name for p in Path("/dev/shm").glob(f"npufarm-{farm.farm_id}-*"))
    hbm = {c.get("shm_name") for c in status["cards"] if c["state"] == "ready"}
    return {
        "shm_segments": len(segments),
        "stray_segments": [s for s in segments if s not in hbm],
        "procs": {name: p for name, p in procs.items() if p is not None},
    }
