"""Unit tests for loading a core.config FarmConfig: defaults, the precedence of file,
environment and overrides, to_dict/from_dict round trips, the shipped configs and runtime paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core import config as cfg
from core.config import (
    CardProfile,
    FarmConfig,
    default_config_path,
    default_runtime_dir,
    load_config,
)
from core.errors import ConfigError
from tests.unit.config_helpers import REPO_CONFIGS, load, write

__all__: list[str] = []


# -------------------------------------------------------------------------------------- defaults


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


# ------------------------------------------------------------------------------------ precedence


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


# ------------------------------------------------------------------------------------ round trip


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


# ------------------------------------------------------------------------------- shipped configs


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


# --------------------------------------------------------------------------------- runtime paths


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
