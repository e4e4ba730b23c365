"""Unit tests for client.handles: pyACL return shapes, error codes and thread safety."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from client.handles import (
    EXEC_CONFIG_EXTENSION_ATTRS,
    HANDLE_BASE,
    HANDLE_STEP,
    ExecConfig,
    HandleTables,
    sync_timeout_error,
)
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
    ConfigError,
)

logger = logging.getLogger(__name__)

INVALID = ACL_ERROR_INVALID_PARAM
EMPTY_DIMS = {"name": "", "dimCount": 0, "dims": []}


@dataclass(frozen=True)
class FakeTensor:
    """Stand-in for device.models.TensorSpec (duck typed)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    format: int = 2

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def acl_dtype(self) -> int:
        return {"float32": 0, "float16": 1, "int32": 3, "int64": 9}[self.dtype]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= max(dim, 1)
        return count * self.np_dtype.itemsize


@dataclass(frozen=True)
class FakeModel:
    """Stand-in for device.models.ModelSpec (duck typed)."""

    name: str = "resnet"
    kind: str = "matmul"
    inputs: tuple[FakeTensor, ...] = field(
        default_factory=lambda: (
            FakeTensor("images", "float32", (1, 3, 224, 224), 0),
            FakeTensor("mask", "int32", (1, 8)),
        )
    )
    outputs: tuple[FakeTensor, ...] = field(
        default_factory=lambda: (FakeTensor("logits", "float16", (-1, 1000)),)
    )


@pytest.fixture
def tables() -> HandleTables:
    return HandleTables()


@pytest.fixture
def filled(tables: HandleTables) -> tuple[HandleTables, int]:
    desc = tables.create_desc()
    assert tables.fill_desc(desc, 7, FakeModel()) == ACL_SUCCESS
    return tables, desc


# ---------------------------------------------------------------------- handles


def test_handles_nonzero_unique_across_kinds_and_on_the_shared_grid(tables: HandleTables) -> None:
    made = [
        tables.create_data_buffer(0, 0),
        tables.create_dataset(),
        tables.create_desc(),
        tables.create_exec_config_handle(),
        HandleTables().create_dataset(),
    ]
    assert all(isinstance(h, int) and h != 0 for h in made)
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(h >= HANDLE_BASE and (h - HANDLE_BASE) % HANDLE_STEP == 0 for h in made)


def test_handles_never_reused_after_destroy(tables: HandleTables) -> None:
    first = tables.create_data_buffer(0x1000, 8)
    assert tables.destroy_data_buffer(first) == ACL_SUCCESS
    again = {tables.create_data_buffer(0x1000, 8) for _ in range(50)}
    assert first not in again


# ---------------------------------------------------------------------- data buffers


def test_data_buffer_round_trip(tables: HandleTables) -> None:
    buf = tables.create_data_buffer(0xDEAD_0000, 256)
    assert tables.get_data_buffer_addr(buf) == 0xDEAD_0000
    assert tables.get_data_buffer_size_v2(buf) == 256
    assert tables.get_data_buffer_size(buf) == 256
    assert tables.buffer(buf) == (0xDEAD_0000, 256)
    assert tables.update_data_buffer(buf, 0xBEEF_0000, 64) == ACL_SUCCESS
    assert tables.buffer(buf) == (0xBEEF_0000, 64)
    assert tables.destroy_data_buffer(buf) == ACL_SUCCESS


def test_data_buffer_null_ptr_and_zero_size_allowed(tables: HandleTables) -> None:
    buf = tables.create_data_buffer(0, 0)
    assert buf != 0
    assert tables.buffer(buf) == (0, 0)


@pytest.mark.parametrize(("ptr", "size"), [(-1, 8), (8, -1), (1.5, 8), (8, "8"), (True, 8)])
def test_data_buffer_bad_arguments_give_null_handle(tables: HandleTables, ptr, size) -> None:
    assert tables.create_data_buffer(ptr, size) == 0


