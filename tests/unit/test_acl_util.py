"""Unit tests for acl.util (host-memory helpers, callback threads) and acl.constants."""

from __future__ import annotations

import ctypes
import logging
import threading

import numpy as np
import pytest

import core.errors
from acl import constants, util
from core.errors import ACL_ERROR_INVALID_PARAM, ACL_SUCCESS

logger = logging.getLogger(__name__)

NPY_TYPES = {
    0: np.bool_,
    1: np.int8,
    2: np.uint8,
    3: np.int16,
    4: np.uint16,
    5: np.int32,
    6: np.uint32,
    7: np.int64,
    8: np.uint64,
    9: np.int64,
    10: np.uint64,
    11: np.float32,
    12: np.float64,
    23: np.float16,
}


# ---------------------------------------------------------------------- numpy family


def test_numpy_to_ptr_matches_array_address() -> None:
    arr = np.arange(12, dtype=np.float32)
    assert util.numpy_to_ptr(arr) == arr.ctypes.data


@pytest.mark.parametrize("bad", [[1, 2, 3], b"abc", 0, None, memoryview(b"abc")])
def test_numpy_to_ptr_rejects_non_arrays(bad) -> None:
    with pytest.raises(TypeError):
        util.numpy_to_ptr(bad)


def test_numpy_to_ptr_rejects_non_contiguous() -> None:
    arr = np.zeros((4, 6), dtype=np.float32)
    with pytest.raises(ValueError):
        util.numpy_to_ptr(arr[:, ::2])
    with pytest.raises(ValueError):
        util.numpy_to_ptr(arr.T)


def test_ptr_to_numpy_is_a_view_both_ways() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    view = util.ptr_to_numpy(util.numpy_to_ptr(arr), (2, 3), 11)
    assert view.shape == (2, 3)
    assert view.dtype == np.float32
    np.testing.assert_array_equal(view, arr)
    view[1, 2] = 99.0
    assert arr[1, 2] == 99.0
    arr[0, 0] = -7.0
    assert view[0, 0] == -7.0
    assert not np.shares_memory(view, arr.copy())


@pytest.mark.parametrize(("type_num", "np_type"), sorted(NPY_TYPES.items()))
def test_ptr_to_numpy_all_npy_types(type_num: int, np_type) -> None:
    arr = (np.arange(8) % 2 == 1) if np_type is np.bool_ else np.arange(8).astype(np_type)
    view = util.ptr_to_numpy(util.numpy_to_ptr(arr), (2, 4), type_num)
    assert view.dtype == np.dtype(np_type)
    assert view.shape == (2, 4)
    np.testing.assert_array_equal(view.ravel(), arr)


@pytest.mark.parametrize("shape", [6, [6], (6,), [2, 3], (1, 2, 3), np.array([3, 2])])
def test_ptr_to_numpy_shape_forms(shape) -> None:
    arr = np.arange(6, dtype=np.int32)
    view = util.ptr_to_numpy(util.numpy_to_ptr(arr), shape, 5)
    assert view.size == 6
    np.testing.assert_array_equal(view.ravel(), arr)


def test_ptr_to_numpy_empty_shape() -> None:
    arr = np.zeros(1, dtype=np.float32)
    view = util.ptr_to_numpy(util.numpy_to_ptr(arr), (0, 3), 11)
    assert view.shape == (0, 3)


@pytest.mark.parametrize("ptr", [0, 1, 0xFFF, -8])
def test_ptr_to_numpy_null_or_bad_ptr_raises(ptr: int) -> None:
    with pytest.raises(ValueError):
        util.ptr_to_numpy(ptr, (4,), 11)


def test_ptr_to_numpy_argument_errors() -> None:
    arr = np.zeros(4, dtype=np.float32)
    ptr = util.numpy_to_ptr(arr)
    with pytest.raises(TypeError):
        util.ptr_to_numpy(float(ptr), (4,), 11)
    with pytest.raises(TypeError):
        util.ptr_to_numpy(None, (4,), 11)
    with pytest.raises(TypeError):
        util.ptr_to_numpy(ptr, (4.0,), 11)
    with pytest.raises(TypeError):
        util.ptr_to_numpy(ptr, "4", 11)
    with pytest.raises(TypeError):
        util.ptr_to_numpy(ptr, (4,), "float32")
    with pytest.raises(ValueError):
        util.ptr_to_numpy(ptr, (-1, 4), 11)
    for unknown in (13, 17, 99, -1):
        with pytest.raises(ValueError):
            util.ptr_to_numpy(ptr, (4,), unknown)
    with pytest.raises(ValueError):
        util.ptr_to_numpy(2**64 - 8, (4,), 11)


# ---------------------------------------------------------------------- bytes family


