"""Unit tests for farm.registry: the broker's card table, driven with a fake clock (floats)."""

from __future__ import annotations

import pytest

from core.protocol import pack_route
from farm.registry import CardState, Registry

pytestmark = pytest.mark.timeout(30)

# Times and durations are sums of powers of two, so boundary arithmetic is exact in floats.
T0 = 100.0
EXPIRY_S = 0.25


def ready_body(device_id: object, epoch: object, **extra: object) -> dict:
    return {
        "device_id": device_id,
        "epoch": epoch,
        "pid": 4242,
        "shm_name": f"npufarm-t-card{device_id}-e{epoch}",
        "hbm_bytes": 16 << 20,
        "soc_name": "Ascend910B",
        "exec_slots": 4,
        **extra,
    }


def identity(device_id: int, epoch: int) -> bytes:
    return f"card{device_id}.{epoch}".encode()


def started(device_ids=(0, 1), now: float = T0) -> Registry:
    registry = Registry(list(device_ids))
    for device_id in device_ids:
        registry.starting(device_id, 1000 + device_id, now)
    return registry


def ready(device_ids=(0, 1), now: float = T0) -> Registry:
    registry = started(device_ids, now)
    for device_id in device_ids:
        assert registry.on_ready(identity(device_id, 1), ready_body(device_id, 1), now)
    return registry


# --------------------------------------------------------------------------- starting / ready


def test_new_registry_has_no_routes_and_is_not_ready():
    registry = Registry([0, 1, 2])
    assert set(registry.cards) == {0, 1, 2}
    assert registry.routes == {}
    assert registry.by_identity == {}
    assert not registry.all_ready()


def test_starting_begins_epoch_one_with_fresh_state():
    registry = Registry([0])
    entry = registry.starting(0, 77, T0)
    assert entry is registry.cards[0]
    assert entry.epoch == 1
    assert entry.state is CardState.STARTING
    assert entry.pid == 77
    assert entry.last_seen_s == T0
    assert entry.identity is None
    assert registry.routes == {}


def test_on_ready_accepts_the_awaited_epoch_and_records_the_body():
    registry = started()
    entry = registry.on_ready(identity(0, 1), ready_body(0, 1), T0 + 1.0)
    assert entry is registry.cards[0]
    assert entry.state is CardState.READY
    assert entry.identity == b"card0.1"
    assert entry.shm_name == "npufarm-t-card0-e1"
    assert entry.hbm_bytes == 16 << 20
    assert entry.soc_name == "Ascend910B"
    assert entry.last_seen_s == T0 + 1.0
    assert registry.by_identity == {b"card0.1": entry}
    assert registry.routes == {pack_route(0, 1): b"card0.1"}
    assert entry.route == pack_route(0, 1)
    assert not registry.all_ready()  # card 1 is still starting
    assert registry.on_ready(identity(1, 1), ready_body(1, 1), T0 + 1.0) is not None
    assert registry.all_ready()
    assert registry.routes == {pack_route(0, 1): b"card0.1", pack_route(1, 1): b"card1.1"}


def test_ready_before_the_spawner_adopts_keeps_the_cards_pid():
    """The spawner thread may hand the process over after the card's READY arrived: the state
    file written at announce must still name the card's pid (not null), and the READY's pid
    never replaces one the spawner set."""
    registry = started()
    registry.cards[0].pid = 0  # READY overtook adopt_spawned
    registry.on_ready(identity(0, 1), ready_body(0, 1), T0)
    assert registry.cards[0].describe()["pid"] == 4242
    registry.on_ready(identity(1, 1), ready_body(1, 1, pid=9999), T0)
    assert registry.cards[1].pid == 1001  # the spawner's own


def test_ready_with_a_bad_pid_leaves_it_unset():
    registry = started()
    registry.cards[0].pid = 0
    registry.on_ready(identity(0, 1), ready_body(0, 1, pid=-3), T0)
    assert registry.cards[0].describe()["pid"] is None


def test_describe_is_plain_data():
    registry = ready()
    info = registry.cards[0].describe()
    assert info["device_id"] == 0
    assert info["epoch"] == 1
    assert info["state"] == "ready"
    assert info["shm_name"] == "npufarm-t-card0-e1"
    assert info["stats"] == {}


