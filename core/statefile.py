"""Where a running farm is found: the state file ``<runtime_dir>/<name>.json``.

The farm writes it once its broker is bound (and rewrites it when a card restarts); clients and
``npufarm status`` read it. Shape (``version`` 1)::

    {"name": "default", "endpoint": "ipc:///run/user/1000/npufarm/default.sock", "pid": 1234,
     "started_at": 1700000000.0,           # wall time, for display only
     "cards": [{"device_id": 0, "pid": 1240, "epoch": 1, "shm_name": "...",
                "hbm_bytes": 1073741824}],
     "version": 1}

A state file whose farm pid is gone is treated as absent, so a crashed farm never strands clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.config import FarmConfig, default_runtime_dir

__all__ = [
    "STATE_VERSION",
    "ADDRESS_ENV",
    "state_path",
    "make_state",
    "write_state",
    "read_state",
    "remove_state",
    "find_farm",
    "resolve_address",
    "pid_alive",
]

logger = logging.getLogger(__name__)

STATE_VERSION = 1
ADDRESS_ENV = "NPUFARM_ADDRESS"


def state_path(config: FarmConfig) -> Path:
    """``<runtime_dir>/<name>.json`` for ``config`` (creates the default runtime dir)."""
    return config.runtime_path() / f"{config.name}.json"


def make_state(
    config: FarmConfig,
    *,
    pid: int | None = None,
    cards: Iterable[Mapping[str, Any]] = (),
    started_at: float | None = None,
) -> dict[str, Any]:
    """A state dict in the canonical shape (``pid`` defaults to this process)."""
    return {
        "name": config.name,
        "endpoint": config.endpoint_address(),
        "pid": os.getpid() if pid is None else pid,
        "started_at": time.time() if started_at is None else started_at,
        "cards": [dict(card) for card in cards],
        "version": STATE_VERSION,
    }


def write_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` as JSON atomically (temp file + ``os.replace``), mode 0o600."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(dict(state), indent=2, sort_keys=True).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    logger.debug("wrote farm state %s", path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    # field 3 (state) follows the parenthesised command name, which may contain spaces
    return stat_text[stat_text.rfind(")") + 2 :][:1] != "Z"


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The state at ``path``, or None if missing, unparsable, or its farm pid is not alive."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.debug("unreadable farm state %s: %s", path, exc)
        return None
    if not isinstance(state, dict):
        logger.debug("farm state %s is not an object", path)
        return None
    pid, endpoint = state.get("pid"), state.get("endpoint")
    if isinstance(pid, bool) or not isinstance(pid, int) or not isinstance(endpoint, str):
        logger.debug("farm state %s lacks pid/endpoint", path)
        return None
    if state.get("version", STATE_VERSION) != STATE_VERSION:
        logger.debug("farm state %s has version %r", path, state.get("version"))
        return None
    if not pid_alive(pid):
        logger.debug("farm state %s is stale (pid %d gone)", path, pid)
        return None
    return state


def remove_state(path: str | Path) -> None:
    """Delete the state file if present."""
    Path(path).unlink(missing_ok=True)


def find_farm(
    name: str = "default", runtime_dir: str | Path | None = None
) -> dict[str, Any] | None:
    """The live state of farm ``name`` in ``runtime_dir`` (default: the per-user dir), or None."""
    folder = Path(runtime_dir) if runtime_dir else default_runtime_dir(create=False)
    return read_state(folder / f"{name}.json")


def resolve_address(env: Mapping[str, str] | None = None) -> str | None:
    """``$NPUFARM_ADDRESS``, else the endpoint of a live default farm, else None.

    The default farm is looked up in ``$NPUFARM_RUNTIME_DIR`` if set, else the per-user runtime
    directory (``$XDG_RUNTIME_DIR/npufarm`` or ``/tmp/npufarm-<uid>``).
    """
    env = os.environ if env is None else env
    address = env.get(ADDRESS_ENV, "").strip()
    if address:
        return address
    runtime_dir = env.get("NPUFARM_RUNTIME_DIR") or default_runtime_dir(create=False, env=env)
    state = find_farm("default", runtime_dir)
    return state["endpoint"] if state is not None else None
