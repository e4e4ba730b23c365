"""Unit tests for core.config card profiles: lookup by name, per-card overrides, inline profiles
with a base, profile files next to the config file, their errors, the built-in 910b, and the
onnxruntime threads / CPU affinity keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core import config as cfg
from core.config import CardProfile
from device.card_spec import affinity_cpus
from tests.unit.config_helpers import error_of, load, write

__all__: list[str] = []


def test_profile_lookup_and_overrides(tmp_path: Path) -> None:
    text = """
    [cards]
    count = 4
    profile = "910b"
    [[cards.override]]
    device_id = 3
    profile = "910b-straggler"
    [[cards.override]]
    device_id = 1
    profile = "310p"
    [[cards.override]]
    device_id = 2
    speed_factor = 2.0
    """
    cards = load(tmp_path, text).cards
    assert cards[0].profile == CardProfile()
    straggler = cards[3].profile
    assert (straggler.name, straggler.speed_factor, straggler.jitter_sigma) == (
        "910b-straggler",
        0.5,
        0.3,
    )
    assert straggler.soc_name == "Ascend910B"  # inherited from base 910b
    p310 = cards[1].profile
    assert (p310.soc_name, p310.max_streams, p310.max_events) == ("Ascend310P3", 1024, 1023)
    assert (p310.op_timeout_s, p310.hbm_bytes, p310.exec_slots) == (547.0, 512 << 20, 2)
    assert cards[2].profile == dataclasses.replace(CardProfile(), speed_factor=2.0)


def test_override_with_profile_and_fields(tmp_path: Path) -> None:
    text = """
    [[cards.override]]
    device_id = 0
    profile = "310p"
    hbm_bytes = "1GiB"
    """
    profile = load(tmp_path, text).cards[0].profile
    assert (profile.name, profile.hbm_bytes, profile.max_events) == ("310p", 1 << 30, 1023)


def test_overrides_beyond_final_count_are_dropped(tmp_path: Path) -> None:
    text = "[[cards.override]]\ndevice_id = 3\nprofile = '310p'\n"
    config = load(tmp_path, text, env={"NPUFARM_CARDS": "2"})
    assert config.card_count == 2
    assert {c.profile.name for c in config.cards} == {"910b"}
    config = load(tmp_path, text, env={"NPUFARM_CARDS": "8"})
    assert config.cards[3].profile.name == "310p"


def test_inline_profile_with_base(tmp_path: Path) -> None:
    text = "[cards]\nprofile = { base = '310p', exec_slots = 8 }\n"
    profile = load(tmp_path, text).cards[0].profile
    assert (profile.name, profile.soc_name, profile.exec_slots) == ("custom", "Ascend310P3", 8)


def test_profile_next_to_config_file_wins(tmp_path: Path) -> None:
    write(
        tmp_path / "cards" / "310p.toml",
        "[profile]\nsoc_name = 'Local310'\nexec_config_extensions = [2, 3, 8]\n",
    )
    write(tmp_path / "cards" / "tiny.toml", "[profile]\nhbm_bytes = '4MiB'\n")
    config = load(tmp_path, "[cards]\nprofile = '310p'\n")
    assert config.cards[0].profile.soc_name == "Local310"
    assert config.cards[0].profile.name == "310p"  # defaults to the file stem
    assert config.cards[0].profile.exec_config_extensions == (2, 3, 8)
    assert load(tmp_path, "[cards]\nprofile = 'tiny'\n").cards[0].profile.hbm_bytes == 4 << 20


def test_profile_file_errors_name_the_profile_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "cards" / "bad.toml", "[profile]\nexec_slot = 2\n")
    message = error_of(tmp_path, "[cards]\nprofile = 'bad'\n")
    assert f"{bad}: profile: unknown key 'exec_slot' (did you mean 'exec_slots'?)" in message
    write(tmp_path / "cards" / "bad.toml", "[profil]\n")
    assert "unknown key 'profil' (did you mean 'profile'?)" in error_of(
        tmp_path, "[cards]\nprofile = 'bad'\n"
    )
    write(tmp_path / "cards" / "a.toml", "[profile]\nbase = 'b'\n")
    write(tmp_path / "cards" / "b.toml", "[profile]\nbase = 'a'\n")
    assert "profile base cycle a -> b -> a" in error_of(tmp_path, "[cards]\nprofile = 'a'\n")


def test_builtin_910b_without_profile_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cfg, "_CONFIGS_DIR", tmp_path / "nowhere")
    assert load(tmp_path, "[cards]\nprofile = '910b'\n").cards[0].profile == CardProfile()


def test_intra_op_threads_and_cpu_affinity(tmp_path: Path) -> None:
    default = CardProfile()
    assert (default.intra_op_threads, default.cpu_affinity) == (1, ())
    text = """
    [cards]
    count = 3
    profile = { base = '910b', intra_op_threads = 2, cpu_affinity = 'auto' }
    [[cards.override]]
    device_id = 1
    cpu_affinity = [0]
    [[cards.override]]
    device_id = 2
    cpu_affinity = []
    """
    cards = load(tmp_path, text).cards
    assert (cards[0].profile.intra_op_threads, cards[0].profile.cpu_affinity) == (2, "auto")
    assert cards[1].profile.cpu_affinity == (0,)
    assert cards[1].profile.to_dict()["cpu_affinity"] == [0]
    assert cards[2].profile.cpu_affinity == ()
    assert CardProfile.from_dict(cards[0].profile.to_dict()) == cards[0].profile


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("intra_op_threads = 0", "intra_op_threads: must be in 1..64, got 0"),
        ("intra_op_threads = 'two'", "intra_op_threads: expected an integer"),
        ("cpu_affinity = 'all'", "cpu_affinity: must be 'auto' or a list of CPU numbers"),
        ("cpu_affinity = [0, 0]", "cpu_affinity: must not repeat CPUs, got [0, 0]"),
        ("cpu_affinity = [4096]", "cpu_affinity: CPUs [4096] are not available to this process"),
        ("cpu_affinity = ['0']", "cpu_affinity[0]: expected an integer"),
    ],
)
def test_intra_op_threads_and_cpu_affinity_errors(
    tmp_path: Path, setting: str, problem: str
) -> None:
    write(tmp_path / "cards" / "bad.toml", f"[profile]\n{setting}\n")
    assert problem in error_of(tmp_path, "[cards]\nprofile = 'bad'\n")


def test_auto_affinity_round_robin() -> None:
    assert affinity_cpus(None, 0, 1, {0, 1}) is None
    assert affinity_cpus([], 3, 1, {0, 1}) is None
    assert affinity_cpus([1], 0, 1, {0, 1}) == {1}
    assert [affinity_cpus("auto", d, 1, {2, 5}) for d in range(3)] == [{2}, {5}, {2}]
    assert [affinity_cpus("auto", d, 2, {0, 1, 2, 3}) for d in range(3)] == [
        {0, 1},
        {2, 3},
        {0, 1},
    ]
    assert affinity_cpus("auto", 1, 4, {0, 1}) == {0, 1}