@pytest.mark.parametrize("epoch", [0, 2, -1, "1", None, 1.5])
def test_on_ready_with_wrong_epoch_is_refused(epoch):
    registry = started()
    assert registry.on_ready(b"x", ready_body(0, epoch), T0) is None
    assert registry.cards[0].state is CardState.STARTING
    assert registry.routes == {}
    assert registry.by_identity == {}


@pytest.mark.parametrize("device_id", [7, -1, None, "0", [0], {"a": 1}, True])
def test_on_ready_of_unknown_device_is_refused(device_id):
    registry = started()
    assert registry.on_ready(b"x", ready_body(device_id, 1), T0) is None
    assert registry.routes == {}
    assert all(c.state is CardState.STARTING for c in registry.cards.values())


def test_on_ready_without_ids_is_refused():
    registry = started()
    assert registry.on_ready(b"x", {}, T0) is None
    assert registry.on_ready(b"x", {"device_id": 0}, T0) is None
    assert registry.routes == {}


@pytest.mark.parametrize(
    "extra",
    [{"hbm_bytes": "lots"}, {"hbm_bytes": None}, {"shm_name": 5}, {"soc_name": [1]}],
)
def test_on_ready_with_malformed_fields_is_refused_not_raised(extra):
    """The body comes off the wire; a bad field must not raise into the broker loop."""
    registry = started()
    assert registry.on_ready(b"card0.1", ready_body(0, 1, **extra), T0) is None
    assert registry.cards[0].state is CardState.STARTING
    assert registry.routes == {}


def test_on_ready_before_any_start_is_refused():
    """Entries exist (epoch 0) before the supervisor starts anything; nobody can be READY."""
    registry = Registry([0])
    assert registry.on_ready(b"card0.0", ready_body(0, 0), T0) is None
    assert registry.cards[0].state is CardState.STARTING
    assert registry.routes == {}


def test_on_ready_when_not_starting_is_refused():
    registry = ready()
    # a duplicate READY of the same epoch
    assert registry.on_ready(b"card0.1", ready_body(0, 1), T0 + 1.0) is None
    assert registry.cards[0].last_seen_s == T0
    # after a loss
    registry.mark_lost(0, "gone", T0 + 1.0)
    assert registry.on_ready(b"card0.1", ready_body(0, 1), T0 + 2.0) is None
    assert registry.cards[0].state is CardState.LOST
    # after shutdown
    registry.stop_all()
    assert registry.on_ready(b"card1.1", ready_body(1, 1), T0 + 3.0) is None


# --------------------------------------------------------------------------- routes


def test_routes_vanish_on_loss():
    registry = ready()
    lost = registry.mark_lost(0, "no heartbeat", T0 + 1.0)
    assert lost is registry.cards[0]
    assert lost.state is CardState.LOST
    assert lost.lost_reason == "no heartbeat"
    assert registry.routes == {pack_route(1, 1): b"card1.1"}
    assert b"card0.1" not in registry.by_identity
    assert not registry.all_ready()


def test_restart_moves_route_to_new_epoch_only_when_ready():
    registry = ready()
    registry.mark_lost(0, "crash", T0 + 1.0)
    entry = registry.starting(0, 555, T0 + 2.0)
    assert entry.epoch == 2
    assert entry.state is CardState.STARTING
    assert entry.pid == 555
    assert entry.lost_reason == ""
    assert pack_route(0, 1) not in registry.routes
    assert pack_route(0, 2) not in registry.routes
    # the old epoch may not come back
    assert registry.on_ready(b"card0.1", ready_body(0, 1), T0 + 3.0) is None
    assert registry.on_ready(b"card0.2", ready_body(0, 2), T0 + 3.0) is entry
    assert registry.routes == {pack_route(0, 2): b"card0.2", pack_route(1, 1): b"card1.1"}
    assert registry.by_identity[b"card0.2"] is entry
    assert b"card0.1" not in registry.by_identity


