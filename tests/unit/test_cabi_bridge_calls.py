"""The bridge's calls without a farm: the call table and install(), the C conversions, the
tensor-description family, datasets' tensor descriptions, exec-config values, aclmdlIODims,
NULL out-parameters and aclGetRecentErrMsg (an ABI-mode FFI stands in for the library's)."""

from __future__ import annotations

import inspect

import cffi
import pytest

from cabi import bridge
from cabi.bridge import base, cdata, mdl_dataset, mdl_desc, registry, tensor
from cabi.bridge.registry import UNEXPECTED_ERROR, CallTable, failure_value, kind_of
from client import RUNTIME
from core.errors import (
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_UNINITIALIZE,
    ACL_SUCCESS,
    AclError,
)

E = bridge.EMULATED


@pytest.fixture
def ffi() -> cffi.FFI:
    """An ABI-mode FFI that knows the ACL structs, bound as the bridge's ffi."""
    test_ffi = cffi.FFI()
    test_ffi.cdef(cdata.STRUCTS)
    cdata.bind(test_ffi)
    return test_ffi


def _text(ffi: cffi.FFI, value) -> str | None:
    return None if value == ffi.NULL else ffi.string(ffi.cast("char *", value)).decode()


# ------------------------------------------------------------------ the table and install()


def test_every_call_is_named_after_its_c_symbol_and_has_a_kind() -> None:
    assert len(E) >= 120
    for name, function in E.items():
        assert function.__name__ == name
        assert name.startswith(("acl", "acldvpp"))
        assert kind_of(function).name in ("error", "pointer", "value", "real", "void")


def test_the_calls_the_issue_names_are_emulated() -> None:
    wanted = {
        "aclInit",
        "aclFinalize",
        "aclGetRecentErrMsg",
        "aclmdlQuerySize",
        "aclmdlQuerySizeFromMem",
        "aclmdlLoadFromFileWithMem",
        "aclmdlLoadFromMemWithMem",
        "aclmdlGetInputDims",
        "aclmdlGetOutputDims",
        "aclmdlGetCurOutputDims",
        "aclrtGetMemInfo",
        "aclrtLaunchCallback",
        "aclrtSetExceptionInfoCallback",
        "aclrtSubscribeReport",
        "aclrtProcessReport",
        "aclCreateTensorDesc",
        "aclDestroyTensorDesc",
        "aclGetTensorDescType",
        "aclmdlGetDatasetTensorDesc",
        "aclmdlSetDatasetTensorDesc",
        "aclFloat16ToFloat",
        "aclFloatToFloat16",
        "aclDataTypeSize",
        "aclrtGetCurrentContext",
        "aclrtSetCurrentContext",
        "aclrtMemset",
        "acldvppMalloc",
        "acldvppFree",
        "aclmdlExecuteAsyncV2",
        "aclmdlSetExecConfigOpt",
        "aclrtGetSocName",
    }
    assert wanted <= set(E)


def test_install_registers_every_call_with_def_extern(ffi) -> None:
    registered = {}

    class RecordingFFI:
        NULL = ffi.NULL

        def def_extern(self, name, onerror):
            def register(function):
                registered[name] = (function, onerror)
                return function

            return register

        def __getattr__(self, attr):
            return getattr(ffi, attr)

    recording = RecordingFFI()
    bridge.install(recording)
    try:
        assert set(registered) == set(E)
        function, onerror = registered["aclrtMalloc"]
        assert function is registry.body_of(E["aclrtMalloc"])  # onerror answers its AclError
        try:
            raise AclError("devPtr is NULL", ACL_ERROR_INVALID_PARAM)
        except AclError as exc:
            assert onerror(type(exc), exc, exc.__traceback__) == ACL_ERROR_INVALID_PARAM
        assert "devPtr is NULL" in _text(ffi, E["aclGetRecentErrMsg"]())
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            info = (type(exc), exc, exc.__traceback__)
        assert onerror(*info) == UNEXPECTED_ERROR == 500000
        assert registered["aclmdlCreateDesc"][1](*info) == ffi.NULL
        assert registered["aclmdlGetNumInputs"][1](*info) == 0
        assert registered["aclGetTensorDescType"][1](*info) == -1
        assert registered["aclrtGetTaskIdFromExceptionInfo"][1](*info) == 0xFFFFFFFF
        assert registered["aclFloat16ToFloat"][1](*info) == 0.0
        assert registered["aclDestroyTensorDesc"][1](*info) is None
    finally:
        cdata.bind(ffi)