def test_data_buffer_unknown_and_double_destroy(tables: HandleTables) -> None:
    buf = tables.create_data_buffer(0x2000, 4)
    assert tables.destroy_data_buffer(buf) == ACL_SUCCESS
    assert tables.was_destroyed(buf)
    assert tables.destroy_data_buffer(buf) == INVALID
    assert tables.destroy_data_buffer(0x1234) == INVALID
    assert not tables.was_destroyed(0x1234)
    assert tables.destroy_data_buffer(0) == INVALID
    assert tables.destroy_data_buffer(None) == INVALID
    for unknown in (buf, 0, 0x1234, None):
        assert tables.get_data_buffer_addr(unknown) == 0
        assert tables.get_data_buffer_size_v2(unknown) == 0
        assert tables.buffer(unknown) is None
        assert tables.update_data_buffer(unknown, 0x3000, 4) == INVALID


def test_update_data_buffer_rejects_bad_values(tables: HandleTables) -> None:
    buf = tables.create_data_buffer(0x2000, 4)
    assert tables.update_data_buffer(buf, -1, 4) == INVALID
    assert tables.update_data_buffer(buf, 0x2000, -4) == INVALID
    assert tables.buffer(buf) == (0x2000, 4)


def test_destroy_of_wrong_kind_is_invalid(tables: HandleTables) -> None:
    ds = tables.create_dataset()
    assert tables.destroy_data_buffer(ds) == INVALID
    assert tables.destroy_desc(ds) == INVALID
    assert tables.destroy_exec_config_handle(ds) == INVALID
    assert tables.destroy_dataset(ds) == ACL_SUCCESS


# ---------------------------------------------------------------------- datasets


def test_dataset_add_returns_ds_then_ret(tables: HandleTables) -> None:
    ds = tables.create_dataset()
    bufs = [tables.create_data_buffer(0x1000 * (i + 1), 16) for i in range(3)]
    for buf in bufs:
        result = tables.add_dataset_buffer(ds, buf)
        assert isinstance(result, tuple)
        assert result == (ds, ACL_SUCCESS)
    assert tables.get_dataset_num_buffers(ds) == 3
    assert [tables.get_dataset_buffer(ds, i) for i in range(3)] == bufs
    assert tables.dataset_buffers(ds) == bufs


def test_dataset_add_unknown_ds_or_buffer(tables: HandleTables) -> None:
    ds = tables.create_dataset()
    buf = tables.create_data_buffer(0x1000, 16)
    assert tables.add_dataset_buffer(0xABC0, buf) == (0xABC0, INVALID)
    assert tables.add_dataset_buffer(ds, 0xABC0) == (ds, INVALID)
    assert tables.add_dataset_buffer(ds, 0) == (ds, INVALID)
    assert tables.add_dataset_buffer(0, buf) == (0, INVALID)
    tables.destroy_data_buffer(buf)
    assert tables.add_dataset_buffer(ds, buf) == (ds, INVALID)
    assert tables.get_dataset_num_buffers(ds) == 0


def test_dataset_out_of_range_and_unknown(tables: HandleTables) -> None:
    ds = tables.create_dataset()
    tables.add_dataset_buffer(ds, tables.create_data_buffer(0x1000, 16))
    assert tables.get_dataset_buffer(ds, 1) == 0
    assert tables.get_dataset_buffer(ds, -1) == 0
    assert tables.get_dataset_buffer(ds, "0") == 0
    assert tables.get_dataset_buffer(0x999, 0) == 0
    assert tables.get_dataset_num_buffers(0x999) == 0
    assert tables.get_dataset_num_buffers(0) == 0
    assert tables.dataset_buffers(0x999) is None


def test_destroy_dataset_keeps_buffers_and_double_destroy(tables: HandleTables) -> None:
    ds = tables.create_dataset()
    buf = tables.create_data_buffer(0x1000, 16)
    tables.add_dataset_buffer(ds, buf)
    assert tables.destroy_dataset(ds) == ACL_SUCCESS
    assert tables.buffer(buf) == (0x1000, 16)
    assert tables.destroy_dataset(ds) == INVALID
    assert tables.get_dataset_num_buffers(ds) == 0
    assert tables.dataset_buffers(ds) is None


def test_dataset_buffers_is_a_copy(tables: HandleTables) -> None:
    ds = tables.create_dataset()
    tables.add_dataset_buffer(ds, tables.create_data_buffer(0x1000, 16))
    tables.dataset_buffers(ds).append(123)  # type: ignore[union-attr]
    assert tables.get_dataset_num_buffers(ds) == 1


# ---------------------------------------------------------------------- model descriptions


