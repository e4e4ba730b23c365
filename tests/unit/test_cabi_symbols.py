"""The C-interface parser: every public AscendCL call is declared once, in the right header and
library, and every C type it uses maps to an ABI type cffi can declare."""

from __future__ import annotations

from collections import Counter

import cffi
import pytest

import core.errors
from cabi import symbols

# Calls per CANN header, counted over the public headers of every release we surveyed (newest
# layout: acl_base.h is split into acl_base_rt.h and acl_base_mdl.h).
EXPECTED_PER_HEADER = {
    "acl/acl_base_rt.h": 14,
    "acl/acl_base_mdl.h": 26,
    "acl/acl_rt.h": 378,
    "acl/acl_mdl.h": 103,
    "acl/acl_op.h": 30,
    "acl/ops/acl_dvpp.h": 177,
    "acl/ops/acl_cblas.h": 12,
    # included by acl_rt.h and acl_op.h, so programs see them through acl/acl.h
    "acl/acl_rt_allocator.h": 10,
    "acl/acl_dump.h": 5,
}

# The calls issue 11 names explicitly.
REQUIRED_CALLS = [
    "aclmdlQuerySize",
    "aclmdlQuerySizeFromMem",
    "aclmdlLoadFromFileWithMem",
    "aclmdlLoadFromMemWithMem",
    "aclmdlGetInputDims",
    "aclrtGetMemInfo",
    "aclGetRecentErrMsg",
    "aclInit",
    "aclrtLaunchCallback",
    "aclrtSetExceptionInfoCallback",
    "aclrtSubscribeReport",
    "aclCreateTensorDesc",
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
]


def test_headers_are_package_data_in_cann_layout():
    paths = set(symbols.header_paths())
    for rel in [
        "acl/acl.h",
        "acl/acl_base.h",
        "acl/acl_rt.h",
        "acl/acl_mdl.h",
        "acl/acl_op.h",
        "acl/error_codes/rt_error_codes.h",
        "acl/error_codes/ge_error_codes.h",
        "acl/ops/acl_dvpp.h",
        "acl/ops/acl_cblas.h",
    ]:
        assert rel in paths, rel
    assert symbols.include_root().joinpath("acl", "acl.h").is_file()


def test_call_counts_per_header():
    counts = Counter(p.header for p in symbols.prototypes())
    assert dict(counts) == EXPECTED_PER_HEADER
    base = counts["acl/acl_base_rt.h"] + counts["acl/acl_base_mdl.h"]
    assert base == 40  # everything the pre-split acl_base.h declared
    required = sum(counts[h] for h in EXPECTED_PER_HEADER) - 15
    assert required == 740


def test_names_unique_and_indexed():
    protos = symbols.prototypes()
    names = [p.name for p in protos]
    assert len(names) == len(set(names))
    assert set(symbols.by_name()) == set(names)


def test_library_assignment():
    for proto in symbols.prototypes():
        if proto.header == "acl/ops/acl_dvpp.h":
            assert proto.library == "acl_dvpp"
        elif proto.header == "acl/ops/acl_cblas.h":
            assert proto.library == "acl_cblas"
        else:
            assert proto.library == "ascendcl", proto.name
    table = symbols.by_name()
    assert table["acldvppMalloc"].library == "acl_dvpp"
    assert table["aclblasGemmEx"].library == "acl_cblas"
    assert table["aclmdlExecute"].library == "ascendcl"


@pytest.mark.parametrize("name", REQUIRED_CALLS)
def test_issue_calls_present(name):
    assert name in symbols.by_name()


def test_signatures_of_key_calls():
    table = symbols.by_name()
    init = table["aclInit"]
    assert (init.ret, [(p.type, p.name) for p in init.params]) == (
        "aclError",
        [("const char *", "configPath")],
    )
    assert table["aclrtMemset"].c_decl() == (
        "aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count)"
    )
    assert [p.type for p in table["aclrtSubscribeReport"].params] == ["uint64_t", "aclrtStream"]
    assert [p.type for p in table["aclrtLaunchCallback"].params][0] == "aclrtCallback"
    assert table["aclmdlCreateDesc"].params == ()  # written f(void)
    assert table["aclrtGetSocName"].ret == "const char *"
    dims = table["aclSetTensorShapeRange"].params[-1]
    assert dims.type == "int64_t (*)[ACL_TENSOR_SHAPE_RANGE_NUM]"


