"""Binding pyACL names to the process-wide runtime (translation only, no logic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from client import RUNTIME

__all__ = ["runtime_call", "handle_call"]


def runtime_call(name: str) -> Callable[..., Any]:
    """``acl.<module>.<name>`` forwarding to ``RUNTIME.<name>``."""
    method = getattr(RUNTIME, name)
    method.__func__.__acl_name__ = name
    return method


def handle_call(name: str) -> Callable[..., Any]:
    """Forward to the runtime's host-side descriptor tables (replaced at each acl.init)."""

    def call(*args: Any) -> Any:
        return getattr(RUNTIME.handles, name)(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(type(RUNTIME.handles), name).__doc__
    return call
