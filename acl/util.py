"""``acl.util``: host-memory helpers and callback threads, as pyACL exposes them.

Pointers are plain ints. ``numpy_to_ptr`` / ``ptr_to_numpy`` are the older NumPy family
(``ptr_to_numpy`` returns a *view*, no copy), ``bytes_to_ptr`` / ``ptr_to_bytes`` the newer bytes
family; samples feature-detect with ``"bytes_to_ptr" in dir(acl.util)``, so both exist.

Every pointer argument is checked before memory is touched: a NULL (or null-page) address, a
negative size or an address range past the end of the address space raises ``ValueError``, and a
non-integer raises ``TypeError``. A nonzero but unmapped address cannot be detected from Python;
such a call behaves like it does on real pyACL (the process faults).

``start_thread(fn, args_list)`` runs ``fn(args_list)`` on a daemon thread and returns its
``threading`` ident as the thread id, which is what ``acl.rt.subscribe_report`` expects.
"""

from __future__ import annotations

import ctypes
import logging
import math
import operator
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS

__all__ = [
    "numpy_to_ptr",
    "ptr_to_numpy",
    "bytes_to_ptr",
    "ptr_to_bytes",
    "start_thread",
    "stop_thread",
]

logger = logging.getLogger(__name__)

STOP_THREAD_TIMEOUT_S = 5.0
"""How long ``stop_thread`` waits for the thread function to return."""

_MIN_ADDRESS = 0x1000  # the null page is never mapped: treat it as NULL
_ADDRESS_LIMIT = 2**64

# NumPy C type numbers (NPY_TYPES) accepted as ``npy_type``. 9/10 (NPY_LONGLONG/ULONGLONG) are the
# same 64-bit integers as 7/8 on LP64 hosts and are accepted too.
_NPY_DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.bool_),
    1: np.dtype(np.int8),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int16),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int32),
    6: np.dtype(np.uint32),
    7: np.dtype(np.int64),
    8: np.dtype(np.uint64),
    9: np.dtype(np.int64),
    10: np.dtype(np.uint64),
    11: np.dtype(np.float32),
    12: np.dtype(np.float64),
    23: np.dtype(np.float16),
}

_threads: dict[int, threading.Thread] = {}
_threads_lock = threading.Lock()
_thread_serial = 0


def _int_arg(value: Any, what: str) -> int:
    """``value`` as an int; ``TypeError`` for non-integers (``bool`` included)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


def _address(ptr: Any, nbytes: int) -> int:
    """A checked address for ``nbytes`` bytes at ``ptr``."""
    address = _int_arg(ptr, "ptr")
    if address == 0:
        raise ValueError("ptr is NULL (0)")
    if address < _MIN_ADDRESS:
        raise ValueError(f"ptr {address:#x} points into the null page")
    if address + nbytes > _ADDRESS_LIMIT:
        raise ValueError(f"ptr {address:#x} + {nbytes} bytes is outside the address space")
    return address


def _shape(shape: Any) -> tuple[int, ...]:
    """``shape`` (an int, a sequence or a 1-D array of ints) as a tuple of non-negative dims."""
    if isinstance(shape, np.ndarray | Sequence) and not isinstance(shape, str | bytes):
        dims = tuple(_int_arg(dim, "shape dim") for dim in shape)
    else:
        dims = (_int_arg(shape, "shape"),)
    if any(dim < 0 for dim in dims):
        raise ValueError(f"shape {dims} has a negative dim")
    return dims


def numpy_to_ptr(arr: Any) -> int:
    """The address of a C-contiguous ndarray's data (the caller keeps ``arr`` alive)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"numpy_to_ptr expects a numpy.ndarray, not {type(arr).__name__}")
    if not arr.flags.c_contiguous:
        raise ValueError("numpy_to_ptr expects a C-contiguous array (use np.ascontiguousarray)")
    return int(arr.__array_interface__["data"][0])