def test_deprecated_calls_are_marked():
    table = symbols.by_name()
    for name in ["aclGetDataBufferSize", "aclrtQueryEvent", "aclopExecute", "aclrtGetVersion"]:
        assert table[name].deprecated, name
    assert table["aclrtMalloc"].deprecated is None


def test_variadic_call_is_faithful():
    app_log = symbols.by_name()["aclAppLog"]
    assert app_log.variadic
    assert app_log.params[-1].type == "..."
    assert symbols.abi_decl(app_log).endswith(", ...);")
    assert not symbols.by_name()["aclInit"].variadic


def test_every_type_maps_to_an_abi_type():
    for proto in symbols.prototypes():
        for c_type in [proto.ret, *(p.type for p in proto.params)]:
            assert symbols.abi_type(c_type), (proto.name, c_type)


def test_abi_type_rules():
    assert symbols.abi_type("aclError") == "int"
    assert symbols.abi_type("aclFloat16") == "uint16_t"
    assert symbols.abi_type("aclrtStream") == "void *"
    assert symbols.abi_type("aclmdlDesc *") == "void *"
    assert symbols.abi_type("const char *") == "void *"
    assert symbols.abi_type("aclrtCallback") == "void *"  # function-pointer typedef
    assert symbols.abi_type("aclrtMemcpyKind") == "int"
    assert symbols.abi_type("acldvppPixelFormat") == "int"  # CANN declares the tag only
    assert symbols.abi_type("size_t") == "size_t"
    assert symbols.abi_type("const int32_t") == "int32_t"
    assert symbols.abi_type("bool") == "_Bool"
    assert symbols.abi_type("void") == "void"
    with pytest.raises(symbols.UnknownCType):
        symbols.abi_type("aclNoSuchType")
    with pytest.raises(symbols.UnknownCType):
        symbols.abi_type("aclmdlDesc")  # opaque: never passed by value


def test_by_value_structs_have_a_prelude():
    structs = symbols.by_value_structs()
    assert {"dim3", "aclmdlRICondTaskParams"} <= set(structs)
    prelude = symbols.abi_prelude()
    assert "typedef struct { uint32_t x; uint32_t y; uint32_t z; } dim3;" in prelude
    assert "void *handle; int type; uint32_t size; void *modelRIArray;" in prelude
    launch = symbols.by_name()["aclrtLaunchSIMTKernelWithArgsArray"]
    assert "dim3 gridDim, dim3 blockDim" in symbols.abi_decl(launch)


def test_all_abi_declarations_parse_with_cffi():
    ffi = cffi.FFI()
    ffi.cdef(symbols.abi_prelude() + "\n".join(map(symbols.abi_decl, symbols.prototypes())))
    assert ffi.sizeof("dim3") == 12
    malloc = symbols.abi_decl(symbols.by_name()["aclrtMalloc"])
    assert malloc == "int aclrtMalloc(void *devPtr, size_t size, int policy);"


def test_error_codes_agree_with_core_errors():
    header_codes = symbols.error_codes()
    python_codes = {
        name: value
        for name, value in vars(core.errors).items()
        if name.startswith("ACL_") and isinstance(value, int)
    }
    shared = set(header_codes) & set(python_codes)
    assert len(shared) == len(python_codes)  # every Python code is declared in the headers
    assert {name: header_codes[name] for name in shared} == python_codes


def test_constants_agree_with_pyacl_constants():
    import acl.constants

    header = symbols.constants()
    python = {
        name: value
        for name, value in vars(acl.constants).items()
        if name.startswith("ACL_") and isinstance(value, int)
    }
    shared = set(header) & set(python)
    assert len(shared) > 50
    assert {name: header[name] for name in shared} == {name: python[name] for name in shared}
    assert header["ACL_FLOAT16"] == 1
    assert header["ACL_MEMCPY_HOST_TO_DEVICE"] == 1
    assert header["ACL_MEM_MALLOC_HUGE_FIRST"] == 0
    assert header["ACL_ERROR_RT_STREAM_SYNC_TIMEOUT"] == 507046
