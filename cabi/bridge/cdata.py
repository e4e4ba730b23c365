"""The one place that holds the cffi ``ffi`` of libascendcl, and the conversions between what C
passes and what the runtime takes.

:func:`bind` is called once, by :func:`cabi.bridge.install` (tests bind an ABI-mode FFI of their
own). The library passes every pointer and handle as a ``uintptr_t`` (a plain int) and takes
its pointer results as ints (``bind(ffi, handles_as_ints=True)``); an ABI-mode FFI passes and
takes ``void *`` cdata. The helpers here work either way, and everything else in the bridge
goes through them:

- a pointer or handle C passes becomes an int with :func:`address` (NULL is 0; an int is
  itself); an int handle of the runtime becomes what C receives with :func:`pointer` (itself,
  or a ``void *`` cdata);
- out-parameters are written with :func:`store` (after :func:`require` checked them);
- ``const char *`` arguments are read with :func:`text`; a ``const char *`` the library returns
  must outlive the call: :func:`interned` keeps one buffer per distinct string for the life of
  the process (tensor names, the SoC name), :func:`thread_text` keeps the last one per thread
  (``aclGetRecentErrMsg``);
- the structs the ACL headers define (``aclmdlIODims``, ``aclmdlBatch``, ``aclmdlHW``) are read
  and written through :func:`struct_at`, which views an address with a private ABI-mode FFI that
  knows their layout (the library's own ``ffi`` declares only ``void *`` parameters).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import cffi

from core.errors import ACL_ERROR_INVALID_PARAM, AclError

__all__ = [
    "MAX_DIM_COUNT",
    "MAX_TENSOR_NAME_LEN",
    "MAX_GEAR_COUNT",
    "STRUCTS",
    "bind",
    "bound",
    "handles_as_ints",
    "address",
    "pointer",
    "null",
    "require",
    "store",
    "text",
    "interned",
    "thread_text",
    "struct_at",
    "read_bytes",
    "function",
]

logger = logging.getLogger(__name__)

MAX_DIM_COUNT = 128
"""ACL_MAX_DIM_CNT: entries of ``aclmdlIODims.dims``."""
MAX_TENSOR_NAME_LEN = 128
"""ACL_MAX_TENSOR_NAME_LEN: bytes of ``aclmdlIODims.name``, the NUL included."""
MAX_GEAR_COUNT = 128
"""ACL_MAX_BATCH_NUM = ACL_MAX_HW_NUM: entries of ``aclmdlBatch.batch`` / ``aclmdlHW.hw``."""

STRUCTS = f"""
typedef struct {{
    char name[{MAX_TENSOR_NAME_LEN}]; size_t dimCount; int64_t dims[{MAX_DIM_COUNT}];
}} aclmdlIODims;
typedef struct {{ size_t batchCount; uint64_t batch[{MAX_GEAR_COUNT}]; }} aclmdlBatch;
typedef struct {{ size_t hwCount; uint64_t hw[{MAX_GEAR_COUNT}][2]; }} aclmdlHW;
"""
"""The public ACL structs the bridge fills, laid out as the headers declare them."""

_interned: dict[bytes, Any] = {}
_interned_lock = threading.Lock()
_per_thread = threading.local()


def _not_installed(*args: Any) -> Any:
    raise RuntimeError("cabi.bridge is not installed: call install(ffi) first")


class _Binding:
    """The bound ffi and the casts every call makes, resolved once (they are on the path of
    every call: a string type would be looked up again each time)."""

    ffi: Any = None
    cast: Any = _not_installed
    uintptr: Any = None
    void_p: Any = None
    as_ints: bool = False
    out_types: dict[str, Any] = {}


_binding = _Binding()


def bind(ffi: Any, handles_as_ints: bool = False) -> None:
    """Use ``ffi`` for every conversion from now on (the library's, or a test's);
    ``handles_as_ints``: C passes and takes pointers as ``uintptr_t`` (see the module)."""
    _binding.ffi, _binding.cast = ffi, ffi.cast
    _binding.uintptr, _binding.void_p = ffi.typeof("uintptr_t"), ffi.typeof("void *")
    _binding.as_ints = handles_as_ints
    _binding.out_types = {}


def handles_as_ints() -> bool:
    """Whether the bound C side passes and takes pointers as ints."""
    return _binding.as_ints


def bound() -> Any:
    """The bound ffi (``RuntimeError`` before :func:`bind`)."""
    if _binding.ffi is None:
        _not_installed()
    return _binding.ffi


@functools.cache
def _layout() -> cffi.FFI:
    """An ABI-mode FFI that knows :data:`STRUCTS` (built on first use: pycparser costs ~30 ms)."""
    layout = cffi.FFI()
    layout.cdef(STRUCTS)
    return layout


def address(value: Any) -> int:
    """A pointer or handle C passed, as an int (NULL → 0); ints pass through."""
    if type(value) is int:  # the library's every call: first, and cheapest
        return value
    if value is None:
        return 0
    return int(_binding.cast(_binding.uintptr, value))


def pointer(value: int) -> Any:
    """What C receives for the runtime's int handle or address ``value``: the int itself, or
    a ``void *`` (0 → NULL) for an ABI-mode FFI."""
    if _binding.as_ints:
        return value
    return _binding.cast(_binding.void_p, value)


def null() -> Any:
    """NULL as C receives it (0, or a NULL ``void *``)."""
    if _binding.as_ints:
        return 0
    return bound().NULL


def require(value: Any, what: str) -> int:
    """``value`` as an address; ``AclError`` 100000 if it is NULL (CANN's not-null check)."""
    found = address(value)
    if found == 0:
        raise AclError(f"{what} is NULL", ACL_ERROR_INVALID_PARAM)
    return found


def store(ctype: str, out: Any, value: Any) -> None:
    """Write ``value`` to the out-parameter ``out`` (a ``ctype *``; checked non-NULL before); a
    pointer ``ctype`` takes an int or a cdata ``value``."""
    if ctype.endswith("*"):
        ctype, value = "uintptr_t", address(value)
    out_type = _binding.out_types.get(ctype)
    if out_type is None:
        out_type = _binding.out_types[ctype] = bound().typeof(f"{ctype} *")
    _binding.cast(out_type, address(out))[0] = value


def text(value: Any) -> str | None:
    """A ``const char *`` argument as ``str`` (None for NULL); undecodable bytes are escaped."""
    found = address(value)
    if found == 0:
        return None
    raw = bound().string(bound().cast("char *", found))
    return raw.decode("utf-8", errors="surrogateescape")


def _buffer(data: bytes) -> Any:
    return bound().new("char[]", data)


def _char_pointer(buffer: Any) -> Any:
    """What C receives for a ``char[]`` buffer: its address, as :func:`pointer` gives it."""
    if _binding.as_ints:
        return int(_binding.cast(_binding.uintptr, buffer))
    return _binding.cast(_binding.void_p, buffer)


def interned(value: str) -> Any:
    """A ``const char *`` for ``value`` that stays valid for the life of the process (one
    buffer per distinct string)."""
    data = value.encode("utf-8", errors="surrogateescape")
    with _interned_lock:
        found = _interned.get(data)
        if found is None:
            found = _interned[data] = _buffer(data)
    return _char_pointer(found)


def thread_text(value: str | None) -> Any:
    """A ``const char *`` for ``value`` (NULL for None) valid until this thread's next call."""
    if value is None:
        _per_thread.text = None
        return null()
    _per_thread.text = _buffer(value.encode("utf-8", errors="surrogateescape"))
    return _char_pointer(_per_thread.text)


def struct_at(ctype: str, value: Any) -> Any:
    """A view of the struct (or array of structs) ``ctype`` of :data:`STRUCTS` at the address
    ``value`` (``"aclmdlIODims *"``)."""
    return _layout().cast(ctype, address(value))


def read_bytes(value: Any, nbytes: int) -> bytes:
    """A copy of ``nbytes`` bytes at the address ``value``."""
    ffi = bound()
    return bytes(ffi.buffer(ffi.cast("char *", address(value)), nbytes))


def function(value: Any, ctype: str) -> Any:
    """The C function pointer at ``value`` as a callable cdata of type ``ctype``
    (``"void (*)(void *)"``); calling it releases the GIL, so the C code may call back. It
    takes what :func:`pointer` gives: with ``handles_as_ints`` its ``void *`` parameters are
    declared ``uintptr_t`` (the same registers in every ABI we build for)."""
    if _binding.as_ints:
        ctype = ctype.replace("void *", "uintptr_t")
    return bound().cast(ctype, address(value))