def test_bytes_round_trip() -> None:
    data = bytes(range(256))
    ptr = util.bytes_to_ptr(data)
    assert isinstance(ptr, int) and ptr != 0
    assert util.ptr_to_bytes(ptr, 256) == data
    assert util.ptr_to_bytes(ptr + 10, 3) == data[10:13]


def test_bytes_to_ptr_points_into_the_object() -> None:
    target = bytes(8)
    ctypes.memmove(util.bytes_to_ptr(target), b"ABCDEFGH", 8)
    assert target == b"ABCDEFGH"
    mutable = bytearray(8)
    ctypes.memmove(util.bytes_to_ptr(mutable), b"12345678", 8)
    assert mutable == bytearray(b"12345678")


def test_bytearray_stays_resizable_after_bytes_to_ptr() -> None:
    buf = bytearray(b"abc")
    util.bytes_to_ptr(buf)
    buf.extend(b"def")
    assert buf == bytearray(b"abcdef")
    assert util.bytes_to_ptr(bytearray()) != 0
    assert util.bytes_to_ptr(b"") != 0


def test_ptr_to_bytes_is_a_copy() -> None:
    arr = np.arange(4, dtype=np.uint8)
    copied = util.ptr_to_bytes(util.numpy_to_ptr(arr), 4)
    arr[:] = 9
    assert copied == b"\x00\x01\x02\x03"
    assert util.ptr_to_bytes(util.numpy_to_ptr(arr), 0) == b""


@pytest.mark.parametrize("bad", ["text", memoryview(b"x"), [1, 2], 5, None, np.zeros(2)])
def test_bytes_to_ptr_rejects_other_types(bad) -> None:
    with pytest.raises(TypeError):
        util.bytes_to_ptr(bad)


def test_ptr_to_bytes_argument_errors() -> None:
    ptr = util.bytes_to_ptr(b"abcd")
    with pytest.raises(ValueError):
        util.ptr_to_bytes(0, 4)
    with pytest.raises(ValueError):
        util.ptr_to_bytes(0, 0)
    with pytest.raises(ValueError):
        util.ptr_to_bytes(ptr, -1)
    with pytest.raises(TypeError):
        util.ptr_to_bytes(ptr, 1.5)
    with pytest.raises(TypeError):
        util.ptr_to_bytes("0x10", 4)


def test_numpy_and_bytes_families_interoperate() -> None:
    data = bytearray(np.arange(4, dtype=np.int32).tobytes())
    view = util.ptr_to_numpy(util.bytes_to_ptr(data), 4, constants.NPY_INT32)
    view[2] = 1234
    assert np.frombuffer(data, dtype=np.int32)[2] == 1234
    assert "bytes_to_ptr" in dir(util)


# ---------------------------------------------------------------------- threads


def test_start_thread_passes_the_list_as_one_argument() -> None:
    seen: list = []
    done = threading.Event()

    def thr_func(args_list) -> None:
        seen.append((threading.get_ident(), args_list))
        done.set()

    args = ["ctx", 100]
    tid, ret = util.start_thread(thr_func, args)
    assert ret == ACL_SUCCESS
    assert isinstance(tid, int) and tid != 0
    assert done.wait(5)
    assert seen == [(tid, args)]
    assert util.stop_thread(tid) == ACL_SUCCESS
    assert util.stop_thread(tid) == ACL_ERROR_INVALID_PARAM


def test_start_thread_empty_args_list() -> None:
    got: list = []
    tid, ret = util.start_thread(got.append, [])
    assert ret == ACL_SUCCESS
    assert util.stop_thread(tid) == ACL_SUCCESS
    assert got == [[]]


def test_stop_thread_waits_for_the_function() -> None:
    running = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def loop(_args) -> None:
        running.set()
        release.wait(5)
        finished.set()

    tid, _ = util.start_thread(loop, [])
    assert running.wait(5)
    threading.Timer(0.05, release.set).start()
    assert util.stop_thread(tid) == ACL_SUCCESS
    assert finished.is_set()


def test_stop_thread_bounded_wait(monkeypatch, caplog) -> None:
    monkeypatch.setattr(util, "STOP_THREAD_TIMEOUT_S", 0.05)
    release = threading.Event()
    tid, _ = util.start_thread(lambda _args: release.wait(5), [])
    with caplog.at_level(logging.WARNING, logger="acl.util"):
        assert util.stop_thread(tid) == ACL_SUCCESS
    assert "still running" in caplog.text
    release.set()


def test_stop_thread_from_inside_the_thread() -> None:
    result: list[int] = []
    done = threading.Event()

    def self_stop(_args) -> None:
        result.append(util.stop_thread(threading.get_ident()))
        done.set()

    util.start_thread(self_stop, None)
    assert done.wait(5)
    assert result == [ACL_SUCCESS]