def test_unfilled_null_and_unknown_desc_report_nothing(tables: HandleTables) -> None:
    desc = tables.create_desc()
    for handle in (desc, 0, 0x4242):
        assert tables.get_num_inputs(handle) == 0
        assert tables.get_num_outputs(handle) == 0
        assert tables.get_input_size_by_index(handle, 0) == 0
        assert tables.get_input_dims(handle, 0) == (EMPTY_DIMS, INVALID)
        assert tables.get_model_id(handle) == -1


def test_desc_queries(filled: tuple[HandleTables, int]) -> None:
    tables, desc = filled
    assert tables.get_model_id(desc) == 7
    assert tables.get_num_inputs(desc) == 2
    assert tables.get_num_outputs(desc) == 1
    assert tables.get_input_size_by_index(desc, 0) == 1 * 3 * 224 * 224 * 4
    assert tables.get_input_size_by_index(desc, 1) == 8 * 4
    assert tables.get_output_size_by_index(desc, 0) == 1000 * 2
    assert tables.get_input_data_type(desc, 0) == 0
    assert tables.get_input_data_type(desc, 1) == 3
    assert tables.get_output_data_type(desc, 0) == 1
    assert tables.get_input_format(desc, 0) == 0
    assert tables.get_input_format(desc, 1) == 2
    assert tables.get_output_format(desc, 0) == 2
    assert tables.get_input_name_by_index(desc, 1) == "mask"
    assert tables.get_output_name_by_index(desc, 0) == "logits"
    assert tables.get_input_index_by_name(desc, "mask") == (1, ACL_SUCCESS)
    assert tables.get_output_index_by_name(desc, "logits") == (0, ACL_SUCCESS)


def test_desc_dims_dicts(filled: tuple[HandleTables, int]) -> None:
    tables, desc = filled
    dims, ret = tables.get_input_dims(desc, 0)
    assert ret == ACL_SUCCESS
    assert dims == {"name": "images", "dimCount": 4, "dims": [1, 3, 224, 224]}
    assert tables.get_output_dims(desc, 0)[0]["dims"] == [-1, 1000]
    assert tables.get_cur_output_dims(desc, 0) == tables.get_output_dims(desc, 0)
    # each call hands out a fresh dict
    dims["dims"].append(9)
    assert tables.get_input_dims(desc, 0)[0]["dimCount"] == 4
    assert len(tables.get_input_dims(desc, 0)[0]["dims"]) == 4


@pytest.mark.parametrize("index", [2, -1, 99, "0", None, 1.0])
def test_desc_input_out_of_range(filled: tuple[HandleTables, int], index) -> None:
    tables, desc = filled
    assert tables.get_input_size_by_index(desc, index) == 0
    assert tables.get_input_dims(desc, index) == (EMPTY_DIMS, INVALID)
    assert tables.get_input_data_type(desc, index) == -1
    assert tables.get_input_format(desc, index) == -1
    assert tables.get_input_name_by_index(desc, index) == ""


@pytest.mark.parametrize("index", [1, -1])
def test_desc_output_out_of_range(filled: tuple[HandleTables, int], index: int) -> None:
    tables, desc = filled
    assert tables.get_output_size_by_index(desc, index) == 0
    assert tables.get_output_dims(desc, index) == (EMPTY_DIMS, INVALID)
    assert tables.get_cur_output_dims(desc, index) == (EMPTY_DIMS, INVALID)
    assert tables.get_output_data_type(desc, index) == -1
    assert tables.get_output_format(desc, index) == -1
    assert tables.get_output_name_by_index(desc, index) == ""


def test_desc_unknown_names(filled: tuple[HandleTables, int]) -> None:
    tables, desc = filled
    assert tables.get_input_index_by_name(desc, "nope") == (-1, INVALID)
    assert tables.get_input_index_by_name(desc, "logits") == (-1, INVALID)
    assert tables.get_output_index_by_name(desc, "images") == (-1, INVALID)
    assert tables.get_input_index_by_name(desc, 0) == (-1, INVALID)
    assert tables.get_input_index_by_name(0x777, "images") == (-1, INVALID)


def test_fill_desc_errors_and_refill(tables: HandleTables) -> None:
    assert tables.fill_desc(0x5550, 1, FakeModel()) == INVALID
    assert tables.fill_desc(0, 1, FakeModel()) == INVALID
    desc = tables.create_desc()
    assert tables.fill_desc(desc, 1, object()) == INVALID
    assert tables.get_num_inputs(desc) == 0
    other = FakeModel(inputs=(FakeTensor("x", "int64", (2,)),), outputs=())
    assert tables.fill_desc(desc, 3, other) == ACL_SUCCESS
    assert tables.get_model_id(desc) == 3
    assert tables.get_num_inputs(desc) == 1
    assert tables.get_num_outputs(desc) == 0
    assert tables.get_input_data_type(desc, 0) == 9