def test_starting_over_a_ready_card_unroutes_the_old_epoch():
    registry = ready()
    registry.starting(1, 9, T0 + 1.0)
    assert registry.routes == {pack_route(0, 1): b"card0.1"}
    assert b"card1.1" not in registry.by_identity
    assert registry.cards[1].epoch == 2


# --------------------------------------------------------------------------- liveness


def test_on_seen_updates_ready_cards_only():
    registry = ready()
    entry = registry.on_seen(b"card0.1", T0 + 0.5)
    assert entry is registry.cards[0]
    assert entry.last_seen_s == T0 + 0.5
    assert registry.cards[1].last_seen_s == T0
    assert registry.on_seen(b"stranger", T0 + 0.5) is None
    registry.mark_lost(0, "x", T0 + 1.0)
    assert registry.on_seen(b"card0.1", T0 + 2.0) is None
    assert registry.cards[0].last_seen_s == T0 + 0.5


def test_on_seen_of_a_starting_card_is_none():
    registry = started()
    assert registry.on_seen(b"card0.1", T0 + 1.0) is None


def test_expired_exactly_at_the_boundary():
    registry = ready()
    registry.on_seen(b"card1.1", T0 + 0.125)
    assert registry.expired(T0, EXPIRY_S) == []
    # silent for exactly the expiry: not yet expired (strictly longer is required)
    assert registry.expired(T0 + EXPIRY_S, EXPIRY_S) == []
    just_after = T0 + EXPIRY_S + 2**-20
    assert [c.device_id for c in registry.expired(just_after, EXPIRY_S)] == [0]
    assert [c.device_id for c in registry.expired(T0 + 0.125 + EXPIRY_S, EXPIRY_S)] == [0]
    later = T0 + 0.125 + EXPIRY_S + 2**-20
    assert [c.device_id for c in registry.expired(later, EXPIRY_S)] == [0, 1]


def test_expired_ignores_cards_that_are_not_ready():
    registry = started()  # STARTING cards are watched by their process sentinel, not here
    assert registry.expired(T0 + 100.0, EXPIRY_S) == []
    registry.on_ready(b"card0.1", ready_body(0, 1), T0)
    registry.mark_lost(0, "x", T0)
    assert registry.expired(T0 + 100.0, EXPIRY_S) == []


def test_mark_lost_twice_returns_none_the_second_time():
    registry = ready()
    assert registry.mark_lost(0, "first", T0 + 1.0) is not None
    assert registry.mark_lost(0, "second", T0 + 2.0) is None
    assert registry.cards[0].lost_reason == "first"


def test_mark_lost_of_a_starting_card():
    registry = started()
    entry = registry.mark_lost(1, "process exited (exit code 1)", T0)
    assert entry is not None and entry.state is CardState.LOST
    assert registry.mark_lost(1, "again", T0) is None


# --------------------------------------------------------------------------- restarts


def test_may_restart_budget_then_failed():
    registry = ready([0])
    registry.mark_lost(0, "x", T0)
    assert registry.may_restart(0, T0 + 0.0, restart_max=3, window_s=10.0)
    assert registry.may_restart(0, T0 + 1.0, restart_max=3, window_s=10.0)
    assert registry.may_restart(0, T0 + 2.0, restart_max=3, window_s=10.0)
    assert registry.cards[0].state is CardState.LOST  # the check itself does not restart
    assert not registry.may_restart(0, T0 + 3.0, restart_max=3, window_s=10.0)
    entry = registry.cards[0]
    assert entry.state is CardState.FAILED
    assert "3 times" in entry.lost_reason
    # FAILED is terminal: the budget does not come back once the window has slid
    assert not registry.may_restart(0, T0 + 1000.0, restart_max=3, window_s=10.0)
    assert registry.cards[0].state is CardState.FAILED
    assert registry.mark_lost(0, "again", T0 + 1000.0) is None


def test_may_restart_window_boundary_is_inclusive():
    registry = ready([0])
    for t in (0.0, 1.0, 2.0):
        assert registry.may_restart(0, T0 + t, restart_max=3, window_s=8.0)
    assert list(registry.cards[0].restarts) == [T0, T0 + 1.0, T0 + 2.0]
    # at T0 + 8 the first attempt is exactly window_s old and still counts -> over budget
    assert not registry.may_restart(0, T0 + 8.0, restart_max=3, window_s=8.0)
    assert registry.cards[0].state is CardState.FAILED


