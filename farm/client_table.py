"""The broker's table of clients: who is connected, whether each one is still alive, and what
to do with a client the broker gave up on (pure logic; the /proc probe and the clock are
injected, so tests drive it with fakes).

Why: a client killed without ``acl.finalize`` leaves HBM, models and streams on its cards. Real
drivers reclaim a process's device resources when it exits, so the farm does too:

* a client on this host (its HELLO carries ``pid``, and ``host`` equal to ours or no ``host``)
  is judged by its process: at every broker heartbeat tick the broker reads
  ``/proc/<pid>/stat``; a process that is gone (or whose start time differs: the pid was
  reused) has exited, and its resources are reclaimed within one tick. A local client whose
  process is alive is never reclaimed for silence: a stopped or stalled process keeps its device
  memory on hardware too, and reclaiming it would be a made-up fault.
* a client the broker cannot check that way (another host, or a pid this host does not show) is
  judged by silence: clients ping every heartbeat interval, and one silent for
  :func:`silence_limit_s` is reclaimed.

A reclaimed client that speaks again is not served silently (its memory is gone): the broker
keeps the devices it had used in :attr:`ClientTable.expired` and answers its work for them with
507010 until it resets the device (a ``restart`` request), as for a lost card.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClientInfo", "ClientTable", "proc_start_ticks", "silence_limit_s"]

logger = logging.getLogger(__name__)

#: Floor of the silence limit. A client's I/O thread pings every heartbeat interval; on the
#: ci config (0.2 s expiry) 2x the expiry is 0.4 s, shorter than the scheduling stalls of a
#: loaded 2-core box (a descheduled process, a GIL-bound user thread: hundreds of ms). Only
#: clients whose pid cannot be checked here are judged by silence, so the floor delays nothing
#: for local clients; for the others it keeps a slow client from losing its memory.
SILENCE_FLOOR_S = 1.0
_MAX_EXPIRED = 4096  # reclaimed clients remembered (to tell them if they speak again)


def silence_limit_s(heartbeat_expiry_s: float) -> float:
    """How long a client whose pid cannot be checked may be silent before it is reclaimed."""
    return max(2.0 * heartbeat_expiry_s, SILENCE_FLOOR_S)


def proc_start_ticks(pid: int, proc: str = "/proc") -> int | None:
    """The start time (clock ticks since boot) of process ``pid``, or None if there is no such
    (live) process. Together with the pid it names one process: a reused pid has another."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    # fields[0] is field 3 (state); starttime is field 22
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def _is_pid(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31


@dataclass
class ClientInfo:
    pid: int | None = None
    host: str | None = None
    start_ticks: int | None = None  # set: a local process the broker watches by its pid
    last_seen_s: float = 0.0

    @property
    def watched(self) -> bool:
        return self.start_ticks is not None


@dataclass
class ClientTable:
    """Clients by (receiving) socket identity."""

    host: str
    probe: Callable[[int], int | None] = proc_start_ticks
    clients: dict[bytes, ClientInfo] = field(default_factory=dict)
    #: reclaimed client -> device ids whose work is refused until it resets them
    expired: OrderedDict[bytes, set[int]] = field(default_factory=OrderedDict)
    told: set[bytes] = field(default_factory=set)  # expired clients told of it already

    def hello(self, identity: bytes, body: Any, now: float) -> ClientInfo:
        """A HELLO: remember the client and, if it runs on this host, its process."""
        info = self.clients.get(identity) or ClientInfo()
        info.last_seen_s = now
        body = body if isinstance(body, dict) else {}
        pid, host = body.get("pid"), body.get("host")
        info.pid = pid if _is_pid(pid) else None
        info.host = host if isinstance(host, str) else None
        local = info.host is None or info.host == self.host
        info.start_ticks = self.probe(info.pid) if local and info.pid is not None else None
        self.clients[identity] = info
        return info

    def seen(self, identity: bytes, now: float) -> None:
        info = self.clients.get(identity)
        if info is None:
            self.clients[identity] = ClientInfo(last_seen_s=now)
        else:
            info.last_seen_s = now

    def forget(self, identity: bytes) -> ClientInfo | None:
        return self.clients.pop(identity, None)

    def due(self, now: float, silence_s: float) -> list[tuple[bytes, str, str]]:
        """Clients to reclaim now: ``(identity, cause, reason)`` with cause ``"exited"`` (a
        watched process is gone) or ``"silent"`` (an unwatched client was silent too long)."""
        found = []
        for identity, info in self.clients.items():
            if info.watched:
                if self.probe(info.pid) != info.start_ticks:
                    found.append((identity, "exited", f"process {info.pid} exited"))
            elif now - info.last_seen_s > silence_s:
                found.append((identity, "silent", f"silent for {now - info.last_seen_s:.2f}s"))
        return found

    def pids_alive(self) -> set[int]:
        """Pids of watched clients (their processes' segments are not to be swept)."""
        return {i.pid for i in self.clients.values() if i.watched and i.pid is not None}

    def expire(self, identity: bytes, devices: set[int]) -> None:
        """Remember a reclaimed client that had work on ``devices``."""
        if not devices:
            return
        self.expired[identity] = set(devices)
        self.expired.move_to_end(identity)
        self.told.discard(identity)
        while len(self.expired) > _MAX_EXPIRED:
            self.told.discard(self.expired.popitem(last=False)[0])

    def reset(self, identity: bytes, device_id: int) -> None:
        """A reclaimed client reset ``device_id``: it starts afresh there."""
        devices = self.expired.get(identity)
        if devices is not None:
            devices.discard(device_id)
            if not devices:
                del self.expired[identity]
                self.told.discard(identity)