def test_a_call_table_turns_acl_errors_into_codes_and_refuses_twins() -> None:
    table = CallTable()

    @table.error
    def aclFake(code: int) -> int:
        raise AclError("fake failure", code)

    @table.value(7)
    def aclFakeValue() -> int:
        raise AclError("fake failure", ACL_ERROR_INVALID_PARAM)

    assert aclFake(123456) == 123456
    assert aclFakeValue() == 7
    assert failure_value(aclFake) == UNEXPECTED_ERROR and failure_value(aclFakeValue) == 7
    with pytest.raises(ValueError):
        table.error(aclFake.__wrapped__)
    with pytest.raises(ValueError):
        registry.merge([table, table])


# ------------------------------------------------------------------ conversions


def test_pointers_handles_and_strings_convert(ffi) -> None:
    assert cdata.address(ffi.NULL) == 0 and cdata.address(None) == 0
    assert cdata.address(cdata.pointer(0x7F0000001230)) == 0x7F0000001230
    assert cdata.address(ffi.cast("void *", 2**64 - 1)) == 2**64 - 1
    assert cdata.text(ffi.NULL) is None
    keep = ffi.new("char[]", "näme".encode())
    assert cdata.text(ffi.cast("void *", keep)) == "näme"
    first, second = cdata.interned("Ascend910B"), cdata.interned("Ascend910B")
    assert cdata.address(first) == cdata.address(second)
    assert _text(ffi, first) == "Ascend910B"
    with pytest.raises(AclError) as raised:
        cdata.require(ffi.NULL, "devPtr")
    assert raised.value.code == ACL_ERROR_INVALID_PARAM


def test_io_dims_fill_and_read_back(ffi) -> None:
    dims = ffi.new("aclmdlIODims *")
    mdl_desc.fill_io_dims(dims, {"name": "x" * 200, "dimCount": 3, "dims": [1, -1, 224]})
    assert ffi.string(dims.name) == b"x" * 127  # NUL-terminated within the 128 bytes
    assert dims.dimCount == 3 and list(dims.dims[0:3]) == [1, -1, 224]
    again = mdl_desc.read_io_dims(cdata.struct_at("aclmdlIODims *", ffi.cast("void *", dims)))
    assert again == {"name": "x" * 127, "dimCount": 3, "dims": [1, -1, 224]}
    assert ffi.sizeof("aclmdlIODims") == 1160  # char[128], size_t, int64_t[128]


# ------------------------------------------------------------------ NULL out-parameters


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("aclrtGetDevice", ("NULL",)),
        ("aclrtGetDeviceCount", ("NULL",)),
        ("aclrtGetRunMode", ("NULL",)),
        ("aclrtCreateContext", ("NULL", 0)),
        ("aclrtGetCurrentContext", ("NULL",)),
        ("aclrtCreateStream", ("NULL",)),
        ("aclrtCreateEvent", ("NULL",)),
        ("aclrtMalloc", ("NULL", 64, 0)),
        ("aclrtMallocHost", ("NULL", 64)),
        ("acldvppMalloc", ("NULL", 64)),
        ("aclrtGetMemInfo", (1, "NULL", "NULL")),
        ("aclmdlLoadFromFile", ("NULL", "NULL")),
        ("aclmdlQuerySize", ("NULL", "NULL", "NULL")),
        ("aclmdlSetExecConfigOpt", ("NULL", 0, "NULL", 4)),
        ("aclrtLaunchCallback", ("NULL", "NULL", 0, "NULL")),
    ],
)
def test_null_out_pointers_are_invalid_params(ffi, name: str, args: tuple) -> None:
    values = [ffi.NULL if arg == "NULL" else arg for arg in args]
    assert E[name](*values) == ACL_ERROR_INVALID_PARAM
    message = E["aclGetRecentErrMsg"]()
    assert "NULL" in _text(ffi, message)
    assert E["aclGetRecentErrMsg"]() == ffi.NULL  # cleared by the read


def test_calls_before_init_give_the_runtime_codes(ffi) -> None:
    device = ffi.new("int32_t *", -5)
    assert E["aclrtGetDevice"](device) == ACL_ERROR_UNINITIALIZE
    assert device[0] == -5  # not written on failure
    assert E["aclFinalize"]() in (ACL_ERROR_UNINITIALIZE, 100037)


# ------------------------------------------------------------------ tensor descriptions


