"""The card's hybrid wait (device/pacing.py) and the completion lead's third part, on fake clocks:
the spin window is the recent p99 of the loop's sleep lateness, capped by the profile's
``timer_spin_s`` (0: never), none while the host's CPU is contended (PSI); a spin ends at the
due time or at the first message; the lead adds the card's fire-to-send time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.config_model import CardConfig, CardProfile, FarmConfig
from core.errors import ConfigError
from device.card import Card
from device.card_spec import CardSpec
from device.pacing import MAX_CONTENDED_SHARE, SpinWindow, psi_some_us
from device.timing import MAX_LEAD_S, CompletionLead, RunningMedian, RunningQuantile

pytestmark = pytest.mark.timeout(30)

T0 = 1000.0
US = 1e-6


class Clock:
    def __init__(self, now: float = T0, step: float = 0.0) -> None:
        self.now, self.step = now, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Pressure:
    """A fake PSI "some" total (µs); None: no PSI on this host."""

    def __init__(self, total: int | None = 0) -> None:
        self.total = total

    def __call__(self) -> int | None:
        return self.total


def test_running_quantile_and_the_median_as_one_of_it():
    p99 = RunningQuantile(window=100, every=100, quantile=0.99)
    for k in range(100):
        p99.add(float(k))
    assert p99.value == 99.0
    p90 = RunningQuantile(window=10, every=10, quantile=0.9)
    assert p90.add_many([float(k) for k in range(10)]) and p90.value == 9.0
    median = RunningMedian(window=4, every=4)
    for sample in (4.0, 1.0, 3.0, 2.0):
        median.add(sample)
    assert median.value == 3.0 and median.quantile == 0.5  # the upper middle, as before


def test_the_lead_adds_the_cards_fire_to_send_time():
    lead = CompletionLead(window=4, every=2)
    for _ in range(2):
        lead.arrived(T0, T0 + 300 * US)
        lead.fired(80 * US)
    assert lead.value == pytest.approx(380 * US)
    lead.flushed(40 * US)
    lead.flushed(40 * US)
    assert lead.flush.value == pytest.approx(40 * US)
    assert lead.value == pytest.approx(420 * US)
    for _ in range(4):
        lead.flushed(0.5)  # a stalled loop: the lead stays capped
    assert lead.value == MAX_LEAD_S


def window(cap_s: float = 0.001, pressure: Pressure | None = None) -> SpinWindow:
    return SpinWindow(cap_s, pressure or Pressure())


def late(spin: SpinWindow, samples: list[float]) -> None:
    """Feed sleep lateness samples: each sleep was due at T0 and woke that late."""
    for sample in samples:
        assert spin.woke(T0, True, Clock(T0 + sample))


def test_the_window_is_the_p99_of_the_sleeps_lateness_capped():
    spin = window(cap_s=0.001)
    assert spin.value == 0.0  # nothing measured yet: it sleeps all the way
    late(spin, [100 * US] * 250 + [400 * US] * 6)  # 256 samples: the p99 is in the 400s
    assert spin.value == pytest.approx(400 * US)
    late(spin, [5e-3] * 256)  # a host whose sleeps wake 5 ms late: the cap
    assert spin.value == 0.001
    off = window(cap_s=0.0)
    late(off, [400 * US] * 256)
    assert off.value == 0.0 and off.lateness.samples == []  # never spins, keeps nothing


def test_an_early_wake_up_is_not_a_sample_and_a_look_is_not_a_sleep():
    spin = window()
    assert not spin.woke(T0, True, Clock(T0 - 10 * US))  # spurious: the loop sleeps again
    assert spin.woke(T0, False, Clock(T0 + 50 * US))  # (no sleep: a look at the socket)
    assert spin.lateness.samples == []
    assert spin.woke(T0, True, Clock(T0 + 50 * US))
    assert spin.lateness.samples == [pytest.approx(50 * US)]


def test_no_spinning_while_the_hosts_cpu_is_contended():
    pressure = Pressure(0)
    spin = window(cap_s=0.001, pressure=pressure)
    late(spin, [300 * US] * 256)
    spin.tick(T0)  # the first tick only marks
    assert spin.value == pytest.approx(300 * US) and not spin.contended
    pressure.total += int(0.25 * 1e6 * (MAX_CONTENDED_SHARE + 0.05))  # over the share
    spin.tick(T0 + 0.25)
    assert spin.contended and spin.value == 0.0
    assert spin.stats()["spin_contended"] is True
    pressure.total += int(0.25 * 1e6 * (MAX_CONTENDED_SHARE / 2))  # calm again
    spin.tick(T0 + 0.5)
    assert not spin.contended and spin.value == pytest.approx(300 * US)
    pressure.total = None  # no PSI (another kernel): never contended
    spin.tick(T0 + 0.75)
    assert not spin.contended and spin.value == pytest.approx(300 * US)


def test_psi_is_read_from_the_some_line(tmp_path):
    path = tmp_path / "cpu"
    path.write_text(
        "some avg10=1.00 avg60=2.00 avg300=3.00 total=123456\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    assert psi_some_us(str(path)) == 123456
    assert psi_some_us(str(tmp_path / "missing")) is None
    path.write_text("garbage\n")
    assert psi_some_us(str(path)) is None


def test_a_spin_ends_at_the_due_time_or_at_the_first_message():
    spin = window()
    clock = Clock(T0, step=10 * US)
    looks = []

    def nothing() -> tuple[bool, list]:
        looks.append(clock.now)
        return False, []

    assert spin.spin(T0 + 200 * US, nothing, clock) == (False, [])
    assert clock.now >= T0 + 200 * US and len(looks) == pytest.approx(20, abs=1)
    assert spin.spun_s == pytest.approx(200 * US, abs=15 * US)
    messages = iter([(False, []), (False, []), (True, [[b"frame"]])])
    clock = Clock(T0, step=10 * US)
    assert spin.spin(T0 + 1.0, lambda: next(messages), clock) == (True, [[b"frame"]])
    assert clock.now < T0 + 100 * US  # taken at once, not at the due time
    assert spin.spin(T0 - 1.0, nothing, Clock(T0)) == (False, [])  # already due: no look
    assert spin.stats()["spun_ms"] == pytest.approx(spin.spun_s * 1e3, abs=0.1)


def test_the_profile_knob_is_checked():
    assert CardProfile().timer_spin_s == 0.001
    assert CardProfile(timer_spin_s=0).timer_spin_s == 0.0
    assert CardProfile.from_dict({"timer_spin_s": 0.0005}).timer_spin_s == 0.0005
    for bad in (-0.001, 0.5, "fast"):
        with pytest.raises(ConfigError):
            CardProfile(timer_spin_s=bad)


def loop_state(timers: list[float], window_s: float, beat_s: float, loading: bool = False):
    """What Card._poll_timeout_s looks at (a stand-in for the card)."""
    spin = window(cap_s=0.01)
    spin.value = window_s
    return SimpleNamespace(
        prefault_queue=[],
        backlog=False,
        heartbeat=SimpleNamespace(next_s=beat_s),
        loader=SimpleNamespace(pending=loading),
        runner=SimpleNamespace(timers=[(t,) for t in timers]),
        spin=spin,
        _timed=False,
    )


@pytest.mark.parametrize(
    "timers, window_s, beat_s, loading, timeout_s, timed",
    [
        ([T0 + 0.005], 0.0, T0 + 0.25, False, 0.005, True),  # no window: sleep to the timer
        ([T0 + 0.005], 0.0004, T0 + 0.25, False, 0.0046, True),  # the window before it
        ([T0 + 0.005], 0.0004, T0 + 0.001, False, 0.001, False),  # the heartbeat first
        ([T0 + 0.005], 0.0004, T0 + 0.25, True, 0.002, False),  # a model build's poll first
        ([T0 + 0.0003], 0.0004, T0 + 0.25, False, 0.0, True),  # inside the window: spin now
        ([], 0.0004, T0 + 0.25, False, 0.25, False),  # idle: sleep to the heartbeat
    ],
    ids=["no-window", "window", "heartbeat", "loading", "inside", "idle"],
)
def test_the_loop_sleeps_to_the_window_before_its_next_timer(
    timers, window_s, beat_s, loading, timeout_s, timed
):
    card = loop_state(timers, window_s, beat_s, loading)
    assert Card._poll_timeout_s(card, T0) == pytest.approx(timeout_s)
    assert card._timed is timed


def test_the_supervisor_hands_the_profiles_knob_to_its_cards():
    from farm.supervisor import Supervisor  # (the farm layer: only to see the spec it builds)

    cards = (CardConfig(0, CardProfile(timer_spin_s=0.0005)), CardConfig(1, CardProfile()))
    supervisor = Supervisor(FarmConfig(cards=cards), "tspin", "ipc:///tmp/tspin.sock")
    assert supervisor.card_spec(0, 1).timer_spin_s == 0.0005
    assert supervisor.card_spec(1, 1).timer_spin_s == 0.001
    assert CardSpec.from_dict(supervisor.card_spec(0, 1).to_dict()).timer_spin_s == 0.0005
