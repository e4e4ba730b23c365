"""The admin client: how every tool (the CLI, ``npufarm run``, the load tester, the demo,
benchmarks) finds a running farm and talks to its broker from another process.

- :func:`find_address`: ``NPUFARM_ADDRESS``, else the endpoint in the named farm's state file
  (:mod:`core.statefile`);
- :func:`query_status`: the farm's description (cards, states, live stats, ledger, faults);
- :func:`broker_request`: an admin request, answered with a dict whose nonzero ``code`` means
  refused; :func:`inject`, :func:`recover` and :func:`write_trace` name its ops;
- :func:`address_in_use`, :func:`start_detached` and :func:`stop_farm`: ``npufarm up --detach``
  (a daemon farm per node, its log in a file) and ``npufarm down``.

::

    npufarm up --detach ──Popen(start_new_session)──▶ python -m npufarm up ... (the daemon)
          │  stdout/stderr ─────────────────────────▶ <runtime dir>/<name>.log
          └─ polls <runtime dir>/<name>.json until the daemon's pid writes it (every card up),
             prints the address, exits 0; the daemon exits or never gets ready: the log's
             tail and exit 1

A reply is awaited with :func:`core.protocol.wait_readable` against a deadline: a float timeout
given to ``socket.poll`` is truncated to whole milliseconds (0.0004 s would not wait at all).
"""

from __future__ import annotations

import os
import signal
import socket as socket_module
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import protocol as proto
from core import statefile
from core.config import FarmConfig
from core.errors import NpuFarmError
from core.protocol import Cmd

__all__ = [
    "address_in_use",
    "broker_request",
    "find_address",
    "inject",
    "query_status",
    "recover",
    "start_detached",
    "stop_farm",
    "stop_process",
    "up_command",
    "write_trace",
]


def find_address(load_config: Callable[[], FarmConfig]) -> str:
    """The address of the farm to talk to: ``NPUFARM_ADDRESS`` if set (blank counts as unset,
    as in :func:`core.statefile.resolve_address`), else the endpoint in the state file of the
    farm ``load_config()`` names (the config is loaded only then, so a set address needs no
    config file)."""
    address = os.environ.get(statefile.ADDRESS_ENV, "").strip()
    if address:
        return address
    config = load_config()
    state = statefile.read_state(statefile.state_path(config))
    if state is None:
        raise NpuFarmError(
            f"no running farm named {config.name!r} "
            f"(no state file in {config.runtime_path(create=False)})"
        )
    return state["endpoint"]


def query_status(address: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask a running farm for its description (cards, states, live stats, ledger, faults)."""
    return proto.ask_broker(address, Cmd.STATUS, {}, timeout_s)


def broker_request(address: str, body: dict[str, Any], timeout_s: float = 5.0) -> dict:
    """A broker request (inject, recover, ...)."""
    return proto.ask_broker(address, Cmd.REQUEST, {"rid": 1, **body}, timeout_s)


def inject(address: str, rule: dict[str, Any], timeout_s: float = 5.0) -> dict:
    """Add a fault rule (a :meth:`core.faults.FaultRule.to_dict`) to a running farm."""
    return broker_request(address, {"op": "inject", "rule": rule}, timeout_s)


def recover(address: str, kinds: list[str] | None = None, timeout_s: float = 5.0) -> dict:
    """Clear a running farm's injected faults (of ``kinds``, or all); restart its lost cards."""
    return broker_request(address, {"op": "recover", "kinds": kinds or None}, timeout_s)


def write_trace(address: str, path: str, timeout_s: float = 5.0) -> dict:
    """Have a running farm write its trace to ``path`` (absolute: the farm's cwd may differ)."""
    return broker_request(address, {"op": "trace", "path": path}, timeout_s)


def up_command(config: Path, runtime_dir: Path | str, name: str, cards: int, *extra: str) -> list:
    """The ``python -m npufarm up`` command line every harness starts a farm with."""
    return [sys.executable, "-m", "npufarm", "up", "--config", str(config)] + [
        *("--runtime-dir", str(runtime_dir), "--name", name, "--cards", str(cards), *extra)
    ]


_PROBE_TIMEOUT_S = 0.5
_READY_POLL_S = 0.05
_LOG_TAIL_LINES = 20


def address_in_use(address: str) -> str | None:
    """Why a new farm cannot bind ``address`` (a farm answers there, or a tcp port is taken);
    None when it is free. An ipc socket file nobody answers on is stale (a farm unlinks it)."""
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        if host in ("*", "0.0.0.0", ""):
            host = "127.0.0.1"
        try:
            with socket_module.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S):
                return f"{address} is already in use"
        except (OSError, ValueError):
            return None
    if address.startswith("ipc://") and not os.path.exists(address[len("ipc://") :]):
        return None
    try:
        farm = query_status(address, timeout_s=_PROBE_TIMEOUT_S)
    except NpuFarmError:
        return None
    return f"farm {farm.get('name')!r} (pid {farm.get('pid')}) is already running at {address}"


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(the log is empty)"


def start_detached(
    command: list[str], log_path: Path, state_path: Path, timeout_s: float
) -> dict[str, Any]:
    """Start ``command`` (a ``npufarm up``) as a daemon in its own session, its output in
    ``log_path``, and return its state once it wrote ``state_path``; ``NpuFarmError`` with the
    log's tail if it exits first or is not ready within ``timeout_s`` (then it is stopped)."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        state = statefile.read_state(state_path)
        if state is not None and state.get("pid") == process.pid:
            process.returncode = 0  # left running on purpose: no "still running" warning
            return state
        if process.poll() is not None:
            raise NpuFarmError(
                f"the farm exited with code {process.returncode} before it was up; "
                f"the end of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(_READY_POLL_S)
    stop_process(process)
    raise NpuFarmError(
        f"the farm was not up within {timeout_s:g}s (stopped it); the end of {log_path}:\n"
        f"{_log_tail(log_path)}"
    )


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM a farm process we started (it stops its cards and unlinks its segments) and
    wait; SIGKILL it if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_farm(state: dict[str, Any], timeout_s: float = 15.0) -> list[str]:
    """SIGTERM the farm of ``state`` and wait until it, its cards and its shared-memory
    segments are gone; what was still there at ``timeout_s`` (empty: all gone)."""
    pid = state["pid"]
    cards = [c.get("pid") for c in state.get("cards") or [] if isinstance(c, dict)]
    prefix = f"npufarm-{state.get('name')}-{pid}-"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline_s = time.monotonic() + timeout_s
    while True:
        left = [f"farm pid {pid}"] if statefile.pid_alive(pid) else []
        left += [f"card pid {p}" for p in cards if isinstance(p, int) and statefile.pid_alive(p)]
        left += [f"/dev/shm/{n}" for n in _segments(prefix)]
        if not left or time.monotonic() >= deadline_s:
            return left
        time.sleep(_READY_POLL_S)


def _segments(prefix: str, shm_dir: str = "/dev/shm") -> list[str]:
    try:
        return sorted(name for name in os.listdir(shm_dir) if name.startswith(prefix))
    except OSError:
        return []
