"""The npufarm wire protocol: every frame any npufarm process sends or receives is built here.

Majordomo-style multipart messages. As a DEALER sends them (a ROUTER prepends the peer identity)::

    client -> broker   [b"", b"NPUC01", cmd, route, body]       route = device id, epoch (">HH")
    broker -> client   [b"", b"NPUC01", cmd, route, body]
    card   -> broker   [b"", b"NPUW01", cmd, client_identity, body]
    broker -> card     [b"", b"NPUW01", cmd, client_identity, body]

        client (DEALER) --SUBMIT/REQUEST--> ROUTER broker ROUTER --SUBMIT/REQUEST--> card (DEALER)
        client (DEALER) <--COMPLETE/REPLY-- ROUTER broker ROUTER <--COMPLETE/REPLY-- card (DEALER)

The broker routes on the ``route`` and ``client_identity`` frames only; it never decodes a SUBMIT
or COMPLETE body on the hot path. Bodies are msgpack (``use_bin_type=True``; never pickle).
Tensor bytes never travel: tasks carry device pointers into the cards' shared-memory HBM.

A SUBMIT body is a list of task maps (several tasks batched in one message), a COMPLETE body a list
of ``[task_id, code, start_s, end_s, stream, queued_s]`` rows (``time.monotonic()`` seconds,
comparable across local processes). A task map may carry ``ts`` (:data:`TASK_STAMP`), the client's
``time.monotonic()`` as it sent the task: the card anchors the task's modelled time there
(device/timing.py; a number, or the task is refused; local cards only). ``route`` device
``BROKER_DEVICE`` addresses the broker itself (HELLO, STATUS, ...).
"""

from __future__ import annotations

import logging
import math
import select
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from core.errors import NpuFarmError, ProtocolError

__all__ = [
    "ask_broker",
    "CLIENT_HEADER",
    "WORKER_HEADER",
    "BROKER_DEVICE",
    "NO_REPLY",
    "Cmd",
    "ClientFrame",
    "WorkerFrame",
    "pack",
    "packer",
    "unpack",
    "pack_route",
    "unpack_route",
    "client_message",
    "parse_client_message",
    "worker_message",
    "parse_worker_message",
    "TaskKind",
    "TASK_STAMP",
    "validate_task",
    "completion_row",
    "send_frames",
    "recv_ready",
    "wait_readable",
    "batch_length",
    "SENDER_SUFFIX",
    "RECONNECT_IVL_MS",
    "RECONNECT_IVL_MAX_MS",
    "reply_identity",
]

logger = logging.getLogger(__name__)

CLIENT_HEADER = b"NPUC01"
WORKER_HEADER = b"NPUW01"
BROKER_DEVICE = 0xFFFF
RECONNECT_IVL_MS = 10  # peers reconnect to the broker with back-off: 10 ms doubling ...
RECONNECT_IVL_MAX_MS = 1000  # ... up to 1 s (ZeroMQ's reconnect interval settings)
SENDER_SUFFIX = b"/s"  # a client's send-only socket: identity of its receiving socket + this
NO_REPLY = "nr"
"""A REQUEST body's key: true when the sender waits for no reply (a release at teardown), so
the card sends none (the op's outcome is the same)."""
_ROUTE = struct.Struct(">HH")


class Cmd:
    """One-byte commands. The same byte means the same thing on both sides of the broker."""

    HELLO = b"\x01"  # client -> broker: join; reply: farm description
    REQUEST = b"\x02"  # request/reply op on a card (malloc, free, load, ...) or the broker
    REPLY = b"\x03"
    SUBMIT = b"\x04"  # one-way batch of stream tasks
    COMPLETE = b"\x05"  # one-way batch of task completions
    HEARTBEAT = b"\x06"
    CARD_EVENT = b"\x07"  # broker -> client: a card was lost or came (back) up
    DISCONNECT = b"\x08"
    STATUS = b"\x09"  # client -> broker: farm status table
    TRACE = b"\x0a"  # client -> broker: the client's sync waits, for the farm's trace
    READY = b"\x0b"  # card -> broker: up (device id, epoch, shm name); answered by a heartbeat

    ALL = frozenset(
        {
            HELLO,
            REQUEST,
            REPLY,
            SUBMIT,
            COMPLETE,
            HEARTBEAT,
            CARD_EVENT,
            DISCONNECT,
            STATUS,
            TRACE,
            READY,
        }
    )


class TaskKind:
    """The ``k`` field of a task map."""

    EXECUTE = "exec"  # run a loaded model: m (card model handle), i / o ([[ptr, nbytes], ...])
    COPY = "copy"  # memcpy_async inside the farm's shm: dst / src ([segment, offset]), n bytes
    MEMSET = "memset"  # memset_async: dst ([segment, offset]), n, v
    RECORD = "record"  # event record: completes when every earlier task on the stream has
    WAIT = "wait"  # stream_wait_event: ws (stream), wt (task id of the record) must be done
    ALL = frozenset({EXECUTE, COPY, MEMSET, RECORD, WAIT})