def test_destroy_desc_and_double_destroy(filled: tuple[HandleTables, int]) -> None:
    tables, desc = filled
    assert tables.destroy_desc(desc) == ACL_SUCCESS
    assert tables.destroy_desc(desc) == INVALID
    assert tables.get_num_inputs(desc) == 0
    assert tables.fill_desc(desc, 7, FakeModel()) == INVALID


# ---------------------------------------------------------------------- exec config


def test_exec_config_defaults(tables: HandleTables) -> None:
    handle = tables.create_exec_config_handle()
    assert handle != 0
    assert tables.exec_config_snapshot(handle) == ExecConfig(-1, -1, 0, 0, None)


@pytest.mark.parametrize("attr", [0, 1])
@pytest.mark.parametrize("value", [-1, 0, 1, 2**31 - 1, np.int32(5)])
def test_exec_config_timeouts_accepted(tables: HandleTables, attr: int, value) -> None:
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, attr, value) == ACL_SUCCESS
    snap = tables.exec_config_snapshot(handle)
    assert snap is not None
    got = snap.stream_sync_timeout_ms if attr == 0 else snap.event_sync_timeout_ms
    assert got == int(value)
    assert type(got) is int


@pytest.mark.parametrize("attr", [0, 1])
@pytest.mark.parametrize("value", [-2, -(2**31), 2**31, 2**40, True, False, 1.0, "5", None])
def test_exec_config_timeouts_rejected(tables: HandleTables, attr: int, value) -> None:
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, attr, value) == INVALID
    assert tables.exec_config_snapshot(handle) == ExecConfig()


@pytest.mark.parametrize("attr", [4, 5, 6, 7, 9, 10, 42, -1, 2**31])
def test_exec_config_reserved_and_unknown_attrs(attr: int) -> None:
    tables = HandleTables(exec_config_extensions=(2, 3, 8))
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, attr, 1) == INVALID


@pytest.mark.parametrize("attr", [True, 0.0, "0", None])
def test_exec_config_non_int_attr(tables: HandleTables, attr) -> None:
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, attr, 1) == INVALID


@pytest.mark.parametrize("attr", [2, 3, 8])
def test_exec_config_extensions_rejected_by_default(tables: HandleTables, attr: int) -> None:
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, attr, 4096) == INVALID
    assert tables.exec_config_snapshot(handle) == ExecConfig()


def test_exec_config_extensions_accepted_when_enabled() -> None:
    tables = HandleTables(exec_config_extensions=[2, 3, 8])
    assert tables.extensions == EXEC_CONFIG_EXTENSION_ATTRS
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, 2, 0x7000_0000) == ACL_SUCCESS
    assert tables.set_exec_config_opt(handle, 3, 1 << 20) == ACL_SUCCESS
    assert tables.set_exec_config_opt(handle, 8, -5) == ACL_SUCCESS
    assert tables.exec_config_snapshot(handle) == ExecConfig(
        work_addr=0x7000_0000, work_size=1 << 20, priority=-5
    )
    assert tables.set_exec_config_opt(handle, 2, -1) == INVALID
    assert tables.set_exec_config_opt(handle, 3, 2**64) == INVALID
    assert tables.set_exec_config_opt(handle, 8, 2**31) == INVALID
    assert tables.set_exec_config_opt(handle, 8, True) == INVALID


def test_exec_config_partial_extensions() -> None:
    tables = HandleTables(exec_config_extensions=[8])
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, 8, 1) == ACL_SUCCESS
    assert tables.set_exec_config_opt(handle, 2, 1) == INVALID


@pytest.mark.parametrize("bad", [[0], [1], [4], [9], [2, 42]])
def test_exec_config_extensions_must_be_2_3_8(bad: list[int]) -> None:
    with pytest.raises(ConfigError):
        HandleTables(exec_config_extensions=bad)


