"""The admin client: how every tool (the CLI, ``npufarm run``, the load tester, the demo,
benchmarks) finds a running farm and talks to its broker from another process.

- :func:`find_address`: ``NPUFARM_ADDRESS``, else the endpoint in the named farm's state file
  (:mod:`core.statefile`);
- :func:`query_status`: the farm's description (cards, states, live stats, ledger, faults);
- :func:`broker_request`: an admin request, answered with a dict whose nonzero ``code`` means
  refused; :func:`inject`, :func:`recover` and :func:`write_trace` name its ops.

A reply is awaited with :func:`core.protocol.wait_readable` against a deadline: a float timeout
given to ``socket.poll`` is truncated to whole milliseconds (0.0004 s would not wait at all).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from core import protocol as proto
from core import statefile
from core.config import FarmConfig
from core.errors import NpuFarmError
from core.protocol import BROKER_DEVICE, Cmd

__all__ = [
    "broker_request",
    "find_address",
    "inject",
    "query_status",
    "recover",
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


def _ask_broker(address: str, cmd: bytes, body: dict[str, Any], timeout_s: float) -> dict:
    """One request/reply with a farm's broker on a short-lived DEALER."""
    ctx = zmq.Context()
    socket = ctx.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        route = proto.pack_route(BROKER_DEVICE, 0)
        socket.send_multipart(proto.client_message(cmd, route, proto.pack(body)))
        deadline_s = time.monotonic() + timeout_s
        while not proto.wait_readable(socket, max(0.0, deadline_s - time.monotonic())):
            if time.monotonic() >= deadline_s:
                raise NpuFarmError(f"no farm answered at {address} within {timeout_s:g}s")
        reply = proto.parse_client_message(socket.recv_multipart(), with_identity=False)
        return proto.unpack(reply.body)
    finally:
        socket.close(0)
        ctx.term()


def query_status(address: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask a running farm for its description (cards, states, live stats, ledger, faults)."""
    return _ask_broker(address, Cmd.STATUS, {}, timeout_s)


def broker_request(address: str, body: dict[str, Any], timeout_s: float = 5.0) -> dict:
    """A broker request (inject, recover, ...)."""
    return _ask_broker(address, Cmd.REQUEST, {"rid": 1, **body}, timeout_s)


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