TASK_STAMP = "ts"
"""Task map field: the client's ``time.monotonic()`` at submit (float seconds; optional)."""

_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_FD = int(zmq.FD)
_SELECT_FD_LIMIT = 1024  # FD_SETSIZE

_packer_kwargs = {"use_bin_type": True}
_unpacker_kwargs = {"raw": False, "strict_map_key": False}


def pack(body: Any) -> bytes:
    """msgpack-encode a body (maps, lists, ints, floats, str, bytes)."""
    return msgpack.packb(body, **_packer_kwargs)


def packer() -> Callable[[Any], bytes]:
    """A reusable :func:`pack` (a msgpack ``Packer``'s ``pack``: a third of ``pack``'s cost for
    small bodies, no packer built per call). Not thread-safe: one per thread or behind a lock."""
    return msgpack.Packer(**_packer_kwargs).pack


def unpack(data: bytes) -> Any:
    """Decode a msgpack body; raise :class:`ProtocolError` on garbage."""
    try:
        return msgpack.unpackb(data, **_unpacker_kwargs)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable body ({len(data)} bytes): {exc}") from None


def pack_route(device_id: int, epoch: int) -> bytes:
    return _ROUTE.pack(device_id & 0xFFFF, epoch & 0xFFFF)


def unpack_route(frame: bytes) -> tuple[int, int]:
    if len(frame) != _ROUTE.size:
        raise ProtocolError(f"route frame must be {_ROUTE.size} bytes, got {len(frame)}")
    return _ROUTE.unpack(frame)


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """A client-side message as the broker's ROUTER (identity set) or a client (no identity) sees
    it. ``body`` stays raw bytes; decode with :func:`unpack` only where needed."""

    identity: bytes | None
    cmd: bytes
    route: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class WorkerFrame:
    identity: bytes | None
    cmd: bytes
    client: bytes
    body: bytes


def client_message(cmd: bytes, route: bytes, body: bytes, identity: bytes | None = None) -> list:
    """Frames of a client-side message; with ``identity`` as a ROUTER sends it."""
    frames = [b"", CLIENT_HEADER, cmd, route, body]
    return [identity, *frames] if identity is not None else frames


def worker_message(cmd: bytes, client: bytes, body: bytes, identity: bytes | None = None) -> list:
    frames = [b"", WORKER_HEADER, cmd, client, body]
    return [identity, *frames] if identity is not None else frames


def _split(frames: list, header: bytes, with_identity: bool) -> tuple[bytes | None, list]:
    identity = None
    if with_identity:
        if not frames:
            raise ProtocolError("empty message")
        identity, frames = frames[0], frames[1:]
    if len(frames) != 5:
        raise ProtocolError(f"expected 5 frames after the identity, got {len(frames)}")
    if frames[0] != b"":
        raise ProtocolError("missing empty delimiter frame")
    if frames[1] != header:
        raise ProtocolError(f"bad header {bytes(frames[1][:8])!r}, expected {header!r}")
    if frames[2] not in Cmd.ALL:
        raise ProtocolError(f"unknown command {bytes(frames[2][:4])!r}")
    return identity, frames


def parse_client_message(frames: list, with_identity: bool) -> ClientFrame:
    """Validate the framing of a client-side message (the body is not decoded)."""
    identity, frames = _split(frames, CLIENT_HEADER, with_identity)
    if len(frames[3]) != _ROUTE.size:
        raise ProtocolError(f"route frame must be {_ROUTE.size} bytes")
    return ClientFrame(identity, frames[2], frames[3], frames[4])


def parse_worker_message(frames: list, with_identity: bool) -> WorkerFrame:
    identity, frames = _split(frames, WORKER_HEADER, with_identity)
    return WorkerFrame(identity, frames[2], frames[3], frames[4])


def _is_ref_list(value: Any) -> bool:
    if type(value) is not list:
        return False
    for ref in value:
        if type(ref) is not list or len(ref) != 2 or type(ref[0]) is not int:
            return False
        if type(ref[1]) is not int:
            return False
    return True


def _is_shm_ref(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and value[1] >= 0
    )


