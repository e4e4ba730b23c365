"""Farm configuration: TOML (stdlib ``tomllib``) into frozen dataclasses.

Precedence, highest first: ``overrides`` (CLI flags) > environment (``NPUFARM_*``) > the config
file > built-in defaults. Card profiles live in ``configs/cards/<name>.toml`` (a ``[profile]``
table), found next to the config file (``<config dir>/cards/``) and then in the repository's
``configs/cards/``. Every validation error is a :class:`~core.errors.ConfigError` whose message
names the source (file, environment variable or override) and the field.

Config file shape::

    [farm]
    name = "default"
    endpoint = "ipc"            # "ipc" | "ipc:///abs/path" | "tcp://127.0.0.1:PORT"
    time_scale = 1.0
    heartbeat_interval_s = 0.25
    heartbeat_liveness = 4
    [cards]
    count = 4
    profile = "910b"            # a profile name, or an inline table (optional ``base`` key)
    [[cards.override]]          # optional, per card
    device_id = 3
    profile = "910b-straggler"  # and/or CardProfile fields applied on top (e.g. speed_factor)

The dataclasses (:mod:`core.config_model`, re-exported here) validate themselves too
(``__post_init__``), so ``dataclasses.replace`` and :meth:`FarmConfig.from_dict` cannot produce an
invalid config. The value and table checks they share with fault plans are :mod:`core.validate`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config_model import (
    FARM_SPEC,
    MAX_CARDS,
    MAX_IPC_PATH,
    PROFILE_SPEC,
    SANITIZER_MODES,
    SKIP_SYNC_MODES,
    CardConfig,
    CardProfile,
    FarmConfig,
    check_cards,
    default_runtime_dir,
)
from core.errors import ConfigError
from core.validate import (
    NAME_RE,
    Spec,
    between,
    check_keys,
    check_table,
    convert,
    ge,
    hint,
    parse_size,
    read_toml,
    to_int,
    to_str,
    type_error,
)

__all__ = [
    "CardProfile",
    "CardConfig",
    "FarmConfig",
    "ENV_VARS",
    "MAX_CARDS",
    "MAX_IPC_PATH",
    "SKIP_SYNC_MODES",
    "SANITIZER_MODES",
    "load_config",
    "default_config_path",
    "default_runtime_dir",
    "parse_size",
]

logger = logging.getLogger(__name__)

_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

#: Environment variable → setting it overrides (``cards`` is the card count).
ENV_VARS: dict[str, str] = {
    "NPUFARM_TIME_SCALE": "time_scale",
    "NPUFARM_CARDS": "cards",
    "NPUFARM_ENDPOINT": "endpoint",
    "NPUFARM_HEARTBEAT_INTERVAL_S": "heartbeat_interval_s",
    "NPUFARM_SANITIZER": "sanitizer",
    "NPUFARM_SKIP_SYNC": "skip_sync",
    "NPUFARM_SEED": "seed",
    "NPUFARM_RUNTIME_DIR": "runtime_dir",
}
_ENV_CONFIG = "NPUFARM_CONFIG"


# --------------------------------------------------------------------------------------------
# paths


def default_config_path() -> Path:
    """The packaged default config: ``<repo>/configs/default.toml`` (may not exist)."""
    return _CONFIGS_DIR / "default.toml"


# --------------------------------------------------------------------------------------------
# loading


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    return read_toml(path, label, "config file")


class _Profiles:
    """Resolves profile names (files) and inline tables into :class:`CardProfile`."""

    _TABLE_KEYS = (*PROFILE_SPEC, "base")

    def __init__(self, config_path: Path | None) -> None:
        dirs = [config_path.parent / "cards"] if config_path is not None else []
        dirs.append(_CONFIGS_DIR / "cards")
        self.dirs: list[Path] = []
        for folder in dirs:
            if folder.resolve() not in [d.resolve() for d in self.dirs]:
                self.dirs.append(folder)
        self._cache: dict[Path, CardProfile] = {}

    def known(self) -> list[str]:
        names = {p.stem for folder in self.dirs if folder.is_dir() for p in folder.glob("*.toml")}
        return sorted(names | {CardProfile.name})

    def resolve(self, spec: object, label: str, base: CardProfile | None = None) -> CardProfile:
        """A profile from a name or an inline table (applied on ``base`` if it has no base)."""
        if isinstance(spec, str):
            return self.by_name(spec, label)
        if isinstance(spec, dict):
            return self.from_table(spec, label, default_name="custom", base=base)
        raise type_error(label, "a profile name or an inline table", spec)

    def by_name(self, name: str, label: str, chain: tuple[str, ...] = ()) -> CardProfile:
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"{label}: invalid profile name {name!r}")
        if name in chain:
            raise ConfigError(f"{label}: profile base cycle {' -> '.join((*chain, name))}")
        path = next((d / f"{name}.toml" for d in self.dirs if (d / f"{name}.toml").is_file()), None)
        if path is None:
            if name == CardProfile.name:  # the built-in default works without any files
                return CardProfile()
            looked = ", ".join(str(d) for d in self.dirs)
            raise ConfigError(
                f"{label}: card profile {name!r} not found in {looked}{hint(name, self.known())}; "
                f"known profiles: {', '.join(self.known())}"
            )
        key = path.resolve()
        if key not in self._cache:
            raw = _read_toml(path, str(path))
            check_keys(raw, ("profile",), str(path))
            table = check_table(raw.get("profile"), f"{path}: profile")
            self._cache[key] = self.from_table(
                table, f"{path}: profile", default_name=path.stem, chain=(*chain, name)
            )
        return self._cache[key]

    def from_table(
        self,
        table: Mapping[str, object],
        label: str,
        *,
        default_name: str | None,
        base: CardProfile | None = None,
        chain: tuple[str, ...] = (),
    ) -> CardProfile:
        """Fields of ``table`` on top of ``table["base"]`` (a name), ``base``, or the defaults.

        ``default_name`` None keeps the base profile's name when the table sets none.
        """
        check_keys(table, self._TABLE_KEYS, label)
        if "base" in table:
            base_name = convert(f"{label}.base", table["base"], Spec(to_str))
            base = self.by_name(base_name, f"{label}.base", chain)
        values = (base or CardProfile()).to_dict()
        if default_name is not None:
            values["name"] = default_name
        for key, value in table.items():
            if key != "base":
                values[key] = convert(f"{label}.{key}", value, PROFILE_SPEC[key])
        return CardProfile(**values)


@dataclass
class _Setting:
    value: object
    label: str
    text: bool = False  # strings accepted for numbers (environment, CLI)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> FarmConfig:
    """Load and validate a farm config.

    Precedence: ``overrides`` > ``env`` (``NPUFARM_*``; defaults to ``os.environ``) > file >
    defaults. ``path`` None → ``$NPUFARM_CONFIG`` if set, else :func:`default_config_path` (or
    built-in defaults when that file is absent). ``overrides`` keys are :class:`FarmConfig` field
    names plus ``cards`` (a count) and ``profile`` (profile name for all cards); ``None`` values
    are ignored so argparse results can be passed as they are.
    """
    env = os.environ if env is None else env
    config_path = _config_path(path, env)
    source = str(config_path) if config_path is not None else "<defaults>"
    raw = _read_toml(config_path, source) if config_path is not None else {}

    settings, cards_table = _file_settings(raw, source)
    _apply_env(settings, env)
    _apply_overrides(settings, overrides or {})

    farm_kwargs: dict[str, Any] = {}
    for key, spec in FARM_SPEC.items():
        if key in settings:
            item = settings[key]
            farm_kwargs[key] = convert(item.label, item.value, spec, text=item.text)
    count_setting = settings["cards"]
    count = convert(
        count_setting.label,
        count_setting.value,
        Spec(to_int, between(1, MAX_CARDS)),
        text=count_setting.text,
    )
    cards, origins = _build_cards(
        count, settings["profile"], cards_table, source, _Profiles(config_path)
    )

    interval_s = farm_kwargs.get("heartbeat_interval_s", FarmConfig.heartbeat_interval_s)
    liveness = farm_kwargs.get("heartbeat_liveness", FarmConfig.heartbeat_liveness)
    check_cards(
        cards,
        interval_s,
        liveness,
        lambda i: count_setting.label if i < 0 else f"{origins[i]} (device {i})",
    )
    config = FarmConfig(**farm_kwargs, cards=cards)
    logger.debug("loaded config %s: %d cards, endpoint %s", source, count, config.endpoint)
    return config


def _config_path(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """``path``, else ``$NPUFARM_CONFIG``, else the default file if present; None = defaults."""
    if path is not None:
        return Path(path).expanduser()
    if env.get(_ENV_CONFIG):
        return Path(env[_ENV_CONFIG]).expanduser()
    config_path = default_config_path()
    if not config_path.is_file():
        logger.debug("no %s; using built-in defaults", config_path)
        return None
    return config_path


def _file_settings(
    raw: Mapping[str, Any], source: str
) -> tuple[dict[str, _Setting], Mapping[str, Any]]:
    """The file's ``[farm]`` settings plus ``cards`` and ``profile``, and its ``[cards]`` table."""
    check_keys(raw, ("farm", "cards"), source)
    farm_table = check_table(raw.get("farm", {}), f"{source}: farm")
    check_keys(farm_table, FARM_SPEC, f"{source}: farm")
    settings = {key: _Setting(value, f"{source}: farm.{key}") for key, value in farm_table.items()}
    cards_table = check_table(raw.get("cards", {}), f"{source}: cards")
    check_keys(cards_table, ("count", "profile", "override"), f"{source}: cards")
    settings["cards"] = _Setting(cards_table.get("count", 4), f"{source}: cards.count")
    settings["profile"] = _Setting(cards_table.get("profile", "910b"), f"{source}: cards.profile")
    return settings, cards_table


