"""Binding pyACL names to the process-wide runtime (translation only, no logic)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from client import RUNTIME
from core.errors import ACL_ERROR_FEATURE_UNSUPPORTED

__all__ = ["runtime_call", "handle_call", "Unsupported", "unsupported", "module_getattr"]

logger = logging.getLogger(__name__)


def runtime_call(name: str, summary: str | None = None) -> Callable[..., Any]:
    """``acl.<module>.<name>`` forwarding to ``RUNTIME.<name>``. ``summary`` becomes the
    method's docstring if it has none (the list of supported calls is built from them)."""
    method = getattr(RUNTIME, name)
    method.__func__.__acl_name__ = name
    if summary and not method.__func__.__doc__:
        method.__func__.__doc__ = summary
    return method


def handle_call(name: str) -> Callable[..., Any]:
    """Forward to the runtime's host-side descriptor tables (replaced at each acl.init)."""

    def call(*args: Any) -> Any:
        return getattr(RUNTIME.handles, name)(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(type(RUNTIME.handles), name).__doc__
    return call


_warned: set[str] = set()


class Unsupported(int):
    """The return of a call npufarm does not emulate: the int 200006, which also unpacks as
    ``(0, 200006)``, so ``ret = f()`` and ``value, ret = f()`` both see the code."""

    def __iter__(self):
        return iter((0, int(self)))

    def __repr__(self) -> str:
        return f"Unsupported({int(self)})"


def unsupported(module: str, name: str) -> Callable[..., Any]:
    """A call npufarm does not emulate: returns ACL_ERROR_FEATURE_UNSUPPORTED (logged once per
    name) instead of raising AttributeError, so a program can test the code and go on."""
    full = f"{module}.{name}"

    def call(*args: Any, **kwargs: Any) -> Unsupported:
        if full not in _warned:
            _warned.add(full)
            logger.warning(
                "%s is not emulated by npufarm: returning %d (feature unsupported)",
                full,
                ACL_ERROR_FEATURE_UNSUPPORTED,
            )
        return Unsupported(ACL_ERROR_FEATURE_UNSUPPORTED)

    call.__name__ = call.__qualname__ = name
    call.unsupported = True
    return call


def module_getattr(module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the facade: unknown public names are unsupported calls."""

    def __getattr__(name: str) -> Any:  # noqa: N807
        if name.startswith("_"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return unsupported(module, name)

    return __getattr__