def validate_task(task: Any) -> str | None:
    """Return why ``task`` is malformed, or None. Cards call this on every inbound task."""
    if not isinstance(task, dict):
        return "task is not a map"
    if type(task.get("t")) is not int or type(task.get("s")) is not int:
        return "task needs integer t (task id) and s (stream id)"
    if TASK_STAMP in task and type(task[TASK_STAMP]) not in (float, int):
        return "task ts (submit stamp) must be a number"
    kind = task.get("k")
    if kind == TaskKind.EXECUTE:
        if not isinstance(task.get("m"), int):
            return "exec task needs integer m"
        if not (_is_ref_list(task.get("i")) and _is_ref_list(task.get("o"))):
            return "exec task needs i and o as [[ptr, nbytes], ...]"
    elif kind in (TaskKind.COPY, TaskKind.MEMSET):
        if not _is_shm_ref(task.get("dst")) or not isinstance(task.get("n"), int):
            return f"{kind} task needs dst [segment, offset] and integer n"
        if task["n"] < 0:
            return f"{kind} task has a negative size"
        if kind == TaskKind.COPY and not _is_shm_ref(task.get("src")):
            return "copy task needs src [segment, offset]"
        if kind == TaskKind.MEMSET and not isinstance(task.get("v"), int):
            return "memset task needs integer v"
    elif kind == TaskKind.WAIT:
        if not isinstance(task.get("ws"), int) or not isinstance(task.get("wt"), int):
            return "wait task needs integer ws and wt"
    elif kind != TaskKind.RECORD:
        return f"unknown task kind {kind!r}"
    return None


def completion_row(
    task_id: int, code: int, start_s: float, end_s: float, stream: int = 0, queued_s: float = 0.0
) -> list:
    """One row of a COMPLETE body: ``[task, code, start_s, end_s, stream, queued_s]`` (the
    first four are what clients need; the rest feeds the trace)."""
    return [task_id, code, start_s, end_s, stream, queued_s or start_s]


def send_frames(socket: zmq.Socket, frames: list) -> None:
    """Send a multipart message: ``Socket.send_multipart`` without its per-frame flag
    arithmetic (a third of its cost for these small frames). Raises ``zmq.ZMQError`` as it does."""
    send = socket.send
    last = len(frames) - 1
    for index in range(last):
        send(frames[index], _SNDMORE)
    send(frames[last])


def reply_identity(identity: bytes) -> bytes:
    """Where answers to a client message go: a client sends work on a second socket whose
    identity is its receiving socket's plus :data:`SENDER_SUFFIX`."""
    return identity[:-2] if identity.endswith(SENDER_SUFFIX) else identity


def recv_ready(socket: zmq.Socket) -> list | None:
    """The next queued message, or None when there is none (no ``zmq.Again`` raised: an
    exception per drained batch costs more than the EVENTS check)."""
    if not socket.get(_EVENTS) & _POLLIN:
        return None
    try:
        return socket.recv_multipart(_NOBLOCK)
    except zmq.Again:
        return None


def wait_readable(socket: zmq.Socket, timeout_s: float, fd: int | None = None) -> bool:
    """Wait until ``socket`` has a message to read or ``timeout_s`` has passed (0: just look);
    True if it has one. Unlike ``zmq.Poller.poll``, whose timeout is whole milliseconds (a float
    is truncated, so a timer loop wakes early and spins), this sleeps in ``select`` on the
    socket's ZMQ_FD with microsecond resolution. That FD only signals "look at ZMQ_EVENTS", so
    EVENTS is checked before sleeping and after waking (a wake-up may be spurious: False).
    ``fd``: the socket's ZMQ_FD if the caller keeps it (it never changes; saves a getsockopt)."""
    if socket.get(_EVENTS) & _POLLIN:
        return True
    if timeout_s <= 0:
        return False
    if fd is None:
        fd = socket.get(_FD)
    if fd < _SELECT_FD_LIMIT:
        select.select([fd], [], [], timeout_s)
    else:  # select() cannot watch such an fd: whole milliseconds, rounded up (never early)
        socket.poll(math.ceil(timeout_s * 1000.0), zmq.POLLIN)
    return bool(socket.get(_EVENTS) & _POLLIN)


def batch_length(body: bytes) -> int:
    """Number of items in a msgpack array body, read from its header alone (no decoding)."""
    if not body:
        return 0
    first = body[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(body) >= 3:
        return int.from_bytes(body[1:3], "big")
    if first == 0xDD and len(body) >= 5:
        return int.from_bytes(body[1:5], "big")
    return 0


def ask_broker(address: str, cmd: bytes, body: dict[str, Any], timeout_s: float) -> dict:
    """One request/reply with a farm's broker (STATUS, an admin REQUEST) on a short-lived
    DEALER, closed at once; ``NpuFarmError`` if nobody answers within ``timeout_s`` or the
    address cannot be used (the admin CLI, and the calls that answer before ``acl.init``)."""
    ctx = zmq.Context()
    socket = ctx.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send_multipart(client_message(cmd, pack_route(BROKER_DEVICE, 0), pack(body)))
        deadline_s = time.monotonic() + timeout_s
        while not wait_readable(socket, max(0.0, deadline_s - time.monotonic())):
            if time.monotonic() >= deadline_s:
                raise NpuFarmError(f"no farm answered at {address} within {timeout_s:g}s")
        reply = parse_client_message(socket.recv_multipart(), with_identity=False)
        return unpack(reply.body)
    except zmq.ZMQError as exc:
        raise NpuFarmError(f"cannot reach a farm at {address}: {exc}") from None
    finally:
        socket.close(0)
        ctx.term()
