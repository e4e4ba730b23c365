"""Unit tests for core.config: defaults, precedence, validation, profiles, round trips."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from pathlib import Path

import pytest

from core import config as cfg
from core.config import (
    CardConfig,
    CardProfile,
    FarmConfig,
    default_config_path,
    default_runtime_dir,
    load_config,
    parse_size,
)
from core.errors import ConfigError

__all__: list[str] = []

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **kwargs: object) -> FarmConfig:
    path = write(tmp_path / "farm.toml", text)
    kwargs.setdefault("env", {})
    return load_config(path, **kwargs)  # type: ignore[arg-type]


def error_of(tmp_path: Path, text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------------ defaults


def test_dataclass_defaults() -> None:
    config = FarmConfig()
    assert config.name == "default"
    assert config.endpoint == "ipc"
    assert config.time_scale == 1.0
    assert config.heartbeat_expiry_s == pytest.approx(1.0)
    assert config.skip_sync == "poison" and config.sanitizer == "off"
    assert len(config.cards) == 4 and config.card_count == 4
    assert [c.device_id for c in config.cards] == [0, 1, 2, 3]
    assert config.cards[2].profile == CardProfile()
    assert config.card(3).device_id == 3
    with pytest.raises(IndexError):
        config.card(4)
    profile = CardProfile()
    assert (profile.soc_name, profile.hbm_bytes, profile.exec_slots) == ("Ascend910B", 1 << 30, 4)
    assert (profile.max_streams, profile.max_events, profile.op_timeout_s) == (1984, 65535, 1091.0)


def test_load_without_path_uses_packaged_default() -> None:
    assert default_config_path() == REPO_CONFIGS / "default.toml"
    assert load_config(env={}) == FarmConfig()


def test_missing_packaged_default_falls_back_to_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cfg, "_CONFIGS_DIR", tmp_path / "nowhere")
    assert load_config(env={}) == FarmConfig()


def test_npufarm_config_env_selects_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.toml", "[cards]\ncount = 3\n")
    assert load_config(env={"NPUFARM_CONFIG": str(path)}).card_count == 3


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == FarmConfig()


# ---------------------------------------------------------------------------------- precedence

FILE = """
[farm]
time_scale = 2.0
seed = 7
sanitizer = "warn"
[cards]
count = 3
"""


def test_file_beats_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, FILE)
    assert (config.time_scale, config.seed, config.sanitizer, config.card_count) == (
        2.0,
        7,
        "warn",
        3,
    )
    assert config.heartbeat_interval_s == 0.25  # default kept


def test_env_beats_file(tmp_path: Path) -> None:
    env = {
        "NPUFARM_TIME_SCALE": "0.5",
        "NPUFARM_CARDS": "2",
        "NPUFARM_SEED": "11",
        "NPUFARM_SANITIZER": "raise",
        "NPUFARM_SKIP_SYNC": "stale",
        "NPUFARM_HEARTBEAT_INTERVAL_S": "0.1",
        "NPUFARM_ENDPOINT": "tcp://127.0.0.1:5555",
        "NPUFARM_RUNTIME_DIR": str(tmp_path / "rt"),
    }
    config = load(tmp_path, FILE, env=env)
    assert config.time_scale == 0.5
    assert config.card_count == 2
    assert config.seed == 11
    assert config.sanitizer == "raise"
    assert config.skip_sync == "stale"
    assert config.heartbeat_interval_s == 0.1
    assert config.endpoint_address() == "tcp://127.0.0.1:5555"
    assert config.runtime_dir == str(tmp_path / "rt")


def test_empty_env_value_is_ignored(tmp_path: Path) -> None:
    assert load(tmp_path, FILE, env={"NPUFARM_TIME_SCALE": ""}).time_scale == 2.0


def test_override_beats_env(tmp_path: Path) -> None:
    env = {"NPUFARM_TIME_SCALE": "0.5", "NPUFARM_CARDS": "2"}
    config = load(tmp_path, FILE, env=env, overrides={"time_scale": 0.0, "cards": 5, "seed": None})
    assert config.time_scale == 0.0
    assert config.card_count == 5
    assert config.seed == 7  # None override ignored → file value


def test_override_strings_are_parsed(tmp_path: Path) -> None:
    config = load(tmp_path, FILE, overrides={"time_scale": "0.25", "cards": "6"})
    assert (config.time_scale, config.card_count) == (0.25, 6)


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPUFARM_SEED", "99")
    path = write(tmp_path / "farm.toml", FILE)
    assert load_config(path).seed == 99


def test_override_profile_for_all_cards(tmp_path: Path) -> None:
    config = load(tmp_path, FILE, overrides={"profile": "310p"})
    assert {c.profile.name for c in config.cards} == {"310p"}


# ---------------------------------------------------------------------------------- validation


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


# ------------------------------------------------------------------------------------ profiles


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


# --------------------------------------------------------------------------------------- sizes


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


# ----------------------------------------------------------------------------------- round trip


def test_to_dict_from_dict_round_trip(tmp_path: Path) -> None:
    text = """
    [farm]
    name = "rt"
    endpoint = "tcp://localhost:7000"
    time_scale = 0.0
    seed = 5
    [cards]
    count = 3
    profile = { base = "910b", exec_config_extensions = [2, 3, 8] }
    [[cards.override]]
    device_id = 2
    profile = "310p"
    """
    config = load(tmp_path, text)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON friendly
    assert data["cards"][0]["profile"]["exec_config_extensions"] == [2, 3, 8]
    assert FarmConfig.from_dict(json.loads(json.dumps(data))) == config
    assert FarmConfig.from_dict(data) == config
    assert FarmConfig.from_dict({}) == FarmConfig()
    assert CardProfile.from_dict(CardProfile().to_dict()) == CardProfile()
    msgpack = pytest.importorskip("msgpack")
    packed = msgpack.packb(data, use_bin_type=True)
    assert FarmConfig.from_dict(msgpack.unpackb(packed, raw=False)) == config


def test_from_dict_errors() -> None:
    with pytest.raises(ConfigError, match=r"FarmConfig: unknown key 'tim_scale'"):
        FarmConfig.from_dict({"tim_scale": 1.0})
    data = FarmConfig().to_dict()
    data["cards"][1]["profile"]["hbm"] = 1
    with pytest.raises(ConfigError, match=r"FarmConfig.cards\[1\].profile: unknown key 'hbm'"):
        FarmConfig.from_dict(data)
    data = FarmConfig().to_dict()
    data["cards"][0]["profile"]["exec_slots"] = "4"
    with pytest.raises(ConfigError, match=r"cards\[0\].profile.exec_slots: expected an integer"):
        FarmConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"needs 'device_id' and 'profile'"):
        FarmConfig.from_dict({"cards": [{"device_id": 0}]})


# ---------------------------------------------------------------------------- shipped configs


def test_shipped_configs_load() -> None:
    default = load_config(REPO_CONFIGS / "default.toml", env={})
    assert default == FarmConfig()
    ci = load_config(REPO_CONFIGS / "ci.toml", env={})
    assert ci.card_count == 2
    assert ci.time_scale == 0.0
    assert (ci.heartbeat_interval_s, ci.heartbeat_liveness) == (0.05, 4)
    assert ci.heartbeat_expiry_s == pytest.approx(0.2)
    assert {c.profile.hbm_bytes for c in ci.cards} == {256 << 20}
    for name in ("910b", "910b-straggler", "310p"):
        assert (REPO_CONFIGS / "cards" / f"{name}.toml").is_file()
        config = load_config(overrides={"profile": name}, env={})
        assert config.cards[0].profile.name == name
    straggler = load_config(overrides={"profile": "910b-straggler"}, env={}).cards[0].profile
    assert (straggler.speed_factor, straggler.jitter_sigma) == (0.5, 0.3)


# ------------------------------------------------------------------------------ runtime paths


def test_endpoint_address(tmp_path: Path) -> None:
    config = FarmConfig(name="f1", runtime_dir=str(tmp_path))
    assert config.endpoint_address() == f"ipc://{tmp_path}/f1.sock"
    explicit = FarmConfig(endpoint="ipc:///tmp/x.sock")
    assert explicit.endpoint_address() == "ipc:///tmp/x.sock"
    long_dir = FarmConfig(runtime_dir="/tmp/" + "d" * 95)
    with pytest.raises(ConfigError, match="ipc socket path"):
        long_dir.endpoint_address()


def test_default_runtime_dir_prefers_writable_xdg(tmp_path: Path) -> None:
    path = default_runtime_dir(env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert path == tmp_path / "npufarm"
    assert path.is_dir()
    assert path.stat().st_mode & 0o777 == 0o700


def test_default_runtime_dir_falls_back_to_tmp(tmp_path: Path) -> None:
    path = default_runtime_dir(create=False, env={"XDG_RUNTIME_DIR": str(tmp_path / "missing")})
    assert path == Path("/tmp") / f"npufarm-{os.getuid()}"
    assert default_runtime_dir(create=False, env={}) == path
