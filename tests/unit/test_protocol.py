"""Unit tests for core.protocol: the msgpack codec, frame parsing and task validation."""

from __future__ import annotations

import pytest

from core import protocol as proto
from core.errors import ProtocolError
from core.protocol import (
    BROKER_DEVICE,
    CLIENT_HEADER,
    WORKER_HEADER,
    Cmd,
    TaskKind,
    client_message,
    completion_row,
    pack,
    pack_route,
    parse_client_message,
    parse_worker_message,
    unpack,
    unpack_route,
    validate_task,
    worker_message,
)

pytestmark = pytest.mark.timeout(30)

ROUTE = pack_route(3, 7)


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        {"rid": 1, "op": "malloc", "size": 4096},
        [{"t": 1, "s": 0, "k": "record"}, {"t": 2, "s": 0, "k": "wait", "ws": 1, "wt": 1}],
        [[1, 0, 1.5, 2.25], [2, 507010, 3.0, 3.0]],
        {"bytes": b"\x00\xffraw", "text": "héllo", "none": None, "flag": True, "f": -0.5},
        {1: "int keys survive", 2: [1, 2, 3]},
        {"big": 2**64 - 1, "neg": -(2**63)},
        "just a string",
        12345,
    ],
)
def test_pack_unpack_round_trip(body):
    data = pack(body)
    assert isinstance(data, bytes)
    assert unpack(data) == body


def test_bytes_and_str_stay_distinct():
    decoded = unpack(pack({"b": b"abc", "s": "abc"}))
    assert decoded["b"] == b"abc" and isinstance(decoded["b"], bytes)
    assert decoded["s"] == "abc" and isinstance(decoded["s"], str)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",  # nothing
        b"\xc1",  # the one never-used msgpack byte
        b"\x92\x01",  # array of 2 with one element: truncated
        b"\x81\xa1a",  # map missing its value
        pack({"a": 1}) + b"\x00",  # trailing bytes
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
    ],
)
def test_unpack_garbage_raises_protocol_error(garbage):
    with pytest.raises(ProtocolError):
        unpack(garbage)


def test_pack_refuses_what_msgpack_cannot_carry():
    with pytest.raises(TypeError):
        pack({"obj": object()})


def test_routes():
    assert len(ROUTE) == 4
    assert unpack_route(ROUTE) == (3, 7)
    assert unpack_route(pack_route(BROKER_DEVICE, 0)) == (0xFFFF, 0)
    assert unpack_route(pack_route(1, 0x1_0002)) == (1, 2)  # epochs wrap at 16 bits
    for bad in (b"", b"\x00\x01\x02", b"\x00" * 5):
        with pytest.raises(ProtocolError):
            unpack_route(bad)


def test_completion_row():
    assert completion_row(5, 0, 1.0, 2.0) == [5, 0, 1.0, 2.0, 0, 1.0]  # queued = start
    assert completion_row(5, 7, 1.0, 2.0, 9, 0.5) == [5, 7, 1.0, 2.0, 9, 0.5]


def test_commands_are_single_distinct_bytes():
    names = [name for name in vars(Cmd) if name.isupper() and name != "ALL"]
    values = [getattr(Cmd, name) for name in names]
    assert len(set(values)) == len(names) == 11  # one byte, one meaning (READY is not HELLO)
    assert frozenset(values) == Cmd.ALL
    assert all(isinstance(c, bytes) and len(c) == 1 for c in Cmd.ALL)


# --------------------------------------------------------------------------- framing


def test_client_message_round_trip():
    body = pack([{"t": 1}])
    frames = client_message(Cmd.SUBMIT, ROUTE, body)
    assert frames == [b"", CLIENT_HEADER, Cmd.SUBMIT, ROUTE, body]
    msg = parse_client_message(frames, with_identity=False)
    assert (msg.identity, msg.cmd, msg.route, msg.body) == (None, Cmd.SUBMIT, ROUTE, body)
    routed = client_message(Cmd.SUBMIT, ROUTE, body, identity=b"peer")
    assert routed[0] == b"peer"
    msg = parse_client_message(routed, with_identity=True)
    assert (msg.identity, msg.cmd, msg.route, msg.body) == (b"peer", Cmd.SUBMIT, ROUTE, body)


def test_worker_message_round_trip():
    frames = worker_message(Cmd.COMPLETE, b"client", b"rows")
    assert frames == [b"", WORKER_HEADER, Cmd.COMPLETE, b"client", b"rows"]
    msg = parse_worker_message(frames, with_identity=False)
    assert (msg.identity, msg.cmd, msg.client, msg.body) == (None, Cmd.COMPLETE, b"client", b"rows")
    msg = parse_worker_message(
        worker_message(Cmd.HEARTBEAT, b"", b"", identity=b"card0.1"), with_identity=True
    )
    assert (msg.identity, msg.cmd, msg.client, msg.body) == (b"card0.1", Cmd.HEARTBEAT, b"", b"")


