"""What the farm fuzzer sends, and what the farm owes in return (hypothesis strategies + oracle).

Why a module of its own: the strategies describe *drafts* (a frame kind, a command, a route key,
a body as Python data), not bytes, so the harness can give every request a unique ``rid`` and
every task a unique ``t`` before packing. Unique ids are what make "none silently lost" and
"none answered twice" checkable. :func:`expectation` is the oracle: from the final frames alone
it says which rids / task ids / control replies the farm must send back and whether the
framing is malformed (the broker must count it). It mirrors the protocol's documented rules
(core/protocol.py), not the broker's code, so a broker that drops a request it should answer
is caught. :class:`Answers` tallies what came back, so the harness can name what was owed and
never answered, or answered twice.

Bodies stay inside what msgpack can encode (ints in -2**63..2**64-1); raw garbage bytes cover
the rest. Fault rules that would really fire (a valid ``inject``) are defanged by the harness
(probability 0), so the fuzz farm never sees a fault it did not get from a bug.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import zmq
from hypothesis import strategies as st

from core import protocol as proto
from core.errors import ProtocolError
from core.fault_plan import KINDS
from core.protocol import BROKER_DEVICE, Cmd

__all__ = [
    "Draft",
    "Expectation",
    "Answers",
    "FRAME_KINDS",
    "drafts",
    "expectation",
    "CARD_OPS",
    "BROKER_OPS",
]

CARD_OPS = ("malloc", "free", "mem_info", "load", "unload", "inject", "recover", "stats")
BROKER_OPS = ("restart", "trace", "inject", "recover", "status")
_TASK_KINDS = ("exec", "copy", "memset", "record", "wait")

# -- scalars and values ----------------------------------------------------------------------
_EDGE_INTS = [
    -(2**63),
    -(2**31),
    -1,
    0,
    1,
    2,
    7,
    255,
    2**16,
    2**31 - 1,
    2**31,
    2**32,
    2**48,
    2**63 - 1,
    2**64 - 1,
]
INTS = st.one_of(st.integers(-3, 64), st.sampled_from(_EDGE_INTS), st.integers(-(2**63), 2**64 - 1))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.binary(max_size=10),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-2, 9)), inner, max_size=4),
    ),
    max_leaves=10,
)


def _or_odd(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the valid shape, sometimes anything at all."""
    return st.one_of(valid, valid, VALUES)


