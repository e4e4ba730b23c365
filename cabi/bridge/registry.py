"""How an emulated C call is declared: a :class:`CallTable` per module, one decorator per C
return kind, and what a call returns when it fails.

Each bridge module keeps a ``CALLS = CallTable()`` and decorates its functions, which are named
exactly as the C symbol they implement::

    @CALLS.error
    def aclrtSetDevice(device_id: int) -> int: ...

The decorator records the C name and the value the call returns when it fails: an ``AclError``
raised in the body (a NULL out-pointer, say) is noted for ``aclGetRecentErrMsg`` and becomes
that value, as the runtime's own calls do. The kinds:

==================== ===================================== ============================
decorator            C return type                         value on failure
==================== ===================================== ============================
``error``            ``aclError``                          the error's ACL code
``pointer``          a pointer (handle, ``const char *``)  NULL
``value(failure=0)`` an integer or enum (``size_t``, ...)  ``failure``
``real``             ``float``                             0.0
``void``             ``void``                              nothing
==================== ===================================== ============================

Anything else a body raises is unexpected: :func:`cabi.bridge.install` logs it and the C caller
gets :data:`UNEXPECTED_ERROR` (500000, ACL_ERROR_INTERNAL_ERROR) from an ``aclError`` call, or
the failure value above from the others (:func:`failure_value`).

The library registers each call's undecorated body (:func:`body_of`) and turns an ``AclError``
into its value in cffi's ``onerror`` handler (:func:`answer_failure`), as the decorated call
does: the call that succeeds, nearly every one, then runs one Python frame less.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cabi.bridge import cdata
from client import RUNTIME
from core.errors import NpuFarmError

__all__ = [
    "UNEXPECTED_ERROR",
    "CallKind",
    "CallTable",
    "answer_failure",
    "body_of",
    "kind_of",
    "failure_value",
    "merge",
]

logger = logging.getLogger(__name__)

UNEXPECTED_ERROR = 500000
"""ACL_ERROR_INTERNAL_ERROR: what an ``aclError`` call returns when the bridge itself raised."""


@dataclass(frozen=True, slots=True)
class CallKind:
    """The C return kind of an emulated call and its value on failure (None: NULL / void)."""

    name: str
    failure: Any


def kind_of(function: Callable[..., Any]) -> CallKind:
    """The :class:`CallKind` a :class:`CallTable` decorator gave ``function``."""
    return function.c_kind


def body_of(function: Callable[..., Any]) -> Callable[..., Any]:
    """The undecorated body of a :class:`CallTable` call (it raises what the call answers)."""
    return function.c_body


def answer_failure(name: str, kind: CallKind, exc: NpuFarmError) -> Any:
    """What the call ``name`` returns for the ``NpuFarmError`` its body raised, noted for
    ``aclGetRecentErrMsg`` (NULL, the ACL code, or the kind's failure value)."""
    RUNTIME.state.note_error(name, exc)
    if kind.name == "pointer":
        return cdata.null()
    return exc.code if kind.name == "error" else kind.failure


def failure_value(function: Callable[..., Any]) -> Any:
    """What the C caller gets when ``function`` raised unexpectedly."""
    kind = kind_of(function)
    return UNEXPECTED_ERROR if kind.name == "error" else kind.failure


class CallTable:
    """The emulated calls of one module, by C name."""

    def __init__(self) -> None:
        self.calls: dict[str, Callable[..., Any]] = {}

    def _register(self, kind: CallKind, function: Callable[..., Any]) -> Callable[..., Any]:
        name = function.__name__
        if name in self.calls:
            raise ValueError(f"{name} is emulated twice")

        @functools.wraps(function)
        def call(*args: Any) -> Any:
            try:
                return function(*args)
            except NpuFarmError as exc:
                return answer_failure(name, kind, exc)

        call.c_kind = kind
        call.c_body = function
        self.calls[name] = call
        return call

    def error(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """An ``aclError`` call: returns 0 or the ACL code of the ``AclError`` it raised."""
        return self._register(CallKind("error", None), function)

    def pointer(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """A call returning a pointer (a ``void *`` cdata); NULL when it fails."""
        return self._register(CallKind("pointer", None), function)

    def value(self, failure: int = 0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A call returning an integer or enum; ``failure`` when it fails."""
        return functools.partial(self._register, CallKind("value", failure))

    def real(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """A call returning a ``float``; 0.0 when it fails."""
        return self._register(CallKind("real", 0.0), function)

    def void(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """A ``void`` call."""
        return self._register(CallKind("void", None), function)


def merge(tables: Iterable[CallTable]) -> dict[str, Callable[..., Any]]:
    """One table of every module's calls (``ValueError`` if a C name comes twice)."""
    merged: dict[str, Callable[..., Any]] = {}
    for table in tables:
        for name, call in table.calls.items():
            if name in merged:
                raise ValueError(f"{name} is emulated by two bridge modules")
            merged[name] = call
    return merged