def test_exec_config_unknown_and_double_destroy(tables: HandleTables) -> None:
    assert tables.set_exec_config_opt(0, 0, 10) == INVALID
    assert tables.set_exec_config_opt(0x6660, 0, 10) == INVALID
    handle = tables.create_exec_config_handle()
    assert tables.destroy_exec_config_handle(handle) == ACL_SUCCESS
    assert tables.destroy_exec_config_handle(handle) == INVALID
    assert tables.set_exec_config_opt(handle, 0, 10) == INVALID
    assert tables.exec_config_snapshot(handle) is None
    assert tables.exec_config_snapshot(0) is None
    assert tables.destroy_exec_config_handle(0) == INVALID


def test_exec_config_snapshot_is_a_copy(tables: HandleTables) -> None:
    handle = tables.create_exec_config_handle()
    tables.set_exec_config_opt(handle, 0, 100)
    snap = tables.exec_config_snapshot(handle)
    assert tables.set_exec_config_opt(handle, 0, 5) == ACL_SUCCESS
    assert tables.set_exec_config_opt(handle, 1, 7) == ACL_SUCCESS
    tables.destroy_exec_config_handle(handle)
    assert snap == ExecConfig(stream_sync_timeout_ms=100)
    with pytest.raises(AttributeError):
        snap.stream_sync_timeout_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("ms", "code"),
    [
        (-1, ACL_SUCCESS),
        (1, ACL_SUCCESS),
        (2**31 - 1, ACL_SUCCESS),
        (0, ACL_ERROR_RT_PARAM_INVALID),
        (-2, ACL_ERROR_RT_PARAM_INVALID),
        (-(2**31), ACL_ERROR_RT_PARAM_INVALID),
        (1.5, ACL_ERROR_RT_PARAM_INVALID),
        (None, ACL_ERROR_RT_PARAM_INVALID),
    ],
)
def test_sync_timeout_error(ms, code: int) -> None:
    assert sync_timeout_error(ms) == code


def test_zero_timeout_is_accepted_on_the_handle_but_fails_the_sync(tables: HandleTables) -> None:
    handle = tables.create_exec_config_handle()
    assert tables.set_exec_config_opt(handle, 0, 0) == ACL_SUCCESS
    snap = tables.exec_config_snapshot(handle)
    assert snap is not None
    assert sync_timeout_error(snap.stream_sync_timeout_ms) == ACL_ERROR_RT_PARAM_INVALID


# ---------------------------------------------------------------------- session-wide


def test_clear_and_live_counts(tables: HandleTables) -> None:
    buf = tables.create_data_buffer(0x1000, 1)
    ds = tables.create_dataset()
    desc = tables.create_desc()
    handle = tables.create_exec_config_handle()
    assert set(tables.live_counts().values()) == {1}
    tables.clear()
    assert set(tables.live_counts().values()) == {0}
    assert tables.buffer(buf) is None
    assert tables.destroy_dataset(ds) == INVALID
    assert tables.destroy_desc(desc) == INVALID
    assert tables.exec_config_snapshot(handle) is None
    assert tables.create_data_buffer(0x1000, 1) > handle


def test_destroyed_history_is_bounded() -> None:
    tables = HandleTables(destroyed_history=4)
    bufs = [tables.create_data_buffer(0x1000, 1) for _ in range(8)]
    for buf in bufs:
        tables.destroy_data_buffer(buf)
    assert [tables.was_destroyed(b) for b in bufs] == [False] * 4 + [True] * 4
    assert all(tables.destroy_data_buffer(b) == INVALID for b in bufs)


def test_thread_safety_smoke(tables: HandleTables) -> None:
    per_thread, workers = 300, 8
    created: list[list[int]] = [[] for _ in range(workers)]
    errors: list[str] = []
    start = threading.Barrier(workers)

    def work(slot: int) -> None:
        start.wait()
        ds = tables.create_dataset()
        for i in range(per_thread):
            buf = tables.create_data_buffer(0x1000 + i, i)
            created[slot].append(buf)
            if tables.add_dataset_buffer(ds, buf)[1] != ACL_SUCCESS:
                errors.append("add")
            if i % 2 and tables.destroy_data_buffer(buf) != ACL_SUCCESS:
                errors.append("destroy")
        if tables.get_dataset_num_buffers(ds) != per_thread:
            errors.append("count")
        created[slot].append(ds)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    every = [h for handles in created for h in handles]
    assert len(every) == workers * (per_thread + 1)
    assert len(set(every)) == len(every)
    assert tables.live_counts()["data buffer"] == workers * per_thread // 2
