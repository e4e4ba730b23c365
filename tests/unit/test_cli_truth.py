"""The CLI tells the truth: one-line errors (never a traceback) when the farm refuses a request,
a missing ``--runtime-dir`` made for ``up``, and ``status`` rendering what the farm describes now
(active fault rules, reclaimed resources, malformed count, no stale loss text or dead pid).

The refusing farm here is a stand-in broker on a real ipc socket that answers every request with
the error reply a real broker sends (``{"code": nonzero, "error": "..."}``), so the CLI half is
tested without depending on which requests today's broker refuses.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest
import zmq

from core import protocol as proto
from core.config import load_config
from core.errors import ConfigError
from npufarm import cli
from npufarm.status_view import active_rules, status_lines, status_view

_TRACE_ERROR = "cannot write /no/dir/t.json: No such file or directory"


class RefusingBroker:
    """A ROUTER that answers each request with ``reply`` (and records the requests)."""

    def __init__(self, address: str, reply: dict) -> None:
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)
        self.reply, self.requests, self.stop = reply, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.socket.poll(20):
                continue
            msg = proto.parse_client_message(self.socket.recv_multipart(), with_identity=True)
            body = proto.unpack(msg.body)
            self.requests.append(body)
            answer = {"rid": body.get("rid"), **self.reply}
            self.socket.send_multipart(
                proto.client_message(proto.Cmd.REPLY, msg.route, proto.pack(answer), msg.identity)
            )

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.socket.close(0)
        self.ctx.term()


@pytest.fixture
def refusing(tmp_path, monkeypatch):
    address = f"ipc://{tmp_path}/b.sock"
    broker = RefusingBroker(address, {"code": 507899, "error": _TRACE_ERROR})
    monkeypatch.setenv("NPUFARM_ADDRESS", address)
    yield broker
    broker.close()


@pytest.mark.parametrize(
    ("argv", "op"),
    [
        (["trace", "/no/dir/t.json"], "trace"),
        (["recover"], "recover"),
        (["inject", "kind=slow", "card=1", "factor=3"], "inject"),
    ],
)
def test_a_refused_request_is_one_line_and_nonzero(refusing, capsys, argv, op):
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert err == f"npufarm: {op}: {_TRACE_ERROR}\n"
    assert out == "" and refusing.requests[0]["op"] == op


def test_a_refusal_without_a_message_still_says_its_code(tmp_path, monkeypatch, capsys):
    address = f"ipc://{tmp_path}/c.sock"
    broker = RefusingBroker(address, {"code": 100000})
    monkeypatch.setenv("NPUFARM_ADDRESS", address)
    try:
        assert cli.main(["recover", "--kind", "slow"]) == 1
    finally:
        broker.close()
    assert capsys.readouterr().err == "npufarm: recover: refused with code 100000\n"


def test_trace_of_an_idle_farm_says_it_wrote_only_metadata(tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.json"
    meta = [{"ph": "M", "name": "process_name", "pid": c, "args": {}} for c in range(4)]
    out.write_text(json.dumps({"traceEvents": meta}))  # what the farm wrote
    address = f"ipc://{tmp_path}/d.sock"
    broker = RefusingBroker(address, {"code": 0, "events": 4})
    monkeypatch.setenv("NPUFARM_ADDRESS", address)
    try:
        assert cli.main(["trace", str(out)]) == 0
    finally:
        broker.close()
    text = capsys.readouterr().out
    assert text.startswith(f"4 trace events written to {out}: metadata only, no tasks")


def test_up_makes_a_missing_runtime_dir_private(tmp_path):
    config = load_config(None, overrides={"runtime_dir": str(tmp_path / "a" / "b")})
    path = config.make_runtime_dir()
    assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700
    assert config.make_runtime_dir() == path  # an existing one is used as it is
    (tmp_path / "file").write_text("")
    blocked = load_config(None, overrides={"runtime_dir": str(tmp_path / "file" / "x")})
    with pytest.raises(ConfigError, match="cannot create .*Not a directory"):
        blocked.make_runtime_dir()


# -- status --------------------------------------------------------------------------------

_FARM = {
    "name": "t",
    "endpoint": "ipc:///tmp/t.sock",
    "pid": 10,
    "uptime_s": 12.0,
    "cards": [
        {
            "device_id": 0,
            "pid": 11,
            "epoch": 1,
            "state": "ready",
            "soc_name": "Ascend910B",
            "hbm_bytes": 256 << 20,
            "lost_reason": None,
            "stats": {"hbm_used": 200 << 20},
        },
        {
            "device_id": 1,
            "pid": None,
            "epoch": 1,
            "state": "lost",
            "soc_name": "Ascend910B",
            "hbm_bytes": 256 << 20,
            "lost_reason": "no heartbeat for 1.15s",
            "stats": {},
        },
        {
            "device_id": 2,
            "pid": 33,
            "epoch": 2,
            "state": "ready",
            "soc_name": "Ascend910B",
            "hbm_bytes": 256 << 20,
            "lost_reason": "no heartbeat for 1.02s",
            "stats": {},
        },
    ],
    "ledger": {
        "submitted": 5,
        "completed": 4,
        "failed": {"507010": 1},
        "dropped": 0,
        "in_flight": 0,
    },
    "faults": {
        "log": "/tmp/f.jsonl",
        "counts": {"slow": 840},
        "plan": {"seed": 0, "fault": [{"kind": "slow", "card": 1, "factor": 3.0}]},
        "active": [
            {"rule_id": 4, "kind": "slow", "card": 1, "factor": 3.0, "fired": 840},
            {"rule_id": 5, "kind": "error", "card": None, "code": 507015, "fired": 1},
        ],
    },
    "reclaimed": {
        "clients": 1,
        "by_cause": {"exited": 1, "silent": 0},
        "card_clients": 1,
        "hbm_bytes": 200 << 20,
        "models": 2,
        "streams": 3,
        "cards": {
            "0": {"clients": 1, "hbm_bytes": 200 << 20, "models": 2, "streams": 3},
            "1": {"clients": 0, "hbm_bytes": 0, "models": 0, "streams": 0},
        },
        "silence_limit_s": 2.0,
    },
    "malformed": 17,
}


def _text(farm: dict, width: int = 160) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, color_system=None)
    console.print(status_view(farm))
    return console.export_text()


def test_status_lists_active_rules_reclaimed_and_malformed():
    text = _text(_FARM)
    assert "active fault rules: 2" in text
    assert "#4 slow card 1: factor=3.0 (fired 840 times)" in text
    assert "#5 error all cards: code=507015 (fired 1 time)" in text
    assert "fault events so far: slow×840 (log: /tmp/f.jsonl)" in text
    assert (
        "reclaimed from dead clients: 1 client (exited 1), HBM 200 MiB, 2 models, 3 streams; "
        "card 0: clients 1, hbm 200 MiB, models 2, streams 3; a client silent 2 s is taken "
        "as dead"
    ) in " ".join(text.split())
    assert "malformed messages: 17" in text
    assert "200/256" in text


def test_status_shows_the_ledger_items_the_cards_refused_as_malformed():
    farm = copy.deepcopy(_FARM)
    farm["ledger"]["malformed"] = 65537
    assert (
        "tasks: 5 submitted, 4 completed, failed 507010×1, 0 dropped, 0 in flight; "
        "65537 malformed items refused by the cards"
    ) in " ".join(_text(farm).split())
    assert not any("refused" in line for line in status_lines(_FARM))  # an older farm's ledger


def test_status_shows_none_only_when_no_rule_is_active():
    farm = copy.deepcopy(_FARM)
    farm["faults"]["active"] = []
    assert "active fault rules: none" in _text(farm)
    del farm["faults"]["active"]  # a farm without the field: its plan's rules
    assert active_rules(farm["faults"]) == [
        {"rule_id": 0, "kind": "slow", "card": 1, "factor": 3.0}
    ]
    farm["faults"] = {}
    lines = status_lines({k: v for k, v in farm.items() if k not in ("reclaimed", "malformed")})
    assert not any("fault" in line or "reclaimed" in line or "malformed" in line for line in lines)


def test_status_shows_no_stale_loss_text_or_pid():
    text = _text(_FARM)
    rows = {
        int(c[0]): c for c in (line.split() for line in text.splitlines()) if c and c[0].isdigit()
    }
    assert rows[1][1:4] == ["-", "1", "lost"]
    assert rows[2][1:4] == ["33", "2", "ready"]
    assert "card 1 lost: no heartbeat for 1.15s" in text
    assert "1.02s" not in text  # card 2 was restarted: its old loss text is not shown


def test_status_into_a_pipe_at_80_columns_cuts_nothing():
    text = _text(_FARM, width=80)
    assert "…" not in text
    assert "card 1 lost: no heartbeat for 1.15s" in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