def test_thread_function_exception_is_logged(caplog) -> None:
    def boom(_args) -> None:
        raise RuntimeError("callback failed")

    with caplog.at_level(logging.ERROR, logger="acl.util"):
        tid, ret = util.start_thread(boom, [])
        assert ret == ACL_SUCCESS
        assert util.stop_thread(tid) == ACL_SUCCESS
    assert "callback failed" in caplog.text


@pytest.mark.parametrize("bad", [None, 42, "fn"])
def test_start_thread_non_callable(bad) -> None:
    assert util.start_thread(bad, []) == (0, ACL_ERROR_INVALID_PARAM)


@pytest.mark.parametrize("tid", [0, 12345, -1, None, "1", 1.0])
def test_stop_thread_unknown(tid) -> None:
    assert util.stop_thread(tid) == ACL_ERROR_INVALID_PARAM


# ---------------------------------------------------------------------- constants


EXPECTED_CONSTANTS = {
    "ACL_SUCCESS": 0,
    "ACL_MEMCPY_HOST_TO_HOST": 0,
    "ACL_MEMCPY_HOST_TO_DEVICE": 1,
    "ACL_MEMCPY_DEVICE_TO_HOST": 2,
    "ACL_MEMCPY_DEVICE_TO_DEVICE": 3,
    "ACL_MEMCPY_DEFAULT": 4,
    "ACL_MEM_MALLOC_HUGE_FIRST": 0,
    "ACL_MEM_MALLOC_HUGE_ONLY": 1,
    "ACL_MEM_MALLOC_NORMAL_ONLY": 2,
    "ACL_MEM_MALLOC_HUGE_FIRST_P2P": 3,
    "ACL_MEM_MALLOC_HUGE_ONLY_P2P": 4,
    "ACL_MEM_MALLOC_NORMAL_ONLY_P2P": 5,
    "ACL_DEVICE": 0,
    "ACL_HOST": 1,
    "ACL_DDR_MEM": 0,
    "ACL_HBM_MEM": 1,
    "ACL_DT_UNDEFINED": -1,
    "ACL_FLOAT": 0,
    "ACL_FLOAT16": 1,
    "ACL_INT8": 2,
    "ACL_INT32": 3,
    "ACL_UINT8": 4,
    "ACL_INT16": 6,
    "ACL_UINT16": 7,
    "ACL_UINT32": 8,
    "ACL_INT64": 9,
    "ACL_UINT64": 10,
    "ACL_DOUBLE": 11,
    "ACL_BOOL": 12,
    "ACL_FORMAT_NCHW": 0,
    "ACL_FORMAT_NHWC": 1,
    "ACL_FORMAT_ND": 2,
    "ACL_FORMAT_NC1HWC0": 3,
    "ACL_MDL_STREAM_SYNC_TIMEOUT": 0,
    "ACL_MDL_EVENT_SYNC_TIMEOUT": 1,
    "ACL_MDL_WORK_ADDR_PTR": 2,
    "ACL_MDL_WORK_SIZET": 3,
    "ACL_MDL_EXEC_PRIORITY_INT32": 8,
    "ACL_EVENT_RECORDED_STATUS_NOT_READY": 0,
    "ACL_EVENT_RECORDED_STATUS_COMPLETE": 1,
    "ACL_STREAM_STATUS_COMPLETE": 0,
    "ACL_STREAM_STATUS_NOT_READY": 1,
    "ACL_CALLBACK_NO_BLOCK": 0,
    "ACL_CALLBACK_BLOCK": 1,
    "ACL_RT_DEVICE_STATUS_NORMAL": 0,
    "ACL_RT_DEVICE_STATUS_ABNORMAL": 1,
    "NPY_BOOL": 0,
    "NPY_FLOAT32": 11,
    "NPY_FLOAT16": 23,
}


@pytest.mark.parametrize(("name", "value"), sorted(EXPECTED_CONSTANTS.items()))
def test_constants_cann_values(name: str, value: int) -> None:
    assert getattr(constants, name) == value
    assert name in constants.__all__


def test_constants_npy_numbers_match_numpy() -> None:
    for name in [n for n in constants.__all__ if n.startswith("NPY_")]:
        type_num = getattr(constants, name)
        assert type_num in NPY_TYPES, name
        assert np.dtype(NPY_TYPES[type_num]).num in (type_num, type_num - 2), name


def test_constants_reexport_every_error_code() -> None:
    for name in core.errors.__all__:
        if name.startswith("ACL_"):
            assert getattr(constants, name) == getattr(core.errors, name)
            assert name in constants.__all__
    for name in constants.__all__:
        value = getattr(constants, name)
        assert type(value) is int, name
