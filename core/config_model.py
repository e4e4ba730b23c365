"""The farm's configuration as frozen dataclasses: :class:`CardProfile`, :class:`CardConfig`,
:class:`FarmConfig`, their field specs and the runtime directory.

The dataclasses validate themselves (``__post_init__``), so ``dataclasses.replace`` and
:meth:`FarmConfig.from_dict` cannot produce an invalid config. Loading them from TOML, the
environment and CLI overrides is :func:`core.config.load_config` (which re-exports all of this).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.validate import (
    Spec,
    between,
    check_keys,
    check_name,
    check_nonempty,
    check_table,
    convert,
    ge,
    gt,
    one_of,
    to_float,
    to_int,
    to_ints,
    to_size,
    to_str,
    type_error,
)

__all__ = [
    "CardProfile",
    "CardConfig",
    "FarmConfig",
    "MAX_CARDS",
    "MAX_IPC_PATH",
    "SKIP_SYNC_MODES",
    "SANITIZER_MODES",
    "PROFILE_SPEC",
    "FARM_SPEC",
    "check_cards",
    "default_runtime_dir",
]

MAX_CARDS = 256
MAX_IPC_PATH = 100  # unix socket paths must stay under sun_path (108 bytes incl. NUL)
SKIP_SYNC_MODES = ("poison", "stale")
SANITIZER_MODES = ("off", "warn", "raise")
_MIN_HBM_BYTES = 1 << 20
_EXEC_CONFIG_IDS = range(2, 10)  # aclmdlExecConfigAttr ids beyond 0/1 (stream/event timeout)
_TCP_RE = re.compile(r"tcp://(127\.0\.0\.1|localhost):(\d{1,5})")


# --------------------------------------------------------------------------------------------
# field checks and specs


def _check_hbm(value: int) -> str | None:
    return None if value >= _MIN_HBM_BYTES else f"must be >= 1 MiB (1048576), got {value}"


def _check_extensions(value: tuple[int, ...]) -> str | None:
    bad = [v for v in value if v not in _EXEC_CONFIG_IDS]
    if bad:
        return f"exec-config attr ids must be in 2..9, got {bad}"
    if len(set(value)) != len(value):
        return f"must not repeat ids, got {list(value)}"
    return None


def _to_affinity(label: str, value: object, text: bool) -> tuple[int, ...] | str:
    """``"auto"`` or a list of CPU numbers (``[]``: no affinity, the card runs anywhere)."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    if isinstance(value, str) and not text:
        raise ConfigError(f"{label}: must be 'auto' or a list of CPU numbers, got {value!r}")
    return to_ints(label, value, text)


def _check_affinity(value: tuple[int, ...] | str) -> str | None:
    if value == "auto":
        return None
    if len(set(value)) != len(value):
        return f"must not repeat CPUs, got {list(value)}"
    allowed = sorted(os.sched_getaffinity(0))
    missing = [cpu for cpu in value if cpu not in allowed]
    if missing:
        return f"CPUs {missing} are not available to this process (allowed: {allowed})"
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


PROFILE_SPEC: dict[str, Spec] = {
    "name": Spec(to_str, check_name),
    "soc_name": Spec(to_str, check_nonempty),
    "hbm_bytes": Spec(to_size, _check_hbm),
    "speed_factor": Spec(to_float, gt(0)),
    "jitter_sigma": Spec(to_float, ge(0)),
    "exec_slots": Spec(to_int, ge(1)),
    "max_streams": Spec(to_int, ge(1)),
    "max_events": Spec(to_int, ge(1)),
    "op_timeout_s": Spec(to_float, gt(0)),
    "exec_config_extensions": Spec(to_ints, _check_extensions),
    "intra_op_threads": Spec(to_int, between(1, 64)),
    "cpu_affinity": Spec(_to_affinity, _check_affinity),
    "timer_spin_s": Spec(to_float, between(0, 0.01)),
}