@pytest.mark.parametrize("cmd", sorted(Cmd.ALL))
def test_every_command_parses(cmd):
    assert parse_client_message(client_message(cmd, ROUTE, b""), False).cmd == cmd
    assert parse_worker_message(worker_message(cmd, b"c", b""), False).cmd == cmd


def _bad_client_frames() -> dict[str, tuple[list, bool]]:
    good = client_message(Cmd.SUBMIT, ROUTE, b"x")
    return {
        "empty": ([], False),
        "empty with identity": ([], True),
        "only identity": ([b"id"], True),
        "too few": (good[:4], False),
        "too many": ([*good, b"extra"], False),
        "identity expected but absent": (good, True),
        "identity present but not expected": ([b"id", *good], False),
        "missing delimiter": ([b"x", *good[1:]], False),
        "no delimiter at all": ([CLIENT_HEADER, Cmd.SUBMIT, ROUTE, b"x", b"y"], False),
        "worker header": ([b"", WORKER_HEADER, Cmd.SUBMIT, ROUTE, b"x"], False),
        "garbage header": ([b"", b"HTTP/1.1", Cmd.SUBMIT, ROUTE, b"x"], False),
        "empty header": ([b"", b"", Cmd.SUBMIT, ROUTE, b"x"], False),
        "unknown command": ([b"", CLIENT_HEADER, b"\x7f", ROUTE, b"x"], False),
        "zero command": ([b"", CLIENT_HEADER, b"\x00", ROUTE, b"x"], False),
        "two-byte command": ([b"", CLIENT_HEADER, Cmd.SUBMIT * 2, ROUTE, b"x"], False),
        "empty command": ([b"", CLIENT_HEADER, b"", ROUTE, b"x"], False),
        "short route": ([b"", CLIENT_HEADER, Cmd.SUBMIT, b"\x00\x01", b"x"], False),
        "long route": ([b"", CLIENT_HEADER, Cmd.SUBMIT, ROUTE + b"\x00", b"x"], False),
        "empty route": ([b"", CLIENT_HEADER, Cmd.SUBMIT, b"", b"x"], False),
    }


@pytest.mark.parametrize("case", sorted(_bad_client_frames()))
def test_parse_client_message_rejects(case):
    frames, with_identity = _bad_client_frames()[case]
    with pytest.raises(ProtocolError):
        parse_client_message(frames, with_identity=with_identity)


def _bad_worker_frames() -> dict[str, tuple[list, bool]]:
    good = worker_message(Cmd.COMPLETE, b"client", b"x")
    return {
        "empty": ([], True),
        "too few": (good[:4], False),
        "too many": ([*good, b"extra"], False),
        "identity expected but absent": (good, True),
        "missing delimiter": ([b"x", *good[1:]], False),
        "client header": ([b"", CLIENT_HEADER, Cmd.COMPLETE, b"c", b"x"], False),
        "garbage header": ([b"", b"\xff" * 40, Cmd.COMPLETE, b"c", b"x"], False),
        "unknown command": ([b"", WORKER_HEADER, b"\x99", b"c", b"x"], False),
        "empty command": ([b"", WORKER_HEADER, b"", b"c", b"x"], False),
    }


@pytest.mark.parametrize("case", sorted(_bad_worker_frames()))
def test_parse_worker_message_rejects(case):
    frames, with_identity = _bad_worker_frames()[case]
    with pytest.raises(ProtocolError):
        parse_worker_message(frames, with_identity=with_identity)


def test_worker_client_frame_is_not_a_route():
    """A worker message's third frame is a client identity of any length."""
    long_identity = b"\x00k\x8bEg" * 3
    msg = parse_worker_message(worker_message(Cmd.SUBMIT, long_identity, b""), False)
    assert msg.client == long_identity


# --------------------------------------------------------------------------- tasks

PTR = 0xA000_0100_0000_0040

GOOD_TASKS = {
    "exec": {"k": "exec", "t": 1, "s": 0, "m": 3, "i": [[PTR, 4096], [PTR, 8]], "o": [[PTR, 16]]},
    "exec without buffers": {"k": "exec", "t": 1, "s": 0, "m": 3, "i": [], "o": []},
    "copy": {"k": "copy", "t": 2, "s": 1, "dst": ["seg-a", 0], "src": ["seg-b", 64], "n": 128},
    "copy of zero bytes": {"k": "copy", "t": 2, "s": 1, "dst": ["a", 0], "src": ["b", 0], "n": 0},
    "memset": {"k": "memset", "t": 3, "s": 1, "dst": ["seg-a", 64], "n": 32, "v": 255},
    "record": {"k": "record", "t": 4, "s": 2},
    "wait": {"k": "wait", "t": 5, "s": 3, "ws": 2, "wt": 4},
    "extra keys ignored": {"k": "record", "t": 4, "s": 2, "debug": "x"},
}