def test_tensor_description_family(ffi) -> None:
    dims = ffi.new("int64_t[]", [2, 3, 4])
    desc = E["aclCreateTensorDesc"](1, 3, dims, 0)  # ACL_FLOAT16, NCHW
    assert desc != ffi.NULL
    assert E["aclGetTensorDescType"](desc) == 1
    assert E["aclGetTensorDescFormat"](desc) == 0
    assert E["aclGetTensorDescNumDims"](desc) == 3
    assert E["aclGetTensorDescElementCount"](desc) == 24
    assert E["aclGetTensorDescSize"](desc) == 48
    assert E["aclGetTensorDescDim"](desc, 2) == 4 and E["aclGetTensorDescDim"](desc, 3) == -1
    out = ffi.new("int64_t *")
    assert E["aclGetTensorDescDimV2"](desc, 1, out) == ACL_SUCCESS and out[0] == 3
    assert E["aclGetTensorDescDimV2"](desc, 3, out) == ACL_ERROR_INVALID_PARAM
    assert E["aclGetTensorDescDimV2"](desc, 0, ffi.NULL) == ACL_ERROR_INVALID_PARAM
    assert _text(ffi, E["aclGetTensorDescName"](desc)) == ""
    name = ffi.new("char[]", b"logits")
    E["aclSetTensorDescName"](desc, name)
    assert _text(ffi, E["aclGetTensorDescName"](desc)) == "logits"
    shape = ffi.new("int64_t[]", [5, -1])
    assert E["aclSetTensorOriginShape"](desc, 2, shape) == ACL_SUCCESS
    assert E["aclGetTensorDescElementCount"](desc) == 0  # a dynamic dim
    assert E["aclSetTensorShape"](desc, 2, ffi.NULL) == ACL_ERROR_INVALID_PARAM
    assert E["aclSetTensorOriginFormat"](desc, 2) == ACL_SUCCESS
    assert E["aclGetTensorDescFormat"](desc) == 2
    assert E["aclSetTensorFormat"](ffi.NULL, 2) == ACL_SUCCESS  # ignored, as in CANN
    E["aclDestroyTensorDesc"](desc)
    assert E["aclGetTensorDescType"](desc) == -1  # gone
    E["aclDestroyTensorDesc"](ffi.NULL)


def test_tensor_description_edges(ffi) -> None:
    assert E["aclCreateTensorDesc"](0, -1, ffi.NULL, 2) == ffi.NULL
    assert E["aclCreateTensorDesc"](0, 2, ffi.NULL, 2) == ffi.NULL
    scalar = E["aclCreateTensorDesc"](0, 0, ffi.NULL, 2)
    assert E["aclGetTensorDescElementCount"](scalar) == 1
    assert E["aclGetTensorDescSize"](scalar) == 4
    unknown_rank = E["aclCreateTensorDesc"](0, 1, ffi.new("int64_t[]", [-2]), 2)
    assert E["aclGetTensorDescNumDims"](unknown_rank) == tensor.ACL_UNKNOWN_RANK
    for desc in (scalar, unknown_rank):
        E["aclDestroyTensorDesc"](desc)
    assert E["aclGetTensorDescType"](ffi.NULL) == -1
    assert E["aclGetTensorDescFormat"](ffi.NULL) == -1
    assert E["aclGetTensorDescSize"](ffi.NULL) == 0
    assert _text(ffi, E["aclGetTensorDescName"](ffi.NULL)) == ""


@pytest.mark.parametrize(
    ("data_type", "size"),
    [
        (-1, 0),
        (0, 4),
        (1, 2),
        (2, 1),
        (3, 4),
        (9, 8),
        (11, 8),
        (12, 1),
        (13, 0),
        (16, 8),
        (17, 16),
        (27, 2),
        (29, 1),
        (999, 8),
    ],
)
def test_data_type_size(data_type: int, size: int) -> None:
    assert base.data_type_size(data_type) == size


# ------------------------------------------------------------------ datasets and exec configs


def test_dataset_keeps_copies_of_tensor_descriptions(ffi) -> None:
    dataset = E["aclmdlCreateDataset"]()
    buffer = E["aclCreateDataBuffer"](ffi.NULL, 0)
    assert E["aclmdlAddDatasetBuffer"](dataset, buffer) == ACL_SUCCESS
    desc = E["aclCreateTensorDesc"](0, 1, ffi.new("int64_t[]", [8]), 2)
    assert E["aclmdlSetDatasetTensorDesc"](dataset, desc, 1) == ACL_ERROR_INVALID_PARAM
    assert E["aclmdlSetDatasetTensorDesc"](dataset, desc, 0) == ACL_SUCCESS
    E["aclDestroyTensorDesc"](desc)  # the dataset's copy stays
    kept = E["aclmdlGetDatasetTensorDesc"](dataset, 0)
    assert kept != ffi.NULL and E["aclGetTensorDescElementCount"](kept) == 8
    assert E["aclmdlGetDatasetTensorDesc"](dataset, 1) == ffi.NULL
    assert E["aclmdlSetDatasetTensorDesc"](dataset, ffi.NULL, 0) == ACL_SUCCESS
    assert E["aclmdlGetDatasetTensorDesc"](dataset, 0) == ffi.NULL
    assert E["aclGetTensorDescType"](kept) == -1  # the copy went with it
    desc = E["aclCreateTensorDesc"](0, 0, ffi.NULL, 2)
    assert E["aclmdlSetDatasetTensorDesc"](dataset, desc, 0) == ACL_SUCCESS
    copy = cdata.pointer(mdl_dataset.dataset_tensor_descs(cdata.address(dataset))[0])
    assert E["aclmdlDestroyDataset"](dataset) == ACL_SUCCESS
    assert E["aclGetTensorDescType"](copy) == -1  # destroyed with the dataset
    assert mdl_dataset.dataset_tensor_descs(cdata.address(dataset)) == {}
    E["aclDestroyTensorDesc"](desc)
    assert E["aclDestroyDataBuffer"](buffer) == ACL_SUCCESS


