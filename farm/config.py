"""Farm configuration: TOML (stdlib ``tomllib``) into frozen dataclasses.

Precedence, highest first: ``overrides`` (CLI flags) > environment (``NPUFARM_*``) > the config
file > built-in defaults. Card profiles live in ``configs/cards/<name>.toml`` (a ``[profile]``
table), found next to the config file (``<config dir>/cards/``) and then in the repository's
``configs/cards/``. Every validation error is a :class:`~farm.errors.ConfigError` whose message
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

The dataclasses validate themselves too (``__post_init__``), so ``dataclasses.replace`` and
:meth:`FarmConfig.from_dict` cannot produce an invalid config.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import ConfigError

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

MAX_CARDS = 256
MAX_IPC_PATH = 100  # unix socket paths must stay under sun_path (108 bytes incl. NUL)
SKIP_SYNC_MODES = ("poison", "stale")
SANITIZER_MODES = ("off", "warn", "raise")
_MIN_HBM_BYTES = 1 << 20
_EXEC_CONFIG_IDS = range(2, 10)  # aclmdlExecConfigAttr ids beyond 0/1 (stream/event timeout)
_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TCP_RE = re.compile(r"tcp://(127\.0\.0\.1|localhost):(\d{1,5})")

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

_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    _SIZE_UNITS[f"{_prefix}b"] = 1000**_power  # SI: KB, MB, GB, TB
    for _suffix in ("", "i", "ib"):  # IEC: K/Ki/KiB, M/Mi/MiB, ...
        _SIZE_UNITS[f"{_prefix}{_suffix}"] = 1 << (10 * _power)
del _power, _prefix, _suffix
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


# --------------------------------------------------------------------------------------------
# value conversion and checks


def parse_size(value: object, *, field: str = "size") -> int:
    """Bytes from an int or a string like ``"1GiB"``, ``"512MiB"``, ``"64k"``, ``"1000000"``.

    IEC suffixes (KiB, MiB, GiB, TiB, also Ki/K, Mi/M, …) are powers of 1024; SI suffixes with a
    ``B`` (KB, MB, GB, TB) are powers of 1000. Case-insensitive. Raises :class:`ConfigError`.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a size (int or string like '1GiB'), got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS:
            raise ConfigError(
                f"{field}: cannot parse size {value!r} (use bytes or a unit: KiB, MiB, GiB, TiB)"
            )
        exact = float(match.group(1)) * _SIZE_UNITS[unit]
        number = int(exact)
        if number != exact:
            raise ConfigError(f"{field}: size {value!r} is not a whole number of bytes")
    else:
        raise ConfigError(
            f"{field}: expected a size (int or string like '1GiB'), got {type(value).__name__}"
        )
    if number < 0:
        raise ConfigError(f"{field}: size must be >= 0, got {value!r}")
    return number


