"""The chaos soak's checkers find each violation in synthetic data (and pass clean data).

A checker that cannot fail proves nothing: every test here feeds data with one planted
violation and expects exactly that violation named.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

from benchmarks import soak_checks as checks
from benchmarks import soak_io
from benchmarks.soak_checks import GrowthBounds, Session
from benchmarks.soak_io import read_journals, write_plan
from benchmarks.soak_plan import build_plan, build_schedule, replay_keys


def _ledger(submitted, completed, failed=None, dropped=0, in_flight=0):
    return {
        "submitted": submitted,
        "completed": completed,
        "failed": failed or {},
        "dropped": dropped,
        "in_flight": in_flight,
    }


def _finished(client, sub, completed, failed=None, abandoned=0):
    ledger = {
        "submitted": sub,
        "completed": completed,
        "failed": failed or {},
        "abandoned": abandoned,
    }
    return Session(client, 0, finished=True, ledger=ledger, intent=sub, sub=sub)


# -- ledgers ---------------------------------------------------------------------------------
def test_ledgers_agree_when_every_task_is_accounted_for():
    sessions = [_finished(0, 10, 9, {"507015": 1}), Session(1, 0, intent=6, sub=3)]
    farm = _ledger(15, 13, {"507015": 1, "507010": 1})  # the killed client's tasks: 3..6
    assert checks.check_ledgers(farm, sessions) == []


def test_a_task_in_flight_after_draining_is_a_violation():
    problems = checks.check_ledgers(_ledger(10, 9, in_flight=1), [_finished(0, 10, 10)])
    assert any("still in flight" in p for p in problems)


def test_a_task_counted_twice_is_a_violation():
    problems = checks.check_ledgers(_ledger(10, 11, in_flight=-1), [_finished(0, 10, 10)])
    assert any("ended twice" in p for p in problems)


def test_an_unbalanced_farm_ledger_is_a_violation():
    problems = checks.check_ledgers(_ledger(10, 8), [_finished(0, 10, 8, abandoned=2)])
    assert any("submitted 10 != completed 8" in p for p in problems)


def test_farm_counting_more_tasks_than_clients_sent_is_a_violation():
    problems = checks.check_ledgers(_ledger(12, 12), [_finished(0, 10, 10)])
    assert any("clients account for 10..10" in p for p in problems)


def test_farm_counting_fewer_tasks_than_clients_sent_is_a_violation():
    problems = checks.check_ledgers(
        _ledger(8, 8), [_finished(0, 10, 8), Session(1, 0, intent=3, sub=2)]
    )
    assert any("clients account for" in p for p in problems)


def test_a_client_ledger_that_does_not_settle_is_a_violation():
    session = _finished(0, 10, 8)  # 2 tasks neither completed, failed nor abandoned
    problems = checks.check_ledgers(_ledger(10, 8, {"507010": 2}), [session])
    assert any("completed + failed + abandoned 8" in p for p in problems)


def test_a_client_ledger_disagreeing_with_its_journal_is_a_violation():
    session = _finished(0, 10, 10)
    session.sub = 9
    problems = checks.check_ledgers(_ledger(10, 10), [session])
    assert any("journal 9" in p for p in problems)


def test_completions_the_clients_never_saw_are_a_violation():
    problems = checks.check_ledgers(_ledger(10, 10), [_finished(0, 10, 7, {"507015": 3})])
    assert any("completed 10, finished clients saw 7" in p for p in problems)


# -- losses ----------------------------------------------------------------------------------
FAULTS = [
    {"kind": "heartbeat_loss", "card": 1, "epoch": 1},
    {"kind": "slow", "card": 2, "epoch": 1},
    {"kind": "crash", "card": 3, "epoch": 2},
]
KILLS = [{"card": 0, "epoch": 1, "pid": 99}]


def test_losses_with_a_fault_or_a_kill_are_explained():
    losses = [(1, 1, "no heartbeat"), (0, 1, "exit -9"), (3, 2, "exit 70")]
    problems, explained = checks.check_losses(losses, FAULTS, KILLS)
    assert problems == []
    assert [e["cause"] for e in explained] == [
        ["fault heartbeat_loss"],
        ["SIGKILL"],
        ["fault crash"],
    ]


def test_a_loss_without_a_cause_is_a_violation():
    losses = [(1, 1, "x"), (0, 1, "x"), (3, 2, "x"), (2, 1, "no heartbeat for 1.2s")]
    problems, _ = checks.check_losses(losses, FAULTS, KILLS)
    assert problems == ["card 2 epoch 1 declared lost (no heartbeat for 1.2s) with no cause"]


def test_a_cause_on_another_epoch_does_not_explain_a_loss():
    problems, _ = checks.check_losses([(1, 2, "x"), (0, 1, "x"), (3, 2, "x")], FAULTS, KILLS)
    assert problems == ["card 1 epoch 2 declared lost (x) with no cause"]


def test_a_killed_or_crashed_card_never_declared_lost_is_a_violation():
    problems, _ = checks.check_losses([(1, 1, "x")], FAULTS, KILLS)
    assert "card 0 epoch 1 SIGKILLed, never lost" in problems
    assert "card 3 epoch 2 crashed by a fault, never lost" in problems


# -- wrong outputs ---------------------------------------------------------------------------
def test_wrong_outputs_beyond_corrupt_faults_are_a_violation():
    events = [{"kind": "corrupt", "card": 1, "epoch": 1}]
    ok = Session(0, 0, wrong=[(1, 1)])
    assert checks.check_wrong_outputs([ok], events) == []
    bad = Session(0, 1, wrong=[(1, 1), (2, 1)])
    assert checks.check_wrong_outputs([bad], events) == [
        "card 2 epoch 1: 1 outputs wrong with code 0, 0 corrupt faults fired there"
    ]


# -- HBM ---------------------------------------------------------------------------------------
def test_hbm_must_reach_zero_within_the_bound():
    assert checks.check_hbm_reclaimed([(0.1, 5), (0.9, 0)], 1.8) == ([], 0.9)
    problems, zero = checks.check_hbm_reclaimed([(0.1, 5), (2.5, 0)], 1.8)
    assert zero == 2.5 and "only after 2.50s" in problems[0]
    problems, zero = checks.check_hbm_reclaimed([(0.1, 5), (6.0, 5 << 20)], 1.8)
    assert zero is None and "HBM used 5242880 bytes" in problems[0]


# -- growth ------------------------------------------------------------------------------------
def _sample(segments=8, fds=20, threads=4, rss=100 << 20):
    proc = {"fds": fds, "threads": threads, "rss": rss}
    return {"shm_segments": segments, "procs": {"broker": dict(proc), "card0": dict(proc)}}


def test_growth_within_bounds_passes():
    end = _sample(fds=28, threads=6, rss=150 << 20)
    assert checks.check_growth(_sample(), end, GrowthBounds()) == []


def test_each_kind_of_growth_is_a_violation():
    start = _sample()
    assert (
        "segments grew 8 -> 9" in checks.check_growth(start, _sample(segments=9), GrowthBounds())[0]
    )
    assert "fds grew 20 -> 29" in checks.check_growth(start, _sample(fds=29), GrowthBounds())[0]
    assert (
        "threads grew 4 -> 7" in checks.check_growth(start, _sample(threads=7), GrowthBounds())[0]
    )
    problems = checks.check_growth(start, _sample(rss=200 << 20), GrowthBounds())
    assert problems == [
        "broker: RSS grew 100 -> 200 MiB (bound 164 MiB)",
        "card0: RSS grew 100 -> 200 MiB (bound 164 MiB)",
    ]


# -- determinism -------------------------------------------------------------------------------
def test_the_same_seed_gives_the_same_schedule_and_fault_events():
    assert build_schedule(4, 120, 8, 3) == build_schedule(4, 120, 8, 3)
    assert build_schedule(4, 120, 8, 3) != build_schedule(5, 120, 8, 3)
    keys = replay_keys(build_plan(4, 8), 8, calls=300)
    assert keys and keys == replay_keys(build_plan(4, 8), 8, calls=300)
    assert checks.check_same("x", [1], [1]) == []
    assert checks.check_same("x", [1], [2]) == ["x: the same seed gave different results"]


def test_the_schedule_has_every_action_kind_after_warm_up():
    schedule = build_schedule(1, 120, 8, 3)
    assert {a.kind for a in schedule} == {"kill_card", "kill_client", "inject", "recover"}
    assert all(18.0 <= a.t_s <= 110.0 for a in schedule)


def test_the_plan_file_reads_back_as_the_plan(tmp_path):
    plan = build_plan(9, 8)
    write_plan(tmp_path / "plan.toml", plan)  # raises if it does not read back equal


# -- journals ----------------------------------------------------------------------------------
def test_journals_give_sessions_with_bounds_even_when_a_kill_cut_a_line(tmp_path):
    lines = [
        {"e": "session", "sid": 0},
        {"e": "intent", "sid": 0, "n": 3},
        {"e": "sub", "sid": 0, "n": 3},
        {"e": "iter", "sid": 0, "card": 1, "epoch": 1, "code": 0, "wrong": True},
        {"e": "final", "sid": 0, "ret": 0, "ledger": {"submitted": 3}},
        {"e": "session", "sid": 1},
        {"e": "intent", "sid": 1, "n": 3},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"e": "sub", "si'
    (tmp_path / "client2-g1.jsonl").write_text(text)
    first, second = read_journals([tmp_path / "client2-g1.jsonl"])
    assert (first.client, first.finished, first.sub, first.intent) == (2, True, 3, 3)
    assert first.wrong == [(1, 1)] and first.codes == Counter({0: 1})
    assert (second.finished, second.sub, second.intent) == (False, 0, 3)


def test_resource_samples_name_stray_segments(tmp_path, monkeypatch):
    farm = SimpleNamespace(process=SimpleNamespace(pid=1), farm_id="nope-farm-id")
    status = {"cards": [{"device_id": 0, "state": "lost", "pid": 0, "shm_name": "x"}]}
    monkeypatch.setattr(soak_io, "_proc", lambda pid: {"fds": 1, "threads": 1, "rss": 1})
    sample = soak_io.resource_sample(farm, status)
    assert sample["shm_segments"] == 0 and sample["stray_segments"] == []
    assert set(sample["procs"]) == {"broker"}