@pytest.mark.parametrize("name", sorted(GOOD_TASKS))
def test_validate_task_accepts(name):
    assert validate_task(GOOD_TASKS[name]) is None


def test_every_task_kind_has_a_good_example():
    assert {t["k"] for t in GOOD_TASKS.values()} == set(TaskKind.ALL)


def _with(name: str, **changes: object) -> dict:
    task = dict(GOOD_TASKS[name])
    for key, value in changes.items():
        if value is _DROP:
            task.pop(key)
        else:
            task[key] = value
    return task


_DROP = object()

BAD_TASKS = {
    "not a map: list": [1, 2],
    "not a map: int": 7,
    "not a map: None": None,
    "not a map: bytes": b"task",
    "no task id": _with("record", t=_DROP),
    "no stream id": _with("record", s=_DROP),
    "string task id": _with("record", t="1"),
    "float stream id": _with("record", s=1.0),
    "no kind": _with("record", k=_DROP),
    "unknown kind": _with("record", k="launch"),
    "kind not a string": _with("record", k=1),
    "exec without model": _with("exec", m=_DROP),
    "exec with string model": _with("exec", m="add"),
    "exec without inputs": _with("exec", i=_DROP),
    "exec without outputs": _with("exec", o=_DROP),
    "exec inputs not a list": _with("exec", i={"0": [PTR, 4]}),
    "exec ref not a pair": _with("exec", i=[[PTR]]),
    "exec ref triple": _with("exec", o=[[PTR, 4, 0]]),
    "exec ref not a list": _with("exec", i=[PTR]),
    "exec ref with float size": _with("exec", i=[[PTR, 4.0]]),
    "exec ref with string ptr": _with("exec", o=[["0xa00", 4]]),
    "copy without dst": _with("copy", dst=_DROP),
    "copy without src": _with("copy", src=_DROP),
    "copy without n": _with("copy", n=_DROP),
    "copy negative n": _with("copy", n=-1),
    "copy float n": _with("copy", n=1.5),
    "copy dst not a pair": _with("copy", dst=["seg"]),
    "copy dst name not a string": _with("copy", dst=[b"seg", 0]),
    "copy dst negative offset": _with("copy", dst=["seg", -64]),
    "copy src negative offset": _with("copy", src=["seg", -1]),
    "copy src as a device pointer": _with("copy", src=PTR),
    "memset without v": _with("memset", v=_DROP),
    "memset float v": _with("memset", v=0.5),
    "memset negative n": _with("memset", n=-32),
    "memset without dst": _with("memset", dst=_DROP),
    "wait without ws": _with("wait", ws=_DROP),
    "wait without wt": _with("wait", wt=_DROP),
    "wait string wt": _with("wait", wt="4"),
}


@pytest.mark.parametrize("name", sorted(BAD_TASKS))
def test_validate_task_rejects_with_a_reason(name):
    reason = validate_task(BAD_TASKS[name])
    assert isinstance(reason, str) and reason


def test_validate_task_reasons_name_the_problem():
    assert "map" in validate_task([1])
    assert "t" in validate_task({"s": 0, "k": "record"})
    assert "launch" in validate_task(_with("record", k="launch"))
    assert "negative" in validate_task(_with("copy", n=-1))
    assert "src" in validate_task(_with("copy", src=_DROP))
    assert "v" in validate_task(_with("memset", v=_DROP))
    assert "ws" in validate_task(_with("wait", ws=_DROP))


def test_validated_tasks_survive_the_codec():
    for task in GOOD_TASKS.values():
        assert validate_task(unpack(pack(task))) is None
    assert proto.validate_task(unpack(pack([GOOD_TASKS["exec"]]))) is not None  # a batch


@pytest.mark.parametrize("select_limit", [1024, 0], ids=["select", "zmq-poll-fallback"])
def test_wait_readable_sees_queued_messages(select_limit, monkeypatch):
    """The card's wait: True when a message is queued (also one that arrived before the wait:
    ZMQ_EVENTS decides, not the FD's edge), else False once the timeout passes or on a spurious
    wake-up (the card's loop then waits again)."""
    import zmq

    from core import protocol
    from core.protocol import wait_readable

    monkeypatch.setattr(protocol, "_SELECT_FD_LIMIT", select_limit)
    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind(f"inproc://wait-readable-{select_limit}")
        b.connect(f"inproc://wait-readable-{select_limit}")
        assert wait_readable(b, 0) is False
        assert wait_readable(b, 0.0005) is False
        a.send(b"x")
        assert wait_readable(b, 1.0) is True
        assert wait_readable(b, 0) is True  # still queued: EVENTS, not the FD edge, decides
        assert b.recv() == b"x"
        assert wait_readable(b, 0) is False
        a.close(0)
        b.close(0)
    finally:
        ctx.term()