def _maybe_fields(required: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A map with each field present (valid or odd) or missing, plus an occasional extra key."""
    optional = {key: _or_odd(value) for key, value in required.items()}
    return st.fixed_dictionaries({}, optional=optional).flatmap(
        lambda base: st.dictionaries(st.text(max_size=4), VALUES, max_size=1).map(
            lambda extra: {**extra, **base}
        )
    )


# -- tasks -----------------------------------------------------------------------------------
_PTR = st.one_of(
    st.integers(0, 2**16), st.sampled_from([0x5A00_0000_0000_0000 | (1 << 40), 1 << 48]), INTS
)
_REF = st.tuples(_PTR, INTS).map(list)
_REFS = st.lists(st.one_of(_REF, _REF, VALUES), max_size=3)
_SEG_NAMES = st.one_of(
    st.sampled_from(["{card_shm}", "{card_shm}x", "", "../etc/passwd", "npufarm-nope", "/x"]),
    st.text(max_size=16),
)
_SHM_REF = st.tuples(_SEG_NAMES, INTS).map(list)

_TASK_FIELDS = {
    "exec": {"m": INTS, "i": _REFS, "o": _REFS},
    "copy": {"dst": _SHM_REF, "src": _SHM_REF, "n": INTS},
    "memset": {"dst": _SHM_REF, "n": INTS, "v": INTS},
    "record": {},
    "wait": {"ws": INTS, "wt": INTS},
}


def _task(kind: str) -> st.SearchStrategy:
    fields = {"t": st.just(0), "s": st.integers(0, 6), **_TASK_FIELDS[kind]}
    return st.one_of(
        st.fixed_dictionaries({"k": st.just(kind), **fields}),  # well-typed (odd values)
        _maybe_fields({"k": st.sampled_from(_TASK_KINDS), **fields}),
    )


TASKS = st.one_of(*[_task(k) for k in _TASK_KINDS], VALUES)
TASK_LISTS = st.one_of(st.lists(TASKS, min_size=1, max_size=6), VALUES)

# -- request bodies --------------------------------------------------------------------------
_RULE = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(KINDS)},
        optional={
            "card": INTS,
            "probability": st.floats(-1, 2),
            "duration_s": st.floats(-1, 5),
            "at_s": INTS,
            "factor": st.floats(0, 10),
            "api": st.sampled_from(["execute", "malloc", "bogus"]),
            "message": st.sampled_from(["task", "completion", "x"]),
        },
    ),
    VALUES,
)
_KINDS_ARG = st.one_of(st.none(), st.lists(st.sampled_from((*KINDS, "bogus")), max_size=3), VALUES)
_MODEL_SPEC = st.one_of(
    st.fixed_dictionaries(
        {"name": st.text(max_size=6), "kind": st.sampled_from(["add", "identity", "x", "onnx"])},
        optional={
            "inputs": VALUES,
            "outputs": VALUES,
            "blob_ref": st.tuples(_SEG_NAMES, INTS, INTS).map(list),
            "params": VALUES,
        },
    ),
    st.just("{add_spec}"),
    VALUES,
)
_OP_ARGS: dict[str, dict[str, st.SearchStrategy]] = {
    "malloc": {"size": st.one_of(INTS, st.sampled_from([64, 1 << 20, 255 << 20, 1 << 40]))},
    "free": {"offset": INTS},
    "mem_info": {},
    "load": {"spec": _MODEL_SPEC},
    "unload": {"handle": INTS},
    "inject": {"rule": _RULE, "rule_id": INTS},
    "recover": {"kinds": _KINDS_ARG},
    "stats": {},
    "restart": {"device_id": st.one_of(st.integers(-1, 9), INTS)},
    "trace": {"path": st.sampled_from(["{tmp}/t.json", "/no/dir/t.json", "{tmp}", "", "/proc/x"])},
    "status": {},
}


def _request(ops: tuple[str, ...]) -> st.SearchStrategy:
    def one(op: str) -> st.SearchStrategy:
        fields = {"rid": st.just(0), "op": st.just(op), **_OP_ARGS[op]}
        return st.one_of(st.fixed_dictionaries(fields), _maybe_fields(fields))

    unknown = st.fixed_dictionaries({"rid": st.just(0), "op": _or_odd(st.text(max_size=8))})
    return st.one_of(*[one(op) for op in ops], unknown, VALUES)


CARD_REQUESTS = _request(CARD_OPS)
BROKER_REQUESTS = _request((*BROKER_OPS, *CARD_OPS))


# -- drafts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draft:
    """One input before the harness assigns ids and packs it.

    ``socket``: "front" (as a client) or "back" (as a card). ``route``: "card", "broker",
    "stale" (a card's previous epoch), "nodev" (a device the farm lacks) or raw bytes.
    ``body``: Python data (packed) or bytes (sent as is). ``mutate``: None or
    ``(frame index, replacement bytes | None to delete | b"+" to append garbage)``."""

    kind: str
    socket: str
    cmd: bytes
    route: Any
    body: Any
    card: int = 0
    mutate: tuple[int, bytes | None] | None = None
    raw: tuple[bytes, ...] | None = None


_ROUTES = st.one_of(
    st.sampled_from(["card", "card", "card", "broker", "stale", "nodev"]), st.binary(max_size=6)
)
_GARBAGE = st.one_of(st.binary(max_size=24), st.just(b"\xc1"), st.just(b"\x91\xc1"))
_ANY_CMD = st.one_of(st.sampled_from(sorted(Cmd.ALL)), st.binary(min_size=0, max_size=2))
_MUTATION = st.one_of(
    st.none(),
    st.none(),
    st.tuples(st.integers(0, 5), st.one_of(st.binary(max_size=8), st.none(), st.just(b"+"))),
)


_NO_MUTATION = st.none()


def _draft(kind: str, socket: str, cmd, route, body, mutate=_NO_MUTATION) -> st.SearchStrategy:
    return st.builds(
        Draft,
        kind=st.just(kind),
        socket=st.just(socket),
        cmd=cmd if isinstance(cmd, st.SearchStrategy) else st.just(cmd),
        route=route if isinstance(route, st.SearchStrategy) else st.just(route),
        body=body,
        card=st.integers(0, 7),
        mutate=mutate,
    )


_WORKER_CMDS = st.sampled_from(
    [
        Cmd.READY,
        Cmd.HEARTBEAT,
        Cmd.CARD_EVENT,
        Cmd.CARD_EVENT,
        Cmd.COMPLETE,
        Cmd.REPLY,
        Cmd.DISCONNECT,
    ]
)
_FAULT_EVENT = st.fixed_dictionaries(
    {"kind": st.one_of(st.sampled_from(KINDS), VALUES)},
    optional={"card": VALUES, "rule": VALUES, "t_s": VALUES, "epoch": VALUES},
)
_WORKER_BODIES = st.one_of(
    VALUES,
    st.fixed_dictionaries(
        {"device_id": INTS, "epoch": INTS},
        optional={"shm_name": VALUES, "hbm_bytes": INTS, "soc_name": VALUES},
    ),
    st.fixed_dictionaries(
        {"faults": st.lists(st.one_of(_FAULT_EVENT, _FAULT_EVENT, VALUES), max_size=3)}
    ),
    st.fixed_dictionaries(
        {"faults": st.lists(st.one_of(_FAULT_EVENT, _FAULT_EVENT, VALUES), max_size=3)}
    ),
    st.lists(st.lists(VALUES, max_size=6), max_size=3),
    _GARBAGE,
)

FRAME_KINDS: dict[str, st.SearchStrategy] = {
    "client.framing": st.builds(
        lambda frames: Draft("client.framing", "front", b"", None, None, raw=tuple(frames)),
        st.lists(st.binary(max_size=10), min_size=1, max_size=8),
    ),
    "client.mutated": _draft(
        "client.mutated", "front", _ANY_CMD, _ROUTES, st.one_of(VALUES, _GARBAGE), _MUTATION
    ),
    "client.submit": _draft(
        "client.submit", "front", Cmd.SUBMIT, _ROUTES, st.one_of(TASK_LISTS, TASK_LISTS, _GARBAGE)
    ),
    "client.request.card": _draft(
        "client.request.card",
        "front",
        Cmd.REQUEST,
        st.sampled_from(["card", "card", "stale", "nodev"]),
        st.one_of(CARD_REQUESTS, _GARBAGE),
    ),
    "client.request.broker": _draft(
        "client.request.broker",
        "front",
        Cmd.REQUEST,
        "broker",
        st.one_of(BROKER_REQUESTS, BROKER_REQUESTS, _GARBAGE),
    ),
    "client.control": _draft(
        "client.control",
        "front",
        st.sampled_from(
            [
                Cmd.HELLO,
                Cmd.STATUS,
                Cmd.HEARTBEAT,
                Cmd.TRACE,
                Cmd.COMPLETE,
                Cmd.REPLY,
                Cmd.CARD_EVENT,
            ]
        ),
        st.sampled_from(["broker", "card", "nodev"]),
        st.one_of(VALUES, _GARBAGE, st.lists(st.lists(VALUES, max_size=5), max_size=3)),
    ),
    "worker.framing": st.builds(
        lambda frames: Draft("worker.framing", "back", b"", None, None, raw=tuple(frames)),
        st.lists(st.binary(max_size=10), min_size=1, max_size=8),
    ),
    "worker.cmd": _draft(
        "worker.cmd",
        "back",
        st.one_of(_WORKER_CMDS, _WORKER_CMDS, _ANY_CMD),
        st.one_of(st.just(b""), st.binary(max_size=12)),
        _WORKER_BODIES,
        st.one_of(st.none(), st.none(), _MUTATION),
    ),
}


def drafts(kinds: list[str] | None = None) -> st.SearchStrategy:
    """One draft of any (or the given) frame kinds."""
    chosen = kinds or list(FRAME_KINDS)
    return st.one_of(*[FRAME_KINDS[k] for k in chosen])


# -- the oracle ------------------------------------------------------------------------------
@dataclass
class Expectation:
    """What the farm owes for one input."""

    rids: set[int] = field(default_factory=set)  # REPLY with each of these rids
    tasks: set[int] = field(default_factory=set)  # one COMPLETE row per task id
    control: dict[bytes, int] = field(default_factory=dict)  # STATUS/HELLO/HEARTBEAT replies
    malformed: bool = False  # framing the broker cannot parse: it must count it
    disconnect: bool = False  # the client said goodbye: its queued tasks are abandoned


_ANSWERED_CONTROL = (Cmd.HELLO, Cmd.STATUS, Cmd.HEARTBEAT)


def mutate(frames: list[bytes], mutation: tuple[int, bytes | None]) -> None:
    """Apply a draft's mutation to its frames in place: drop one frame (None), append a junk
    frame (b"+"), or replace one frame."""
    index, replacement = mutation
    index %= len(frames)
    if replacement is None:
        del frames[index]
    elif replacement == b"+":
        frames.append(b"\x00junk")
    else:
        frames[index] = replacement


def _unpack(body: bytes) -> Any:
    try:
        return proto.unpack(body)
    except ProtocolError:
        return None


def expectation(frames: list[bytes], socket: str) -> Expectation:
    """What the farm must answer to ``frames`` (as a DEALER sends them: no identity frame)."""
    out = Expectation()
    if socket == "back":
        try:
            proto.parse_worker_message(frames, with_identity=False)
        except ProtocolError:
            out.malformed = True
        return out
    try:
        msg = proto.parse_client_message(frames, with_identity=False)
    except ProtocolError:
        out.malformed = True
        return out
    device_id, _ = proto.unpack_route(msg.route)
    body = _unpack(msg.body)
    if msg.cmd in _ANSWERED_CONTROL:
        out.control[msg.cmd] = 1
    elif msg.cmd == Cmd.DISCONNECT:
        out.disconnect = True
    elif msg.cmd == Cmd.REQUEST:
        if isinstance(body, dict) and type(body.get("rid")) is int:
            out.rids.add(body["rid"])
    elif msg.cmd == Cmd.SUBMIT and device_id != BROKER_DEVICE and isinstance(body, list):
        # routed to a card, or refused with 507010: either way every task with an id ends
        for task in body:
            if isinstance(task, dict) and type(task.get("t")) is int:
                out.tasks.add(task["t"])
    return out


def _key(value: Any) -> Any:
    """A rid or task id as a counter key (the farm may echo any msgpack value)."""
    return value if isinstance(value, int | str | bytes | float | None) else repr(value)


class Answers:
    """What came back on the fuzzing client's socket."""

    def __init__(self) -> None:
        self.rids: Counter = Counter()
        self.tasks: Counter = Counter()
        self.control: Counter = Counter()
        self.unparsable = 0
        self.excused: set[int] = set()  # tasks queued when the client said DISCONNECT

    def drain(self, socket: zmq.Socket, timeout_ms: int) -> None:
        if timeout_ms and not socket.poll(timeout_ms):
            return
        while (frames := proto.recv_ready(socket)) is not None:
            try:
                msg = proto.parse_client_message(frames, with_identity=False)
                body = proto.unpack(msg.body)
            except ProtocolError:
                self.unparsable += 1
                continue
            if msg.cmd == Cmd.REPLY and isinstance(body, dict) and "rid" in body:
                self.rids[_key(body["rid"])] += 1
            elif msg.cmd == Cmd.COMPLETE and isinstance(body, list):
                for row in body:
                    if isinstance(row, list) and row:
                        self.tasks[_key(row[0])] += 1
            elif msg.cmd in (Cmd.HELLO, Cmd.STATUS, Cmd.HEARTBEAT):
                self.control[msg.cmd] += 1

    def covers(self, owed: Expectation) -> bool:
        return (
            all(r in self.rids for r in owed.rids)
            and all(t in self.tasks for t in owed.tasks - self.excused)
            and all(self.control[c] >= n for c, n in owed.control.items())
        )

    def problems(self, owed: Expectation) -> list[str]:
        out = []
        lost_rids = sorted(owed.rids - set(self.rids))
        lost_tasks = sorted(owed.tasks - set(self.tasks) - self.excused)
        if lost_rids:
            out.append(f"{len(lost_rids)} requests never answered (rids {lost_rids[:8]})")
        if lost_tasks:
            out.append(f"{len(lost_tasks)} tasks never completed (ids {lost_tasks[:8]})")
        twice = sorted(r for r in owed.rids if self.rids[r] > 1)
        if twice:
            out.append(f"{len(twice)} requests answered more than once (rids {twice[:8]})")
        twice = sorted(t for t in owed.tasks if self.tasks[t] > 1)
        if twice:
            out.append(f"{len(twice)} tasks completed more than once (ids {twice[:8]})")
        for cmd, n in owed.control.items():
            if self.control[cmd] < n:
                out.append(f"control {cmd!r}: {n} owed, {self.control[cmd]} answered")
        if self.unparsable:
            out.append(f"{self.unparsable} unparsable messages from the broker")
        return out