def test_exec_config_values_are_read_by_their_c_type(ffi) -> None:
    handle = E["aclmdlCreateExecConfigHandle"]()
    timeout = ffi.new("int32_t *", 250)
    assert E["aclmdlSetExecConfigOpt"](handle, 0, timeout, 4) == ACL_SUCCESS
    assert E["aclmdlSetExecConfigOpt"](handle, 0, timeout, 8) == ACL_ERROR_INVALID_PARAM
    assert E["aclmdlSetExecConfigOpt"](handle, 1, ffi.new("int32_t *", -2), 4) == 100000
    assert E["aclmdlSetExecConfigOpt"](handle, 5, timeout, 4) == ACL_ERROR_INVALID_PARAM
    assert E["aclmdlSetExecConfigOpt"](handle, 0, ffi.NULL, 4) == ACL_ERROR_INVALID_PARAM
    snapshot = RUNTIME.handles.exec_config_snapshot(cdata.address(handle))
    assert snapshot.stream_sync_timeout_ms == 250
    assert E["aclmdlDestroyExecConfigHandle"](handle) == ACL_SUCCESS
    assert E["aclmdlSetExecConfigOpt"](handle, 0, timeout, 4) == ACL_ERROR_INVALID_PARAM


def test_data_buffers(ffi) -> None:
    host = ffi.new("char[]", 100)
    buffer = E["aclCreateDataBuffer"](host, 100)
    assert cdata.address(E["aclGetDataBufferAddr"](buffer)) == cdata.address(host)
    assert E["aclGetDataBufferSizeV2"](buffer) == 100 == E["aclGetDataBufferSize"](buffer)
    assert E["aclUpdateDataBuffer"](buffer, ffi.NULL, 0) == ACL_SUCCESS
    assert E["aclGetDataBufferAddr"](buffer) == ffi.NULL
    assert E["aclDestroyDataBuffer"](buffer) == ACL_SUCCESS
    assert E["aclDestroyDataBuffer"](buffer) == ACL_ERROR_INVALID_PARAM
    assert E["aclGetDataBufferSizeV2"](buffer) == 0


def test_float16_calls(ffi) -> None:
    assert E["aclFloatToFloat16"](1.0) == 0x3C00
    assert E["aclFloat16ToFloat"](0x3C00) == 1.0
    assert E["aclFloatToFloat16"](float("inf")) == 0x7BFF


# ------------------------------------------------------------------ the headers' contract


def test_every_call_matches_its_header_prototype() -> None:
    """Each emulated call is declared by the committed headers, takes as many arguments as its
    prototype and returns the kind its C return type says."""
    from cabi import symbols

    prototypes = symbols.by_name()
    for name, function in E.items():
        assert name in prototypes, f"{name} is not declared by cabi/include"
        proto = prototypes[name]
        arity = len(inspect.signature(function.__wrapped__).parameters)
        assert arity == len(proto.params), (name, proto.params)
        ret = symbols.abi_type(proto.ret)
        expected = {"int": "value", "void *": "pointer", "void": "void", "float": "real"}.get(
            ret, "value"
        )
        if proto.ret == "aclError":
            expected = "error"
        assert kind_of(function).name == expected, (name, proto.ret)


def test_struct_limits_match_the_headers() -> None:
    from cabi import symbols

    constants = symbols.constants()
    assert constants["ACL_MAX_DIM_CNT"] == cdata.MAX_DIM_COUNT
    assert constants["ACL_MAX_TENSOR_NAME_LEN"] == cdata.MAX_TENSOR_NAME_LEN
    assert constants["ACL_MAX_BATCH_NUM"] == constants["ACL_MAX_HW_NUM"] == cdata.MAX_GEAR_COUNT
    assert constants["ACL_UNKNOWN_RANK"] == tensor.ACL_UNKNOWN_RANK