def _apply_env(settings: dict[str, _Setting], env: Mapping[str, str]) -> None:
    """Non-empty ``NPUFARM_*`` variables (:data:`ENV_VARS`) replace file settings."""
    for var, key in ENV_VARS.items():
        if env.get(var, "") != "":
            settings[key] = _Setting(env[var], f"environment {var}", text=True)


def _apply_overrides(settings: dict[str, _Setting], overrides: Mapping[str, object]) -> None:
    """CLI overrides replace everything else; unknown keys are refused, None values skipped."""
    known = [*FARM_SPEC, "cards", "profile"]
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(
                f"override {key!r}: unknown setting{hint(key, known)}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        if value is not None:
            settings[key] = _Setting(value, f"override {key!r}", text=True)


def _build_cards(
    count: int,
    profile_setting: _Setting,
    cards_table: Mapping[str, Any],
    source: str,
    profiles: _Profiles,
) -> tuple[tuple[CardConfig, ...], list[str]]:
    """``count`` cards on the default profile with per-card overrides; also each one's origin."""
    default_profile = profiles.resolve(profile_setting.value, profile_setting.label)
    per_card = _card_overrides(cards_table, source, profiles, default_profile)
    cards: list[CardConfig] = []
    origins: list[str] = []
    for device_id in range(count):
        profile, origin = per_card.get(device_id, (default_profile, profile_setting.label))
        cards.append(CardConfig(device_id, profile))
        origins.append(origin)
    for device_id in sorted(set(per_card) - set(range(count))):
        logger.debug("card override for device %d ignored: only %d cards", device_id, count)
    return tuple(cards), origins


def _card_overrides(
    cards_table: Mapping[str, Any],
    source: str,
    profiles: _Profiles,
    default_profile: CardProfile,
) -> dict[int, tuple[CardProfile, str]]:
    """``[[cards.override]]`` entries → {device_id: (profile, label)}."""
    entries = cards_table.get("override", [])
    if not isinstance(entries, list):
        raise type_error(
            f"{source}: cards.override", "an array of tables [[cards.override]]", entries
        )
    file_count = cards_table.get("count", 4)
    result: dict[int, tuple[CardProfile, str]] = {}
    for index, entry in enumerate(entries):
        label = f"{source}: cards.override[{index}]"
        table = check_table(entry, label)
        check_keys(table, ("device_id", "profile", *PROFILE_SPEC), label)
        if "device_id" not in table:
            raise ConfigError(f"{label}: missing 'device_id'")
        device_id = convert(f"{label}.device_id", table["device_id"], Spec(to_int, ge(0)))
        if isinstance(file_count, int) and device_id >= file_count:
            raise ConfigError(
                f"{label}.device_id: {device_id} is out of range for cards.count {file_count}"
            )
        if device_id in result:
            raise ConfigError(f"{label}.device_id: device {device_id} is overridden twice")
        base = default_profile
        if "profile" in table:
            base = profiles.resolve(table["profile"], f"{label}.profile", base=default_profile)
        fields = {k: v for k, v in table.items() if k not in ("device_id", "profile")}
        profile = (
            profiles.from_table(fields, label, default_name=None, base=base) if fields else base
        )
        result[device_id] = (profile, label)
    return result