def _type_error(label: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{label}: expected {expected}, got {type(value).__name__} {value!r}")


def _to_str(label: str, value: object, text: bool) -> str:
    if not isinstance(value, str):
        raise _type_error(label, "a string", value)
    return value.strip() if text else value


def _to_int(label: str, value: object, text: bool) -> int:
    if text and isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            raise _type_error(label, "an integer", value) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(label, "an integer", value)
    return value


def _to_float(label: str, value: object, text: bool) -> float:
    if text and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _type_error(label, "a number", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(label, "a number", value)
    if not math.isfinite(value):
        raise ConfigError(f"{label}: must be a finite number, got {value!r}")
    return float(value)


def _to_size(label: str, value: object, text: bool) -> int:
    return parse_size(value, field=label)


def _to_ints(label: str, value: object, text: bool) -> tuple[int, ...]:
    if text and isinstance(value, str):
        value = [part for part in value.replace(",", " ").split()]
    if not isinstance(value, list | tuple):
        raise _type_error(label, "a list of integers", value)
    return tuple(_to_int(f"{label}[{i}]", item, text) for i, item in enumerate(value))


_Converter = Callable[[str, object, bool], Any]
_Check = Callable[[Any], str | None]


def _ge(bound: float) -> _Check:
    return lambda v: None if v >= bound else f"must be >= {bound}, got {v!r}"


def _gt(bound: float) -> _Check:
    return lambda v: None if v > bound else f"must be > {bound}, got {v!r}"


def _between(low: int, high: int) -> _Check:
    return lambda v: None if low <= v <= high else f"must be in {low}..{high}, got {v!r}"


def _one_of(choices: tuple[str, ...]) -> _Check:
    options = ", ".join(repr(c) for c in choices)
    return lambda v: (
        None if v in choices else f"must be one of {options}, got {v!r}{_hint(v, choices)}"
    )


def _check_name(value: str) -> str | None:
    if _NAME_RE.fullmatch(value):
        return None
    return f"must be 1-64 characters of [A-Za-z0-9._-] starting alphanumeric, got {value!r}"


def _check_nonempty(value: str) -> str | None:
    return None if value else "must not be empty"


def _check_hbm(value: int) -> str | None:
    return None if value >= _MIN_HBM_BYTES else f"must be >= 1 MiB (1048576), got {value}"


def _check_extensions(value: tuple[int, ...]) -> str | None:
    bad = [v for v in value if v not in _EXEC_CONFIG_IDS]
    if bad:
        return f"exec-config attr ids must be in 2..9, got {bad}"
    if len(set(value)) != len(value):
        return f"must not repeat ids, got {list(value)}"
    return None


def _check_endpoint(value: str) -> str | None:
    if value == "ipc":
        return None
    if value.startswith("ipc://"):
        path = value[len("ipc://") :]
        if not path.startswith(("/", "@")):
            return f"ipc path must be absolute (ipc:///path), got {value!r}"
        if len(path) >= MAX_IPC_PATH:
            return f"ipc path must be shorter than {MAX_IPC_PATH} characters, got {len(path)}"
        return None
    match = _TCP_RE.fullmatch(value)
    if match:
        port = int(match.group(2))
        return None if 1 <= port <= 65535 else f"tcp port must be in 1..65535, got {port}"
    return (
        "must be 'ipc', 'ipc:///absolute/path' or 'tcp://127.0.0.1:PORT' / "
        f"'tcp://localhost:PORT' (loopback only), got {value!r}"
    )


@dataclass(frozen=True)
class _Spec:
    convert: _Converter
    check: _Check | None = None


_PROFILE_SPEC: dict[str, _Spec] = {
    "name": _Spec(_to_str, _check_name),
    "soc_name": _Spec(_to_str, _check_nonempty),
    "hbm_bytes": _Spec(_to_size, _check_hbm),
    "speed_factor": _Spec(_to_float, _gt(0)),
    "jitter_sigma": _Spec(_to_float, _ge(0)),
    "exec_slots": _Spec(_to_int, _ge(1)),
    "max_streams": _Spec(_to_int, _ge(1)),
    "max_events": _Spec(_to_int, _ge(1)),
    "op_timeout_s": _Spec(_to_float, _gt(0)),
    "exec_config_extensions": _Spec(_to_ints, _check_extensions),
}

_FARM_SPEC: dict[str, _Spec] = {
    "name": _Spec(_to_str, _check_name),
    "endpoint": _Spec(_to_str, _check_endpoint),
    "runtime_dir": _Spec(_to_str),
    "time_scale": _Spec(_to_float, _ge(0)),
    "heartbeat_interval_s": _Spec(_to_float, _gt(0)),
    "heartbeat_liveness": _Spec(_to_int, _ge(1)),
    "restart_max": _Spec(_to_int, _ge(0)),
    "restart_window_s": _Spec(_to_float, _gt(0)),
    "skip_sync": _Spec(_to_str, _one_of(SKIP_SYNC_MODES)),
    "min_completion_delay_s": _Spec(_to_float, _ge(0)),
    "sanitizer": _Spec(_to_str, _one_of(SANITIZER_MODES)),
    "seed": _Spec(_to_int, _between(0, 2**64 - 1)),
}


def _convert(label: str, value: object, spec: _Spec, *, text: bool = False) -> Any:
    """Type-convert ``value`` (``text``: strings allowed for numbers) and range-check it."""
    result = spec.convert(label, value, text)
    if spec.check is not None:
        problem = spec.check(result)
        if problem:
            raise ConfigError(f"{label}: {problem}")
    return result


def _hint(key: object, known: Any) -> str:
    text, names = str(key), [str(k) for k in known]
    matches = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    if not matches and len(text) >= 3:
        matches = [name for name in names if name.startswith(text)][:1]
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _check_keys(table: Mapping[str, object], known: Any, label: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{label}: unknown key {key!r}{_hint(key, known)}; "
                f"known keys: {', '.join(sorted(known))}"
            )


def _check_table(value: object, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(label, "a table", value)
    return value


# --------------------------------------------------------------------------------------------
# dataclasses


@dataclass(frozen=True)
class CardProfile:
    """What one emulated card is like (a product line, or a degraded individual card)."""

    name: str = "910b"
    soc_name: str = "Ascend910B"
    hbm_bytes: int = 1 << 30  # emulated HBM per card (the shm segment is sparse)
    speed_factor: float = 1.0  # >1 faster
    jitter_sigma: float = 0.0  # extra per-card lognormal jitter (stragglers)
    exec_slots: int = 4  # tasks running at once across streams (AI cores)
    max_streams: int = 1984
    max_events: int = 65535
    op_timeout_s: float = 1091.0  # device-side watchdog per operator
    exec_config_extensions: tuple[int, ...] = ()  # exec-config attr ids accepted beyond 0/1

    def __post_init__(self) -> None:
        for name, spec in _PROFILE_SPEC.items():
            value = _convert(f"CardProfile.{name}", getattr(self, name), spec)
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain (msgpack/JSON friendly) form."""
        data = dataclasses.asdict(self)
        data["exec_config_extensions"] = list(self.exec_config_extensions)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, label: str = "CardProfile") -> CardProfile:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        table = _check_table(data, label)
        _check_keys(table, _PROFILE_SPEC, label)
        return cls(**{k: _convert(f"{label}.{k}", v, _PROFILE_SPEC[k]) for k, v in table.items()})


@dataclass(frozen=True)
class CardConfig:
    """One card of the farm: its ACL device id and its profile."""

    device_id: int
    profile: CardProfile

    def __post_init__(self) -> None:
        _convert("CardConfig.device_id", self.device_id, _Spec(_to_int, _between(0, MAX_CARDS - 1)))
        if not isinstance(self.profile, CardProfile):
            raise _type_error("CardConfig.profile", "a CardProfile", self.profile)


def _default_cards() -> tuple[CardConfig, ...]:
    profile = CardProfile()
    return tuple(CardConfig(i, profile) for i in range(4))


def _check_cards(
    cards: tuple[CardConfig, ...], interval_s: float, liveness: int, where: Callable[[int], str]
) -> None:
    """Card-list checks shared by the loader and ``FarmConfig.__post_init__``."""
    if not 1 <= len(cards) <= MAX_CARDS:
        raise ConfigError(f"{where(-1)}: card count must be in 1..{MAX_CARDS}, got {len(cards)}")
    expiry_s = interval_s * liveness
    for index, card in enumerate(cards):
        if not isinstance(card, CardConfig):
            raise _type_error(where(index), "a CardConfig", card)
        if card.device_id != index:
            raise ConfigError(
                f"{where(index)}: device ids must be 0..{len(cards) - 1} in order, "
                f"got device_id {card.device_id} at position {index}"
            )
        if card.profile.op_timeout_s <= expiry_s:
            raise ConfigError(
                f"{where(index)}: profile {card.profile.name!r} op_timeout_s "
                f"{card.profile.op_timeout_s} must be > heartbeat expiry {expiry_s:g} s "
                f"(heartbeat_interval_s {interval_s} x heartbeat_liveness {liveness}), "
                "or a hung kernel would look like a lost card"
            )


@dataclass(frozen=True)
class FarmConfig:
    """The whole farm: endpoint, timing, failure semantics and the cards."""

    name: str = "default"
    endpoint: str = "ipc"  # "ipc" | "ipc:///path" | "tcp://127.0.0.1:PORT"
    runtime_dir: str = ""  # "" → default_runtime_dir()
    time_scale: float = 1.0  # multiplies every modelled duration; 0 = as fast as possible
    heartbeat_interval_s: float = 0.25
    heartbeat_liveness: int = 4  # missed beats before a peer is declared lost
    restart_max: int = 3
    restart_window_s: float = 60.0
    skip_sync: str = "poison"  # "poison" | "stale"
    min_completion_delay_s: float = 0.0
    sanitizer: str = "off"  # "off" | "warn" | "raise"
    seed: int = 0
    cards: tuple[CardConfig, ...] = field(default_factory=_default_cards)

    def __post_init__(self) -> None:
        for name, spec in _FARM_SPEC.items():
            value = _convert(f"FarmConfig.{name}", getattr(self, name), spec)
            object.__setattr__(self, name, value)
        if isinstance(self.cards, list):
            object.__setattr__(self, "cards", tuple(self.cards))
        if not isinstance(self.cards, tuple):
            raise _type_error("FarmConfig.cards", "a tuple of CardConfig", self.cards)
        _check_cards(
            self.cards,
            self.heartbeat_interval_s,
            self.heartbeat_liveness,
            lambda i: "FarmConfig.cards" if i < 0 else f"FarmConfig.cards[{i}]",
        )

    @property
    def heartbeat_expiry_s(self) -> float:
        """Silence after which a card or client is declared lost."""
        return self.heartbeat_interval_s * self.heartbeat_liveness

    @property
    def card_count(self) -> int:
        return len(self.cards)

    def card(self, device_id: int) -> CardConfig:
        """The card with ``device_id``; ``IndexError`` if out of range."""
        if not 0 <= device_id < len(self.cards):
            raise IndexError(f"device_id {device_id} out of range 0..{len(self.cards) - 1}")
        return self.cards[device_id]

    def runtime_path(self, *, create: bool = True) -> Path:
        """The runtime directory (state file, ipc socket): ``runtime_dir`` or the default."""
        if self.runtime_dir:
            return Path(self.runtime_dir).expanduser()
        return default_runtime_dir(create=create)

    def endpoint_address(self) -> str:
        """The resolved ZeroMQ address (``"ipc"`` → ``ipc://<runtime_dir>/<name>.sock``)."""
        if self.endpoint != "ipc":
            return self.endpoint
        path = str(self.runtime_path() / f"{self.name}.sock")
        if len(path) >= MAX_IPC_PATH:
            raise ConfigError(
                f"endpoint: ipc socket path {path!r} is {len(path)} characters (limit "
                f"{MAX_IPC_PATH - 1}); set a shorter runtime_dir or an explicit ipc:// endpoint"
            )
        return f"ipc://{path}"

    def to_dict(self) -> dict[str, Any]:
        """Plain (msgpack/JSON friendly) form, e.g. to hand the config to a child process."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cards"
        }
        data["cards"] = [
            {"device_id": card.device_id, "profile": card.profile.to_dict()} for card in self.cards
        ]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FarmConfig:
        """Inverse of :meth:`to_dict`; unknown keys or bad values are a :class:`ConfigError`."""
        table = _check_table(data, "FarmConfig")
        _check_keys(table, [*_FARM_SPEC, "cards"], "FarmConfig")
        kwargs = {k: v for k, v in table.items() if k != "cards"}
        if "cards" in table:
            items = table["cards"]
            if not isinstance(items, list | tuple):
                raise _type_error("FarmConfig.cards", "a list", items)
            cards = []
            for i, item in enumerate(items):
                label = f"FarmConfig.cards[{i}]"
                entry = _check_table(item, label)
                _check_keys(entry, ("device_id", "profile"), label)
                if "device_id" not in entry or "profile" not in entry:
                    raise ConfigError(f"{label}: needs 'device_id' and 'profile'")
                profile = CardProfile.from_dict(entry["profile"], label=f"{label}.profile")
                cards.append(CardConfig(entry["device_id"], profile))
            kwargs["cards"] = tuple(cards)
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# paths


def default_config_path() -> Path:
    """The packaged default config: ``<repo>/configs/default.toml`` (may not exist)."""
    return _CONFIGS_DIR / "default.toml"


def default_runtime_dir(*, create: bool = True, env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/npufarm`` if that is set and writable, else ``/tmp/npufarm-<uid>``.

    With ``create`` the directory is made with mode 0o700; an existing directory must belong to
    the current user (a shared ``/tmp`` could hold one planted by someone else).
    """
    env = os.environ if env is None else env
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        path = Path(xdg) / "npufarm"
    else:
        path = Path("/tmp") / f"npufarm-{os.getuid()}"
    if create:
        _ensure_private_dir(path)
    return path


def _ensure_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise ConfigError(f"runtime_dir: cannot create {str(path)!r}: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"runtime_dir: {str(path)!r} exists and is not a directory")
    if info.st_uid != os.getuid():
        raise ConfigError(f"runtime_dir: {str(path)!r} belongs to uid {info.st_uid}, not us")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


# --------------------------------------------------------------------------------------------
# loading


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{label}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc}") from None


class _Profiles:
    """Resolves profile names (files) and inline tables into :class:`CardProfile`."""

    _TABLE_KEYS = (*_PROFILE_SPEC, "base")

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
        raise _type_error(label, "a profile name or an inline table", spec)

    def by_name(self, name: str, label: str, chain: tuple[str, ...] = ()) -> CardProfile:
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{label}: invalid profile name {name!r}")
        if name in chain:
            raise ConfigError(f"{label}: profile base cycle {' -> '.join((*chain, name))}")
        path = next((d / f"{name}.toml" for d in self.dirs if (d / f"{name}.toml").is_file()), None)
        if path is None:
            if name == CardProfile.name:  # the built-in default works without any files
                return CardProfile()
            looked = ", ".join(str(d) for d in self.dirs)
            raise ConfigError(
                f"{label}: card profile {name!r} not found in {looked}{_hint(name, self.known())}; "
                f"known profiles: {', '.join(self.known())}"
            )
        key = path.resolve()
        if key not in self._cache:
            raw = _read_toml(path, str(path))
            _check_keys(raw, ("profile",), str(path))
            table = _check_table(raw.get("profile"), f"{path}: profile")
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
        _check_keys(table, self._TABLE_KEYS, label)
        if "base" in table:
            base_name = _convert(f"{label}.base", table["base"], _Spec(_to_str))
            base = self.by_name(base_name, f"{label}.base", chain)
        values = (base or CardProfile()).to_dict()
        if default_name is not None:
            values["name"] = default_name
        for key, value in table.items():
            if key != "base":
                values[key] = _convert(f"{label}.{key}", value, _PROFILE_SPEC[key])
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
    config_path: Path | None
    if path is not None:
        config_path = Path(path).expanduser()
    elif env.get(_ENV_CONFIG):
        config_path = Path(env[_ENV_CONFIG]).expanduser()
    else:
        config_path = default_config_path()
        if not config_path.is_file():
            logger.debug("no %s; using built-in defaults", config_path)
            config_path = None
    source = str(config_path) if config_path is not None else "<defaults>"
    raw = _read_toml(config_path, source) if config_path is not None else {}

    settings: dict[str, _Setting] = {}
    _check_keys(raw, ("farm", "cards"), source)
    farm_table = _check_table(raw.get("farm", {}), f"{source}: farm")
    _check_keys(farm_table, _FARM_SPEC, f"{source}: farm")
    for key, value in farm_table.items():
        settings[key] = _Setting(value, f"{source}: farm.{key}")
    cards_table = _check_table(raw.get("cards", {}), f"{source}: cards")
    _check_keys(cards_table, ("count", "profile", "override"), f"{source}: cards")
    settings["cards"] = _Setting(cards_table.get("count", 4), f"{source}: cards.count")
    settings["profile"] = _Setting(cards_table.get("profile", "910b"), f"{source}: cards.profile")

    for var, key in ENV_VARS.items():
        if env.get(var, "") != "":
            settings[key] = _Setting(env[var], f"environment {var}", text=True)
    for key, value in (overrides or {}).items():
        if key not in (*_FARM_SPEC, "cards", "profile"):
            known = [*_FARM_SPEC, "cards", "profile"]
            raise ConfigError(
                f"override {key!r}: unknown setting{_hint(key, known)}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        if value is not None:
            settings[key] = _Setting(value, f"override {key!r}", text=True)

    farm_kwargs: dict[str, Any] = {}
    for key, spec in _FARM_SPEC.items():
        if key in settings:
            item = settings[key]
            farm_kwargs[key] = _convert(item.label, item.value, spec, text=item.text)
    count_setting = settings["cards"]
    count = _convert(
        count_setting.label,
        count_setting.value,
        _Spec(_to_int, _between(1, MAX_CARDS)),
        text=count_setting.text,
    )

    profiles = _Profiles(config_path)
    profile_setting = settings["profile"]
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

    interval_s = farm_kwargs.get("heartbeat_interval_s", FarmConfig.heartbeat_interval_s)
    liveness = farm_kwargs.get("heartbeat_liveness", FarmConfig.heartbeat_liveness)
    _check_cards(
        tuple(cards),
        interval_s,
        liveness,
        lambda i: count_setting.label if i < 0 else f"{origins[i]} (device {i})",
    )
    config = FarmConfig(**farm_kwargs, cards=tuple(cards))
    logger.debug("loaded config %s: %d cards, endpoint %s", source, count, config.endpoint)
    return config


def _card_overrides(
    cards_table: Mapping[str, Any],
    source: str,
    profiles: _Profiles,
    default_profile: CardProfile,
) -> dict[int, tuple[CardProfile, str]]:
    """``[[cards.override]]`` entries → {device_id: (profile, label)}."""
    entries = cards_table.get("override", [])
    if not isinstance(entries, list):
        raise _type_error(
            f"{source}: cards.override", "an array of tables [[cards.override]]", entries
        )
    file_count = cards_table.get("count", 4)
    result: dict[int, tuple[CardProfile, str]] = {}
    for index, entry in enumerate(entries):
        label = f"{source}: cards.override[{index}]"
        table = _check_table(entry, label)
        _check_keys(table, ("device_id", "profile", *_PROFILE_SPEC), label)
        if "device_id" not in table:
            raise ConfigError(f"{label}: missing 'device_id'")
        device_id = _convert(f"{label}.device_id", table["device_id"], _Spec(_to_int, _ge(0)))
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
