"""The Python half of libascendcl.so: the implementation of every emulated C call.

Each module implements one concern and keeps its calls in a :class:`~cabi.bridge.registry.
CallTable`; :data:`EMULATED` merges them (C name -> Python function). The functions take what
cffi passes for the ABI types of the C prototypes (``int`` for integers and enums, ``float``,
an int (the library's ``uintptr_t``) or a ``void *`` cdata (an ABI-mode FFI) for every pointer
and handle; :mod:`cabi.bridge.cdata` takes both) and return the C value (an ``aclError`` int, a
pointer as :func:`cabi.bridge.cdata.pointer` makes it, an integer, a float, or nothing). All
of them go through ``client.RUNTIME``, the runtime ``import acl`` uses, so codes, poison, the
sanitizer and the ledger are the same.

=================  ===================================================================
module             calls
=================  ===================================================================
``base``           aclInit/aclFinalize, aclGetRecentErrMsg, data buffers, aclDataTypeSize,
                   aclFloat16ToFloat/aclFloatToFloat16
``rt_device``      devices, contexts, device syncs, run mode, SoC name
``rt_stream``      streams and events
``rt_memory``      device and host memory, memcpy/memset, memory info, acldvppMalloc/Free
``rt_callback``    host callbacks (subscribe/launch/process) and exception infos
``tensor``         aclCreateTensorDesc and the aclGetTensorDesc*/aclSetTensor* family
``mdl_load``       loading (also WithMem and QuerySize), unloading, execution
``mdl_desc``       model descriptions, aclmdlIODims, dynamic shapes
``mdl_dataset``    datasets, their tensor descriptions, exec-config handles
=================  ===================================================================

:func:`install` is called once by the library's init code with the library's ``ffi``: it binds
the ffi (:mod:`cabi.bridge.cdata`) and registers every call with ``ffi.def_extern`` under the
name of its ``extern "Python"`` body (the C name with the library's prefix: the exported C
function is a wrapper of the library's own, :func:`cabi.build_c.wrapper_source`). An
exception a call raises unexpectedly is logged and the C caller gets
:data:`~cabi.bridge.registry.UNEXPECTED_ERROR` (500000, ACL_ERROR_INTERNAL_ERROR) from an
``aclError`` call, NULL from a pointer call, 0 (or the call's documented failure value, e.g.
-1 for ``aclGetTensorDescType``) from the others: the C program never crashes on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from cabi.bridge import (
    base,
    cdata,
    mdl_dataset,
    mdl_desc,
    mdl_load,
    rt_callback,
    rt_device,
    rt_memory,
    rt_stream,
    tensor,
)
from cabi.bridge.registry import (
    UNEXPECTED_ERROR,
    answer_failure,
    body_of,
    failure_value,
    kind_of,
    merge,
)
from core.errors import NpuFarmError

__all__ = ["EMULATED", "UNEXPECTED_ERROR", "install", "on_error"]

logger = logging.getLogger(__name__)

EMULATED: dict[str, Callable[..., Any]] = merge(
    module.CALLS
    for module in (
        base,
        rt_device,
        rt_stream,
        rt_memory,
        rt_callback,
        tensor,
        mdl_load,
        mdl_desc,
        mdl_dataset,
    )
)
"""C name -> the Python function that implements it, for every emulated call."""


def on_error(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """The ``onerror`` handler of ``name`` for ``ffi.def_extern``: the value of an
    ``AclError`` the body raised, as the :class:`~cabi.bridge.registry.CallTable` call answers
    it (the library registers the undecorated body); any other exception is logged and the C
    caller gets what the module docstring says."""
    value = failure_value(function)
    call_kind = kind_of(function)
    kind = call_kind.name

    def handler(exc_type: type, exc_value: BaseException, traceback: Any) -> Any:
        if isinstance(exc_value, NpuFarmError):
            return answer_failure(name, call_kind, exc_value)
        logger.error(
            "npufarm: %s raised %s; returning %s",
            name,
            exc_type.__name__,
            "NULL" if kind == "pointer" else value,
            exc_info=(exc_type, exc_value, traceback),
        )
        if kind == "pointer":
            return cdata.null()
        return value

    return handler


def configure_logging() -> None:
    """A C program has no Python logging set up: honour ``NPUFARM_LOG_LEVEL`` (e.g. DEBUG) as
    the CLI does, unless a host Python process already configured its own logging."""
    level = os.environ.get("NPUFARM_LOG_LEVEL", "").strip().upper()
    if level and not logging.getLogger().handlers:
        try:
            logging.basicConfig(level=level, format="npufarm %(levelname)s %(name)s: %(message)s")
        except ValueError:  # not a level name: keep Python's default (warnings and up)
            logger.warning("NPUFARM_LOG_LEVEL=%r is not a logging level; ignored", level)


def install(ffi: Any, prefix: str = "", handles_as_ints: bool = False) -> None:
    """Bind ``ffi`` and register every emulated call with ``ffi.def_extern`` as
    ``prefix + <C name>``; ``handles_as_ints``: the ``extern "Python"`` declarations take and
    return every pointer as a ``uintptr_t`` (:func:`cabi.bridge.cdata.bind`)."""
    configure_logging()
    cdata.bind(ffi, handles_as_ints=handles_as_ints)
    for name, function in EMULATED.items():
        ffi.def_extern(name=prefix + name, onerror=on_error(name, function))(body_of(function))
    logger.debug("cabi.bridge: %d calls installed", len(EMULATED))
