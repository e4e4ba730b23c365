"""Shared validation helpers for the farm's config files and fault plans.

Every helper raises :class:`~core.errors.ConfigError` with a message that starts with the
``label`` it is given (a file and key, an environment variable, an override or a dataclass
field), so :mod:`core.config` and :mod:`core.faults` report problems the same way.

A converter (``to_*``) takes ``(label, value, text)``; ``text`` accepts numbers given as strings
(environment, CLI). A check (``ge``, ``gt``, ``between``, ``one_of``, ``check_*``) takes the
converted value and returns a problem string or None. A :class:`Spec` pairs them for
:func:`convert`.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

__all__ = [
    "read_toml",
    "NAME_RE",
    "Converter",
    "Check",
    "Spec",
    "parse_size",
    "type_error",
    "to_str",
    "to_int",
    "to_float",
    "to_size",
    "to_ints",
    "ge",
    "gt",
    "between",
    "one_of",
    "check_name",
    "check_nonempty",
    "convert",
    "hint",
    "check_keys",
    "check_table",
]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    _SIZE_UNITS[f"{_prefix}b"] = 1000**_power  # SI: KB, MB, GB, TB
    for _suffix in ("", "i", "ib"):  # IEC: K/Ki/KiB, M/Mi/MiB, ...
        _SIZE_UNITS[f"{_prefix}{_suffix}"] = 1 << (10 * _power)
del _power, _prefix, _suffix
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


# --------------------------------------------------------------------------------------------
# value conversion


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


def type_error(label: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{label}: expected {expected}, got {type(value).__name__} {value!r}")


def to_str(label: str, value: object, text: bool) -> str:
    if not isinstance(value, str):
        raise type_error(label, "a string", value)
    return value.strip() if text else value


def to_int(label: str, value: object, text: bool) -> int:
    if text and isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            raise type_error(label, "an integer", value) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(label, "an integer", value)
    return value


def to_float(label: str, value: object, text: bool) -> float:
    if text and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise type_error(label, "a number", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error(label, "a number", value)
    if not math.isfinite(value):
        raise ConfigError(f"{label}: must be a finite number, got {value!r}")
    return float(value)


def to_size(label: str, value: object, text: bool) -> int:
    return parse_size(value, field=label)


def to_ints(label: str, value: object, text: bool) -> tuple[int, ...]:
    if text and isinstance(value, str):
        value = [part for part in value.replace(",", " ").split()]
    if not isinstance(value, list | tuple):
        raise type_error(label, "a list of integers", value)
    return tuple(to_int(f"{label}[{i}]", item, text) for i, item in enumerate(value))


# --------------------------------------------------------------------------------------------
# value checks

Converter = Callable[[str, object, bool], Any]
Check = Callable[[Any], str | None]


def ge(bound: float) -> Check:
    return lambda v: None if v >= bound else f"must be >= {bound}, got {v!r}"


def gt(bound: float) -> Check:
    return lambda v: None if v > bound else f"must be > {bound}, got {v!r}"


def between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"must be in {low}..{high}, got {v!r}"


def one_of(choices: tuple[str, ...]) -> Check:
    options = ", ".join(repr(c) for c in choices)
    return lambda v: (
        None if v in choices else f"must be one of {options}, got {v!r}{hint(v, choices)}"
    )


def check_name(value: str) -> str | None:
    if NAME_RE.fullmatch(value):
        return None
    return f"must be 1-64 characters of [A-Za-z0-9._-] starting alphanumeric, got {value!r}"


def check_nonempty(value: str) -> str | None:
    return None if value else "must not be empty"


@dataclass(frozen=True)
class Spec:
    convert: Converter
    check: Check | None = None


def convert(label: str, value: object, spec: Spec, *, text: bool = False) -> Any:
    """Type-convert ``value`` (``text``: strings allowed for numbers) and range-check it."""
    result = spec.convert(label, value, text)
    if spec.check is not None:
        problem = spec.check(result)
        if problem:
            raise ConfigError(f"{label}: {problem}")
    return result


# --------------------------------------------------------------------------------------------
# tables (TOML tables and keyword dicts)


def hint(key: object, known: Any) -> str:
    text, names = str(key), [str(k) for k in known]
    matches = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    if not matches and len(text) >= 3:
        matches = [name for name in names if name.startswith(text)][:1]
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def check_keys(table: Mapping[str, object], known: Any, label: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{label}: unknown key {key!r}{hint(key, known)}; "
                f"known keys: {', '.join(sorted(known))}"
            )


def check_table(value: object, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise type_error(label, "a table", value)
    return value


def read_toml(path: str | Path, label: str, what: str) -> dict[str, Any]:
    """The TOML document at ``path``; every problem is a :class:`ConfigError` starting with
    ``label`` and naming ``what`` the file is (e.g. "config file", "fault plan")."""
    try:
        with Path(path).expanduser().open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{label}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {what}: {exc}") from None
