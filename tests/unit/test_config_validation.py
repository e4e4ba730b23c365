"""Unit tests for core.config validation: every bad file, environment variable and override is
refused with a message naming its source and field; the dataclasses check themselves; sizes
parse."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import CardConfig, CardProfile, FarmConfig, load_config, parse_size
from core.errors import ConfigError
from tests.unit.config_helpers import error_of, load

__all__: list[str] = []


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[farm]\ntime_scal = 1.0\n", "farm: unknown key 'time_scal' (did you mean 'time_scale'?)"),
        ("[farms]\n", "unknown key 'farms' (did you mean 'farm'?)"),
        ("[cards]\ncuont = 2\n", "cards: unknown key 'cuont' (did you mean 'count'?)"),
        ("[farm]\ntime_scale = 'fast'\n", "farm.time_scale: expected a number, got str 'fast'"),
        ("[farm]\ntime_scale = true\n", "farm.time_scale: expected a number, got bool"),
        ("[farm]\nheartbeat_liveness = 2.5\n", "farm.heartbeat_liveness: expected an integer"),
        ("[farm]\nname = 3\n", "farm.name: expected a string, got int 3"),
        ("[farm]\nname = 'a/b'\n", "farm.name: must be 1-64 characters"),
        ("[farm]\ntime_scale = -1\n", "farm.time_scale: must be >= 0, got -1.0"),
        ("[farm]\nheartbeat_interval_s = 0\n", "farm.heartbeat_interval_s: must be > 0, got 0.0"),
        ("[farm]\nheartbeat_liveness = 0\n", "farm.heartbeat_liveness: must be >= 1, got 0"),
        ("[farm]\nrestart_max = -1\n", "farm.restart_max: must be >= 0"),
        ("[farm]\nseed = -1\n", "farm.seed: must be in 0.."),
        ("[farm]\nmin_completion_delay_s = -0.1\n", "farm.min_completion_delay_s: must be >= 0"),
        ("[farm]\nskip_sync = 'poisson'\n", "farm.skip_sync: must be one of 'poison', 'stale'"),
        ("[farm]\nskip_sync = 'poisson'\n", "(did you mean 'poison'?)"),
        ("[farm]\nsanitizer = 'on'\n", "farm.sanitizer: must be one of 'off', 'warn', 'raise'"),
        ("[farm]\nendpoint = 'tcp://0.0.0.0:5555'\n", "farm.endpoint: must be 'ipc'"),
        ("[farm]\nendpoint = 'tcp://10.0.0.1:5555'\n", "(loopback only)"),
        ("[farm]\nendpoint = 'tcp://127.0.0.1:0'\n", "tcp port must be in 1..65535, got 0"),
        ("[farm]\nendpoint = 'tcp://127.0.0.1:99999'\n", "tcp port must be in 1..65535"),
        ("[farm]\nendpoint = 'ipc://relative.sock'\n", "ipc path must be absolute"),
        ("[farm]\nendpoint = 'ipc:///" + "x" * 120 + "'\n", "must be shorter than 100"),
        ("[farm]\nendpoint = 'inproc://x'\n", "farm.endpoint: must be"),
        ("[cards]\ncount = 0\n", "cards.count: must be in 1..256, got 0"),
        ("[cards]\ncount = 257\n", "cards.count: must be in 1..256, got 257"),
        ("[cards]\ncount = '4'\n", "cards.count: expected an integer, got str"),
        ("[cards]\nprofile = 'nope'\n", "cards.profile: card profile 'nope' not found"),
        ("[cards]\nprofile = '910c'\n", "(did you mean '910b'?)"),
        ("[cards]\nprofile = '../x'\n", "cards.profile: invalid profile name '../x'"),
        ("[cards]\nprofile = 5\n", "cards.profile: expected a profile name or an inline table"),
        ("[cards]\nprofile = { hbm_bytes = 1000 }\n", "cards.profile.hbm_bytes: must be >= 1 MiB"),
        ("[cards]\nprofile = { hbm = 1 }\n", "cards.profile: unknown key 'hbm'"),
        ("[cards]\nprofile = { exec_slots = 0 }\n", "cards.profile.exec_slots: must be >= 1"),
        ("[cards]\nprofile = { speed_factor = 0 }\n", "cards.profile.speed_factor: must be > 0"),
        ("[cards]\nprofile = { jitter_sigma = -1 }\n", "cards.profile.jitter_sigma: must be >= 0"),
        ("[cards]\nprofile = { hbm_bytes = '1 XB' }\n", "cannot parse size '1 XB'"),
        (
            "[cards]\nprofile = { exec_config_extensions = [1] }\n",
            "exec_config_extensions: exec-config attr ids must be in 2..9",
        ),
        (
            "[cards]\nprofile = { exec_config_extensions = [2, 2] }\n",
            "exec_config_extensions: must not repeat ids",
        ),
        ("[cards]\noverride = 3\n", "cards.override: expected an array of tables"),
        ("[[cards.override]]\nprofile = '310p'\n", "cards.override[0]: missing 'device_id'"),
        (
            "[[cards.override]]\ndevice_id = 4\n",
            "cards.override[0].device_id: 4 is out of range for cards.count 4",
        ),
        (
            "[[cards.override]]\ndevice_id = 1\n[[cards.override]]\ndevice_id = 1\n",
            "cards.override[1].device_id: device 1 is overridden twice",
        ),
        (
            "[[cards.override]]\ndevice_id = 1\nspeed = 2.0\n",
            "unknown key 'speed' (did you mean 'speed_factor'?)",
        ),
        ("[farm\n", "invalid TOML"),
    ],
)
def test_validation_errors(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "farm.toml") in message  # names the file


def test_cross_field_op_timeout_vs_heartbeat_expiry(tmp_path: Path) -> None:
    text = """
    [farm]
    heartbeat_interval_s = 1.0
    heartbeat_liveness = 5
    [cards]
    profile = { op_timeout_s = 5.0 }
    """
    message = error_of(tmp_path, text)
    assert "cards.profile (device 0)" in message
    assert "op_timeout_s 5.0 must be > heartbeat expiry 5 s" in message
    # raising the expiry through the environment trips the same check, naming the profile source
    ok = "[cards]\nprofile = { op_timeout_s = 5.0 }\n"
    assert load(tmp_path, ok).cards[0].profile.op_timeout_s == 5.0
    message = error_of(tmp_path, ok, env={"NPUFARM_HEARTBEAT_INTERVAL_S": "2"})
    assert "must be > heartbeat expiry 8 s" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"NPUFARM_TIME_SCALE": "fast"}, "environment NPUFARM_TIME_SCALE: expected a number"),
        ({"NPUFARM_TIME_SCALE": "nan"}, "NPUFARM_TIME_SCALE: must be a finite number"),
        ({"NPUFARM_CARDS": "0"}, "environment NPUFARM_CARDS: must be in 1..256, got 0"),
        ({"NPUFARM_CARDS": "two"}, "environment NPUFARM_CARDS: expected an integer"),
        ({"NPUFARM_SANITIZER": "loud"}, "environment NPUFARM_SANITIZER: must be one of"),
        ({"NPUFARM_SKIP_SYNC": "x"}, "environment NPUFARM_SKIP_SYNC: must be one of"),
        ({"NPUFARM_ENDPOINT": "tcp://1.2.3.4:1"}, "environment NPUFARM_ENDPOINT: must be"),
        ({"NPUFARM_HEARTBEAT_INTERVAL_S": "-1"}, "NPUFARM_HEARTBEAT_INTERVAL_S: must be > 0"),
        ({"NPUFARM_SEED": "1.5"}, "environment NPUFARM_SEED: expected an integer"),
    ],
)
def test_env_errors_name_the_variable(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    assert expected in error_of(tmp_path, "", env=env)


def test_override_errors(tmp_path: Path) -> None:
    message = error_of(tmp_path, "", overrides={"time_scael": 1.0})
    assert "override 'time_scael': unknown setting (did you mean 'time_scale'?)" in message
    message = error_of(tmp_path, "", overrides={"heartbeat_liveness": 0})
    assert "override 'heartbeat_liveness': must be >= 1" in message


def test_dataclasses_validate_themselves() -> None:
    with pytest.raises(ConfigError, match=r"FarmConfig.time_scale: must be >= 0"):
        FarmConfig(time_scale=-1.0)
    with pytest.raises(ConfigError, match=r"CardProfile.hbm_bytes: must be >= 1 MiB"):
        CardProfile(hbm_bytes=1024)
    with pytest.raises(ConfigError, match=r"FarmConfig.cards: card count must be in 1..256"):
        FarmConfig(cards=())
    profile = CardProfile()
    with pytest.raises(ConfigError, match=r"device ids must be 0..1 in order"):
        FarmConfig(cards=(CardConfig(1, profile), CardConfig(0, profile)))
    with pytest.raises(ConfigError, match=r"must be > heartbeat expiry"):
        FarmConfig(heartbeat_interval_s=500.0)
    with pytest.raises(ConfigError, match=r"CardConfig.profile: expected a CardProfile"):
        CardConfig(0, "910b")  # type: ignore[arg-type]
    config = dataclasses.replace(FarmConfig(), time_scale=0)
    assert isinstance(config.time_scale, float)
    assert CardProfile(hbm_bytes="2GiB").hbm_bytes == 2 << 30  # type: ignore[arg-type]
    assert CardProfile(exec_config_extensions=[2, 3]).exec_config_extensions == (2, 3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("1GiB", 1 << 30),
        ("512MiB", 512 << 20),
        ("512 mib", 512 << 20),
        ("64k", 64 << 10),
        ("2Gi", 2 << 30),
        ("1.5KiB", 1536),
        ("1MB", 1_000_000),
        ("3B", 3),
        ("1TiB", 1 << 40),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("lots", "cannot parse size 'lots'"),
        ("1 XB", "cannot parse size"),
        ("1.3B", "not a whole number of bytes"),
        (-1, "size must be >= 0"),
        (True, "expected a size"),
        (1.5, "expected a size"),
    ],
)
def test_parse_size_errors(value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_size(value, field="hbm")
    with pytest.raises(ConfigError, match=r"^hbm: "):
        parse_size(value, field="hbm")


def test_sizes_in_files(tmp_path: Path) -> None:
    text = "[cards]\nprofile = { hbm_bytes = '256MiB' }\n"
    assert load(tmp_path, text).cards[0].profile.hbm_bytes == 256 << 20
    text = "[cards]\nprofile = { hbm_bytes = 2097152 }\n"
    assert load(tmp_path, text).cards[0].profile.hbm_bytes == 2 << 20