FARM_SPEC: dict[str, Spec] = {
    "name": Spec(to_str, check_name),
    "endpoint": Spec(to_str, _check_endpoint),
    "runtime_dir": Spec(to_str),
    "time_scale": Spec(to_float, ge(0)),
    "heartbeat_interval_s": Spec(to_float, gt(0)),
    "heartbeat_liveness": Spec(to_int, ge(1)),
    "restart_max": Spec(to_int, ge(0)),
    "restart_window_s": Spec(to_float, gt(0)),
    "skip_sync": Spec(to_str, one_of(SKIP_SYNC_MODES)),
    "min_completion_delay_s": Spec(to_float, ge(0)),
    "sanitizer": Spec(to_str, one_of(SANITIZER_MODES)),
    "seed": Spec(to_int, between(0, 2**64 - 1)),
}


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
    intra_op_threads: int = 1  # onnxruntime intra-op threads of each ONNX model on the card
    cpu_affinity: tuple[int, ...] | str = ()  # CPUs the card process may run on; "auto"; () any
    timer_spin_s: float = 0.001  # most a card spins before a due completion (device/pacing.py)

    def __post_init__(self) -> None:
        for name, spec in PROFILE_SPEC.items():
            value = convert(f"CardProfile.{name}", getattr(self, name), spec)
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain (msgpack/JSON friendly) form."""
        data = dataclasses.asdict(self)
        data["exec_config_extensions"] = list(self.exec_config_extensions)
        if self.cpu_affinity != "auto":
            data["cpu_affinity"] = list(self.cpu_affinity)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, label: str = "CardProfile") -> CardProfile:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        table = check_table(data, label)
        check_keys(table, PROFILE_SPEC, label)
        return cls(**{k: convert(f"{label}.{k}", v, PROFILE_SPEC[k]) for k, v in table.items()})


@dataclass(frozen=True)
class CardConfig:
    """One card of the farm: its ACL device id and its profile."""

    device_id: int
    profile: CardProfile

    def __post_init__(self) -> None:
        convert("CardConfig.device_id", self.device_id, Spec(to_int, between(0, MAX_CARDS - 1)))
        if not isinstance(self.profile, CardProfile):
            raise type_error("CardConfig.profile", "a CardProfile", self.profile)


def _default_cards() -> tuple[CardConfig, ...]:
    profile = CardProfile()
    return tuple(CardConfig(i, profile) for i in range(4))


def check_cards(
    cards: tuple[CardConfig, ...], interval_s: float, liveness: int, where: Callable[[int], str]
) -> None:
    """Card-list checks shared by the loader and ``FarmConfig.__post_init__``."""
    if not 1 <= len(cards) <= MAX_CARDS:
        raise ConfigError(f"{where(-1)}: card count must be in 1..{MAX_CARDS}, got {len(cards)}")
    expiry_s = interval_s * liveness
    for index, card in enumerate(cards):
        if not isinstance(card, CardConfig):
            raise type_error(where(index), "a CardConfig", card)
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
        for name, spec in FARM_SPEC.items():
            value = convert(f"FarmConfig.{name}", getattr(self, name), spec)
            object.__setattr__(self, name, value)
        if isinstance(self.cards, list):
            object.__setattr__(self, "cards", tuple(self.cards))
        if not isinstance(self.cards, tuple):
            raise type_error("FarmConfig.cards", "a tuple of CardConfig", self.cards)
        check_cards(
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

    def make_runtime_dir(self) -> Path:
        """The runtime directory, made (mode 0o700, parents too) if it does not exist; a
        :class:`ConfigError` in one line if it cannot be made or is not a directory. An explicit
        ``runtime_dir`` that exists is used as it is (its mode is the user's business)."""
        path = self.runtime_path(create=True)
        if not path.is_dir():
            _ensure_private_dir(path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"runtime_dir: {str(path)!r} is not writable")
        return path

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
        table = check_table(data, "FarmConfig")
        check_keys(table, [*FARM_SPEC, "cards"], "FarmConfig")
        kwargs = {k: v for k, v in table.items() if k != "cards"}
        if "cards" in table:
            items = table["cards"]
            if not isinstance(items, list | tuple):
                raise type_error("FarmConfig.cards", "a list", items)
            cards = []
            for i, item in enumerate(items):
                label = f"FarmConfig.cards[{i}]"
                entry = check_table(item, label)
                check_keys(entry, ("device_id", "profile"), label)
                if "device_id" not in entry or "profile" not in entry:
                    raise ConfigError(f"{label}: needs 'device_id' and 'profile'")
                profile = CardProfile.from_dict(entry["profile"], label=f"{label}.profile")
                cards.append(CardConfig(entry["device_id"], profile))
            kwargs["cards"] = tuple(cards)
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# paths


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
        raise ConfigError(
            f"runtime_dir: cannot create {str(path)!r}: {exc.strerror or exc}"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"runtime_dir: {str(path)!r} exists and is not a directory")
    if info.st_uid != os.getuid():
        raise ConfigError(f"runtime_dir: {str(path)!r} belongs to uid {info.st_uid}, not us")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