def test_may_restart_slides_when_no_attempt_was_refused():
    registry = ready([0])
    for t in (0.0, 1.0, 2.0):
        assert registry.may_restart(0, T0 + t, restart_max=3, window_s=8.0)
    # just past the window the oldest attempt drops out: one more restart is allowed
    assert registry.may_restart(0, T0 + 8.0 + 2**-20, restart_max=3, window_s=8.0)
    assert list(registry.cards[0].restarts) == [T0 + 1.0, T0 + 2.0, T0 + 8.0 + 2**-20]
    assert registry.cards[0].state is not CardState.FAILED
    # far later every old attempt has slid out
    assert registry.may_restart(0, T0 + 100.0, restart_max=3, window_s=8.0)
    assert list(registry.cards[0].restarts) == [T0 + 100.0]


def test_restart_history_survives_new_epochs():
    """starting() creates a fresh entry but must keep the flapping history."""
    registry = ready([0])
    for epoch, t in ((2, 1.0), (3, 2.0), (4, 3.0)):
        registry.mark_lost(0, "crash", T0 + t)
        assert registry.may_restart(0, T0 + t, restart_max=3, window_s=10.0)
        entry = registry.starting(0, epoch, T0 + t)
        assert entry.epoch == epoch
        assert registry.on_ready(identity(0, epoch), ready_body(0, epoch), T0 + t)
    registry.mark_lost(0, "crash", T0 + 4.0)
    assert not registry.may_restart(0, T0 + 4.0, restart_max=3, window_s=10.0)
    assert registry.cards[0].state is CardState.FAILED


def test_restart_max_zero_never_restarts():
    registry = ready([0])
    registry.mark_lost(0, "x", T0)
    assert not registry.may_restart(0, T0, restart_max=0, window_s=10.0)
    assert registry.cards[0].state is CardState.FAILED


# --------------------------------------------------------------------------- shutdown


def test_stop_all_clears_routes_and_stops_every_card():
    registry = ready([0, 1, 2])
    registry.mark_lost(2, "x", T0)
    registry.stop_all()
    assert registry.routes == {}
    assert registry.by_identity == {}
    assert all(c.state is CardState.STOPPED for c in registry.cards.values())
    assert not registry.all_ready()
    assert registry.expired(T0 + 100.0, EXPIRY_S) == []
    assert registry.mark_lost(0, "late", T0 + 1.0) is None
    assert registry.on_seen(b"card0.1", T0 + 1.0) is None
    # identities stay on the entries so the broker can still tell each card to DISCONNECT
    assert registry.cards[0].identity == b"card0.1"


def test_status_shows_no_dead_pid_nor_stale_loss_text():
    from farm.registry import CardState, Registry

    registry = Registry([0])
    entry = registry.starting(0, 0, now=0.0)
    assert entry.describe()["pid"] is None  # not spawned yet
    entry.pid, entry.spawned_s = 4242, 0.0
    assert registry.start_expired(now=5.0, start_timeout_s=10.0) == []
    assert registry.start_expired(now=10.5, start_timeout_s=10.0) == [entry]
    registry.mark_lost(0, "did not start within 10s", now=10.5)
    lost = entry.describe()
    assert (lost["state"], lost["pid"], lost["lost_reason"]) == (
        "lost",
        None,
        "did not start within 10s",
    )
    entry.stats = {"reclaimed_hbm_bytes": 100, "reclaimed_clients": 1, "reclaimed_models": "x"}
    again = registry.starting(0, 0, now=11.0)
    again.pid = 4343
    again.stats = {"reclaimed_hbm_bytes": 5}
    shown = again.describe()
    assert (shown["pid"], shown["lost_reason"], shown["state"]) == (4343, "", "starting")
    assert shown["reclaimed"] == {"clients": 1, "hbm_bytes": 105, "models": 0, "streams": 0}
    assert again.state is CardState.STARTING