def ptr_to_numpy(ptr: Any, shape: Any, npy_type: Any) -> np.ndarray:
    """A writable ndarray *view* of the memory at ``ptr`` (no copy).

    ``shape`` is an int or a sequence of ints; ``npy_type`` is the NumPy C type number (0 bool,
    1 int8, 2 uint8, 3 int16, 4 uint16, 5 int32, 6 uint32, 7 int64, 8 uint64, 11 float32,
    12 float64, 23 float16). The memory must stay valid while the view is used.
    """
    type_num = _int_arg(npy_type, "npy_type")
    dtype = _NPY_DTYPES.get(type_num)
    if dtype is None:
        raise ValueError(f"unsupported npy_type {type_num}; known: {sorted(_NPY_DTYPES)}")
    dims = _shape(shape)
    count = math.prod(dims)
    nbytes = count * dtype.itemsize
    address = _address(ptr, nbytes)
    raw = (ctypes.c_char * nbytes).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(dims)


def bytes_to_ptr(data: Any) -> int:
    """The address of a ``bytes`` / ``bytearray`` buffer (the caller keeps ``data`` alive).

    As on pyACL, a D2H copy to this address writes into the object's storage, even for ``bytes``.
    A ``bytearray`` must not be resized while the address is in use.
    """
    if isinstance(data, bytes):
        address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    elif isinstance(data, bytearray):
        view = (ctypes.c_char * len(data)).from_buffer(data)
        address = ctypes.addressof(view)
        del view  # release the buffer export so the bytearray stays resizable
    else:
        raise TypeError(f"bytes_to_ptr expects bytes or bytearray, not {type(data).__name__}")
    if not address:
        raise ValueError("could not take the address of the buffer")
    return int(address)


def ptr_to_bytes(ptr: Any, size: Any) -> bytes:
    """A copy of ``size`` bytes at ``ptr``."""
    nbytes = _int_arg(size, "size")
    if nbytes < 0:
        raise ValueError(f"size {nbytes} is negative")
    address = _address(ptr, nbytes)
    return ctypes.string_at(address, nbytes)


def _thread_main(fn: Callable[[Any], Any], args_list: Any, registered: threading.Event) -> None:
    registered.wait()  # the tid is known to stop_thread before fn runs
    try:
        fn(args_list)
    except Exception:
        logger.exception("acl.util thread function %r raised", fn)


def start_thread(fn: Any, args_list: Any = None) -> tuple[int, int]:
    """Run ``fn(args_list)`` on a new daemon thread; ``(thread_id, ret)``.

    As in pyACL the function receives the argument list as *one* argument
    (``def thr_func(args_list)``). A non-callable ``fn`` returns ``(0, 100000)``.
    """
    global _thread_serial
    if not callable(fn):
        logger.debug("start_thread: %r is not callable", fn)
        return 0, ACL_ERROR_INVALID_PARAM
    if args_list is None:
        args_list = []
    with _threads_lock:
        _thread_serial += 1
        name = f"acl-util-thread-{_thread_serial}"
    registered = threading.Event()
    thread = threading.Thread(
        target=_thread_main, args=(fn, args_list, registered), name=name, daemon=True
    )
    thread.start()
    tid = thread.ident
    if tid is None:  # pragma: no cover - ident is set once start() returns
        registered.set()
        return 0, ACL_ERROR_INVALID_PARAM
    with _threads_lock:
        _threads[tid] = thread
    registered.set()
    logger.debug("start_thread: %s started as tid %d", name, tid)
    return tid, ACL_SUCCESS


def stop_thread(tid: Any) -> int:
    """Wait (at most ``STOP_THREAD_TIMEOUT_S``) for a ``start_thread`` thread; ret.

    The thread function must return by itself (typically a flag the caller clears first); an
    unknown or already stopped ``tid`` returns 100000.
    """
    try:
        key = _int_arg(tid, "tid")
    except TypeError:
        return ACL_ERROR_INVALID_PARAM
    with _threads_lock:
        thread = _threads.pop(key, None)
    if thread is None:
        logger.debug("stop_thread: unknown tid %r", tid)
        return ACL_ERROR_INVALID_PARAM
    if thread is threading.current_thread():
        return ACL_SUCCESS
    thread.join(STOP_THREAD_TIMEOUT_S)
    if thread.is_alive():
        logger.warning(
            "stop_thread: tid %d (%s) still running after %.1f s; left as a daemon",
            key,
            thread.name,
            STOP_THREAD_TIMEOUT_S,
        )
    return ACL_SUCCESS
