"""pyACL's calling conventions, shared by every part of the runtime: how an argument becomes an
int (:func:`int_arg`) and how a method's result or error becomes pyACL's return shape
(:func:`api`).

Every public call of a runtime part is wrapped by :func:`api`, which turns an :class:`AclError`
raised anywhere below into the return shape pyACL uses (a bare ``ret``, or out-values followed by
``ret``), so the bodies read as plain Python and raise with the real CANN code on misuse.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable
from typing import Any

from client.sanitizer import SanitizerError
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS, AclError, NpuFarmError

__all__ = ["api", "int_arg"]

logger = logging.getLogger(__name__)


def int_arg(value: Any, what: str, code: int = ACL_ERROR_INVALID_PARAM) -> int:
    """``value`` as a plain int (``operator.index``: a bool becomes 0 or 1); ``AclError`` with
    ``code`` for anything else, naming the argument as ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return operator.index(value)
        except TypeError:
            raise AclError(f"{what} must be an int, got {type(value).__name__}", code) from None
    return value


def _failure(out: int | str, default: Any, code: int) -> Any:
    """The return shape of a failed call with ``code``."""
    if out == 0:
        return code
    if out == "direct":
        return default
    return (*([default] * out), code) if out > 1 else (default, code)


def api(out: int | str = 0, *, default: Any = 0) -> Callable:
    """Wrap a method of a runtime part (an object with a ``state``, the
    :class:`client.state.RuntimeState`) into pyACL's return shape.

    ``out=0``: returns ``ret``. ``out=n``: the method returns n values; the call returns them
    followed by ``ret`` (``default`` for each on failure). ``out="direct"``: the method's value is
    returned as is, ``default`` on failure (pyACL calls whose C form returns a pointer or size).
    A failure is noted for ``get_recent_err_msg`` (``state.note_error``).
    """

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                result = method(self, *args, **kwargs)
            except SanitizerError:
                raise  # sanitizer = "raise": the offending call raises in the caller
            except NpuFarmError as exc:
                self.state.note_error(method.__name__, exc)
                return _failure(out, default, exc.code)
            except (TypeError, ValueError, OverflowError) as exc:
                error = AclError(str(exc), ACL_ERROR_INVALID_PARAM)
                self.state.note_error(method.__name__, error)
                return _failure(out, default, ACL_ERROR_INVALID_PARAM)
            if out == 0:
                return ACL_SUCCESS if result is None else result
            if out == "direct":
                return result
            return (*result, ACL_SUCCESS) if out > 1 else (result, ACL_SUCCESS)

        call.acl_api = True
        return call

    return wrap
