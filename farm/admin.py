"""The admin client: how every tool (the CLI, ``npufarm run``, the load tester, the demo,
benchmarks) finds a running farm and talks to its broker from another process.

- :func:`find_address`: ``NPUFARM_ADDRESS``, else the endpoint in the named farm's state file
  (:mod:`core.statefile`);
- :func:`query_status`: the farm's description (cards, states, live stats, ledger, faults);
- :func:`broker_request`: an admin request (inject, recover, trace, ...), answered with a dict
  whose nonzero ``code`` means refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import zmq

from core import protocol as proto
from core import statefile
from core.config import FarmConfig
from core.errors import NpuFarmError
from core.protocol import BROKER_DEVICE, Cmd

__all__ = ["broker_request", "find_address", "query_status"]


def find_address(load_config: Callable[[], FarmConfig]) -> str:
    """The address of the farm to talk to: ``NPUFARM_ADDRESS`` if set, else the endpoint in
    the state file of the farm ``load_config()`` names (the config is loaded only then, so a
    set address needs no config file)."""
    if os.environ.get(statefile.ADDRESS_ENV):
        return os.environ[statefile.ADDRESS_ENV]
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
        if not socket.poll(timeout_s * 1000):
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
