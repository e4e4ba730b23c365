"""The C ABI's Python half against a real farm, called the way libascendcl calls it: C-style
flows through ``cabi.bridge.EMULATED`` with pointers from an ABI-mode FFI (``ffi.new``), real C
function pointers (``ffi.callback``) and ``pthread_self()`` for the report thread.

The library itself is built elsewhere (cabi/build.py); these tests pin what its Python half
does: the same codes as ``import acl``, out-parameters and structs filled as C expects, no
leaks (every handle destroyed, the farm stopped clean by the shared fixtures).
"""

from __future__ import annotations

import threading

import cffi
import numpy as np
import pytest

from cabi.bridge import EMULATED, cdata
from client import RUNTIME
from tests.conftest import poll_for
from tests.system.conftest import MODELS
from tests.system.test_faults import fault_farm, scale_model_file

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

C = EMULATED
ADD_MODEL = str(MODELS / "add.toml")  # z = x + y over float32 [1, 1024]
N = 1024
NBYTES = N * 4
H2D, D2H = 1, 2
ACL_FLOAT, ACL_FORMAT_ND = 0, 2


@pytest.fixture(scope="module")
def ffi() -> cffi.FFI:
    """An ABI-mode FFI with the ACL structs and ``pthread_self``, bound as the bridge's."""
    test_ffi = cffi.FFI()
    test_ffi.cdef(cdata.STRUCTS + "unsigned long pthread_self(void);")
    cdata.bind(test_ffi)
    return test_ffi


@pytest.fixture
def session(farm, ffi, monkeypatch):
    """``aclInit(NULL)`` against the module's farm; ``aclFinalize`` afterwards, with nothing
    of the session left in the runtime's tables before it."""
    monkeypatch.setenv("NPUFARM_ADDRESS", farm.address)
    assert C["aclInit"](ffi.NULL) == 0
    try:
        yield
        assert all(count == 0 for count in RUNTIME.handles.live_counts().values()), (
            RUNTIME.handles.live_counts()
        )
        assert len(RUNTIME.state.allocations) == 0
    finally:
        assert C["aclFinalize"]() == 0


def _out(ffi: cffi.FFI, ctype: str, initial=0):
    return ffi.new(f"{ctype} *", initial)


def _void(ffi: cffi.FFI, value) -> object:
    return ffi.cast("void *", value)


def _text(ffi: cffi.FFI, value) -> str | None:
    return None if value == ffi.NULL else ffi.string(ffi.cast("char *", value)).decode()


def _device_buffer(ffi: cffi.FFI):
    ptr = ffi.new("void **")
    assert C["aclrtMalloc"](ptr, NBYTES, 0) == 0
    return ptr[0]


# --------------------------------------------------------------------------------------------
# the whole C flow


def test_c_style_inference_flow_matches_numpy(session, ffi):
    assert C["aclrtSetDevice"](0) == 0
    context, stream = ffi.new("void **"), ffi.new("void **")
    assert C["aclrtCreateContext"](context, 0) == 0 and context[0] != ffi.NULL
    current = ffi.new("void **")
    assert C["aclrtGetCurrentContext"](current) == 0 and current[0] == context[0]
    assert C["aclrtCreateStream"](stream) == 0 and stream[0] != ffi.NULL
    device = _out(ffi, "int32_t", -1)
    assert C["aclrtGetDevice"](device) == 0 and device[0] == 0

    model_id = _out(ffi, "uint32_t")
    path = ffi.new("char[]", ADD_MODEL.encode())
    assert C["aclmdlLoadFromFile"](path, model_id) == 0 and model_id[0] > 0
    desc = C["aclmdlCreateDesc"]()
    assert C["aclmdlGetDesc"](desc, model_id[0]) == 0
    assert (C["aclmdlGetNumInputs"](desc), C["aclmdlGetNumOutputs"](desc)) == (2, 1)
    assert C["aclmdlGetInputSizeByIndex"](desc, 1) == NBYTES
    assert C["aclmdlGetOutputSizeByIndex"](desc, 0) == NBYTES
    dims = ffi.new("aclmdlIODims *")
    assert C["aclmdlGetInputDims"](desc, 1, dims) == 0
    assert (ffi.string(dims.name), dims.dimCount, list(dims.dims[0:2])) == (b"y", 2, [1, N])
    assert C["aclmdlGetOutputDims"](desc, 0, dims) == 0 and ffi.string(dims.name) == b"z"
    assert C["aclmdlGetCurOutputDims"](desc, 0, dims) == 0 and list(dims.dims[0:2]) == [1, N]
    assert C["aclmdlGetInputDims"](desc, 2, dims) == 100000
    assert _text(ffi, C["aclmdlGetInputNameByIndex"](desc, 0)) == "x"
    assert _text(ffi, C["aclmdlGetOutputNameByIndex"](desc, 0)) == "z"
    assert C["aclmdlGetInputDataType"](desc, 0) == ACL_FLOAT
    assert C["aclmdlGetInputFormat"](desc, 0) == ACL_FORMAT_ND
    index = _out(ffi, "size_t", 99)
    assert C["aclmdlGetInputIndexByName"](desc, ffi.new("char[]", b"y"), index) == 0
    assert index[0] == 1

    rng = np.random.default_rng(3)
    x, y = (rng.standard_normal(N).astype(np.float32) for _ in range(2))
    host_in = [ffi.new("float[]", values.tolist()) for values in (x, y)]
    host_out = ffi.new("float[]", N)
    d_in = [_device_buffer(ffi) for _ in range(2)]
    d_out = _device_buffer(ffi)
    for device_ptr, host in zip(d_in, host_in):
        assert C["aclrtMemcpy"](device_ptr, NBYTES, host, NBYTES, H2D) == 0
    inputs, outputs = C["aclmdlCreateDataset"](), C["aclmdlCreateDataset"]()
    buffers = [C["aclCreateDataBuffer"](ptr, NBYTES) for ptr in (*d_in, d_out)]
    for buffer in buffers[:2]:
        assert C["aclmdlAddDatasetBuffer"](inputs, buffer) == 0
    assert C["aclmdlAddDatasetBuffer"](outputs, buffers[2]) == 0
    assert C["aclmdlGetDatasetNumBuffers"](inputs) == 2
    assert C["aclmdlGetDatasetBuffer"](inputs, 1) == buffers[1]

    assert C["aclmdlExecuteAsync"](model_id[0], inputs, outputs, stream[0]) == 0
    assert C["aclrtSynchronizeStream"](stream[0]) == 0
    assert C["aclrtMemcpy"](host_out, NBYTES, d_out, NBYTES, D2H) == 0
    np.testing.assert_array_equal(np.frombuffer(ffi.buffer(host_out), np.float32), x + y)

    # the same through aclmdlExecute and aclmdlExecuteAsyncV2 with an exec config
    assert C["aclrtMemset"](d_out, NBYTES, 0, NBYTES) == 0
    assert C["aclmdlExecute"](model_id[0], inputs, outputs) == 0
    config = C["aclmdlCreateExecConfigHandle"]()
    timeout = ffi.new("int32_t *", 5000)
    assert C["aclmdlSetExecConfigOpt"](config, 0, timeout, ffi.sizeof("int32_t")) == 0
    assert C["aclmdlExecuteAsyncV2"](model_id[0], inputs, outputs, stream[0], config) == 0
    assert C["aclrtSynchronizeStream"](stream[0]) == 0
    assert C["aclrtMemcpy"](host_out, NBYTES, d_out, NBYTES, D2H) == 0
    np.testing.assert_array_equal(np.frombuffer(ffi.buffer(host_out), np.float32), x + y)

    assert C["aclmdlDestroyExecConfigHandle"](config) == 0
    for dataset in (inputs, outputs):
        assert C["aclmdlDestroyDataset"](dataset) == 0
    for buffer in buffers:
        assert C["aclDestroyDataBuffer"](buffer) == 0
    for device_ptr in (*d_in, d_out):
        assert C["aclrtFree"](device_ptr) == 0
    assert C["aclmdlDestroyDesc"](desc) == 0
    assert C["aclmdlUnload"](model_id[0]) == 0
    assert C["aclrtDestroyStream"](stream[0]) == 0
    assert C["aclrtDestroyContext"](context[0]) == 0
    assert C["aclrtResetDevice"](0) == 0


def test_device_memory_and_event_queries(session, ffi):
    count = _out(ffi, "uint32_t")
    assert C["aclrtGetDeviceCount"](count) == 0 and count[0] == 2
    assert C["aclrtSetDevice"](1) == 0
    mode = _out(ffi, "int", -1)
    assert C["aclrtGetRunMode"](mode) == 0 and mode[0] == 1  # ACL_HOST
    status = _out(ffi, "int", -1)
    assert C["aclrtQueryDeviceStatus"](1, status) == 0 and status[0] == 0
    assert _text(ffi, C["aclrtGetSocName"]()).startswith("Ascend")
    free, total = _out(ffi, "size_t"), _out(ffi, "size_t")
    assert C["aclrtGetMemInfo"](1, free, total) == 0 and 0 < free[0] <= total[0]

    pinned = ffi.new("void **")
    assert C["aclrtMallocHost"](pinned, NBYTES) == 0
    ffi.memmove(pinned[0], bytes(range(256)) * 16, NBYTES)
    dvpp = ffi.new("void **")
    assert C["acldvppMalloc"](dvpp, NBYTES) == 0
    stream, start, end = ffi.new("void **"), ffi.new("void **"), ffi.new("void **")
    assert C["aclrtCreateStream"](stream) == 0
    assert C["aclrtCreateEvent"](start) == 0 and C["aclrtCreateEventWithFlag"](end, 8) == 0
    assert C["aclrtRecordEvent"](start[0], stream[0]) == 0
    assert C["aclrtMemcpyAsync"](dvpp[0], NBYTES, pinned[0], NBYTES, H2D, stream[0]) == 0
    assert C["aclrtMemsetAsync"](pinned[0], NBYTES, 7, 16, stream[0]) == 0
    assert C["aclrtRecordEvent"](end[0], stream[0]) == 0
    assert C["aclrtSynchronizeEvent"](end[0]) == 0
    recorded, done = _out(ffi, "int", -1), _out(ffi, "int", -1)
    assert C["aclrtQueryEventStatus"](end[0], recorded) == 0 and recorded[0] == 1
    assert C["aclrtQueryEvent"](end[0], done) == 0 and done[0] == 0  # ACL_EVENT_STATUS_COMPLETE
    ms = _out(ffi, "float", -1.0)
    assert C["aclrtEventElapsedTime"](ms, start[0], end[0]) == 0 and ms[0] >= 0.0
    query = _out(ffi, "int", -1)
    assert C["aclrtStreamQuery"](stream[0], query) == 0 and query[0] == 0
    back = ffi.new("char[]", NBYTES)
    assert C["aclrtMemcpy"](back, NBYTES, dvpp[0], NBYTES, D2H) == 0
    assert ffi.buffer(back)[:] == bytes(range(256)) * 16
    assert ffi.buffer(ffi.cast("char *", pinned[0]), 17)[:] == b"\x07" * 16 + b"\x10"

    assert C["acldvppFree"](dvpp[0]) == 0
    assert C["aclrtFreeHost"](pinned[0]) == 0
    for event in (start, end):
        assert C["aclrtDestroyEvent"](event[0]) == 0
    assert C["aclrtDestroyStream"](stream[0]) == 0
    assert C["aclrtResetDevice"](1) == 0


# --------------------------------------------------------------------------------------------
# misuse: the codes import acl gives


def test_misuse_codes_and_recent_error_message(session, ffi):
    import acl

    assert C["aclrtSetDevice"](99) == acl.rt.set_device(99) == 107001
    assert C["aclGetRecentErrMsg"]() != ffi.NULL
    assert acl.get_recent_err_msg() == ""  # the C read cleared it, as CANN's does
    assert C["aclrtSetDevice"](99) == 107001
    message = _text(ffi, C["aclGetRecentErrMsg"]())
    assert "99" in message
    assert C["aclGetRecentErrMsg"]() == ffi.NULL  # nothing new since the read

    stream = ffi.new("void **")
    assert C["aclrtCreateStream"](stream) == acl.rt.create_stream()[1] == 107002  # no context
    assert C["aclrtSetDevice"](0) == 0
    ptr = ffi.new("void **")
    assert C["aclrtMalloc"](ptr, 0, 0) == acl.rt.malloc(0, 0)[1] == 100000
    assert C["aclrtMalloc"](ffi.NULL, 64, 0) == 100000
    assert "devPtr is NULL" in _text(ffi, C["aclGetRecentErrMsg"]())
    host = ffi.new("char[]", 64)
    assert C["aclrtFree"](host) == acl.rt.free(int(ffi.cast("uintptr_t", host))) == 107000
    model_id = _out(ffi, "uint32_t")
    missing = ffi.new("char[]", b"/nonexistent/model.om")
    assert C["aclmdlLoadFromFile"](missing, model_id) == 145002
    assert C["aclmdlUnload"](12345) == acl.mdl.unload(12345) == 145003
    assert C["aclmdlLoadFromFile"](ffi.new("char[]", ADD_MODEL.encode()), ffi.NULL) == 100000
    assert C["aclrtSynchronizeStreamWithTimeout"](ffi.NULL, 0) == 107000
    assert C["aclrtLaunchCallback"](ffi.NULL, ffi.NULL, 0, ffi.NULL) == 100000
    callback = ffi.callback("void(void *)", lambda data: None)
    assert C["aclrtLaunchCallback"](callback, ffi.NULL, 0, ffi.NULL) == 107015  # no thread
    assert C["aclrtProcessReport"](10) == 107012  # this thread subscribed to nothing
    assert C["aclrtResetDevice"](0) == 0


# --------------------------------------------------------------------------------------------
# host callbacks on the thread subscribed with its pthread id


def test_launch_callback_runs_a_c_function_on_the_subscribed_pthread(session, ffi):
    assert C["aclrtSetDevice"](0) == 0
    context = ffi.new("void **")
    assert C["aclrtGetCurrentContext"](context) == 0
    stream = ffi.new("void **")
    assert C["aclrtCreateStream"](stream) == 0
    d_data = _device_buffer(ffi)
    payload = bytes(range(256)) * 16
    assert C["aclrtMemcpy"](d_data, NBYTES, ffi.from_buffer(payload), NBYTES, H2D) == 0
    libc = ffi.dlopen(None)
    seen: list = []
    copied = ffi.new("char[]", NBYTES)
    user_data = ffi.new("int *", 42)

    @ffi.callback("void(void *)")
    def on_host(data):  # a D2H copy inside the callback, as the vendor samples do
        seen.append((ffi.cast("int *", data)[0], libc.pthread_self(), threading.get_ident()))
        seen.append(C["aclrtMemcpy"](copied, NBYTES, d_data, NBYTES, D2H))

    subscribed, stop = threading.Event(), threading.Event()
    report_thread: list[int] = []

    def report_loop():
        assert C["aclrtSetCurrentContext"](context[0]) == 0
        report_thread.append(libc.pthread_self())
        assert C["aclrtSubscribeReport"](libc.pthread_self(), stream[0]) == 0
        subscribed.set()
        while not stop.is_set():
            assert C["aclrtProcessReport"](50) in (0, 507012)

    thread = threading.Thread(target=report_loop, name="c-report")
    thread.start()
    try:
        assert subscribed.wait(10.0)
        assert C["aclrtSubscribeReport"](report_thread[0], stream[0]) == 100033  # taken
        for block in (1, 0):
            assert C["aclrtLaunchCallback"](on_host, user_data, block, stream[0]) == 0
        assert C["aclrtSynchronizeStream"](stream[0]) == 0
        poll_for(lambda: len(seen) == 4, 10.0)
    finally:
        stop.set()
        thread.join(10.0)
    assert seen[0] == (42, report_thread[0], report_thread[0]) and seen[1] == 0
    assert seen[2][0] == 42 and seen[3] == 0
    assert ffi.buffer(copied)[:] == payload
    assert C["aclrtUnSubscribeReport"](report_thread[0], stream[0]) == 0
    assert C["aclrtFree"](d_data) == 0
    assert C["aclrtDestroyStream"](stream[0]) == 0
    assert C["aclrtResetDevice"](0) == 0


def test_exception_info_callback_is_a_c_function(tmp_path, ffi, monkeypatch):
    rule = {"kind": "error", "card": 1, "api": "execute", "count": 1, "code": 507015}
    infos: list[dict] = []

    @ffi.callback("void(void *)")
    def on_exception(info):
        infos.append(
            {
                "code": C["aclrtGetErrorCodeFromExceptionInfo"](info),
                "device": C["aclrtGetDeviceIdFromExceptionInfo"](info),
                "task": C["aclrtGetTaskIdFromExceptionInfo"](info),
                "stream": C["aclrtGetStreamIdFromExceptionInfo"](info),
                "thread": C["aclrtGetThreadIdFromExceptionInfo"](info),
            }
        )

    with fault_farm(tmp_path, rule) as farm:
        monkeypatch.setenv("NPUFARM_ADDRESS", farm.address)
        assert C["aclInit"](ffi.NULL) == 0
        try:
            assert C["aclrtSetExceptionInfoCallback"](on_exception) == 0
            assert C["aclrtSetDevice"](1) == 0
            stream, model_id = ffi.new("void **"), _out(ffi, "uint32_t")
            assert C["aclrtCreateStream"](stream) == 0
            path = ffi.new("char[]", str(scale_model_file(tmp_path)).encode())
            assert C["aclmdlLoadFromFile"](path, model_id) == 0
            d_in, d_out = _device_buffer(ffi), _device_buffer(ffi)
            inputs, outputs = C["aclmdlCreateDataset"](), C["aclmdlCreateDataset"]()
            buffers = [C["aclCreateDataBuffer"](ptr, NBYTES) for ptr in (d_in, d_out)]
            C["aclmdlAddDatasetBuffer"](inputs, buffers[0])
            C["aclmdlAddDatasetBuffer"](outputs, buffers[1])
            assert C["aclmdlExecuteAsync"](model_id[0], inputs, outputs, stream[0]) == 0
            assert C["aclrtSynchronizeStream"](stream[0]) == 507015
            message = _text(ffi, C["aclGetRecentErrMsg"]())  # the syncing thread gets the text
            assert message.startswith("synchronize_stream: task ") and "507015" in message
            poll_for(lambda: infos, 5.0)
            RUNTIME.exception_reporter.drain(5.0)
            assert infos[0]["code"] == 507015 and infos[0]["device"] == 1
            assert infos[0]["stream"] == int(ffi.cast("uintptr_t", stream[0])) & 0xFFFFFFFF
            assert infos[0]["thread"] == threading.get_native_id()
            assert 0 < infos[0]["task"] < 0xFFFFFFFF
            assert C["aclrtGetTaskIdFromExceptionInfo"](ffi.NULL) == 0xFFFFFFFF
            assert C["aclrtSetExceptionInfoCallback"](ffi.NULL) == 0
            for handle in (inputs, outputs):
                assert C["aclmdlDestroyDataset"](handle) == 0
            for handle in buffers:
                assert C["aclDestroyDataBuffer"](handle) == 0
            assert C["aclrtFree"](d_in) == 0 and C["aclrtFree"](d_out) == 0
            assert C["aclmdlUnload"](model_id[0]) == 0
            assert C["aclrtDestroyStream"](stream[0]) == 0
            assert C["aclrtResetDevice"](1) == 0
        finally:
            C["aclrtSetExceptionInfoCallback"](ffi.NULL)
            assert C["aclFinalize"]() == 0


# --------------------------------------------------------------------------------------------
# what ais_bench asks first: AIPP types, the overflow mode


def test_aipp_queries_and_device_sat_mode(session, ffi):
    mode = _out(ffi, "int", 7)
    assert C["aclrtGetDeviceSatMode"](mode) == 107002 and mode[0] == 7  # no context
    assert C["aclrtSetDevice"](0) == 0
    assert C["aclrtGetDeviceSatMode"](mode) == 0 and mode[0] == 1  # INFNAN by default
    assert C["aclrtSetDeviceSatMode"](0) == 0
    assert C["aclrtGetDeviceSatMode"](mode) == 0 and mode[0] == 0
    assert C["aclrtSetDeviceSatMode"](2) == 100000  # ACL_RT_OVERFLOW_MODE_UNDEF
    assert C["aclrtGetDeviceSatMode"](ffi.NULL) == 100000
    path, model_id = ffi.new("char[]", ADD_MODEL.encode()), _out(ffi, "uint32_t")
    assert C["aclmdlLoadFromFile"](path, model_id) == 0
    aipp_type, attached = _out(ffi, "int", 5), _out(ffi, "size_t", 5)
    for index in (0, 1):  # add.toml has two inputs
        aipp_type[0], attached[0] = 5, 5
        assert C["aclmdlGetAippType"](model_id[0], index, aipp_type, attached) == 0
        assert (aipp_type[0], attached[0]) == (0, 0xFFFFFFFF)  # WITHOUT_AIPP, INVALID_NODE
    aipp_type[0], attached[0] = 5, 5
    assert C["aclmdlGetAippType"](model_id[0], 2, aipp_type, attached) == 500002
    assert (aipp_type[0], attached[0]) == (5, 0xFFFFFFFF)  # CANN writes the index first
    assert C["aclmdlGetAippType"](model_id[0] + 99, 0, aipp_type, attached) == 145003
    assert "get_aipp_type" in _text(ffi, C["aclGetRecentErrMsg"]())
    assert C["aclmdlGetAippType"](model_id[0], 0, ffi.NULL, attached) == 100000
    assert C["aclmdlGetAippType"](model_id[0], 0, aipp_type, ffi.NULL) == 100000
    info = ffi.new("char[]", 4096)  # stands in for an aclAippInfo
    assert C["aclmdlGetFirstAippInfo"](model_id[0], 0, info) == 145015
    assert C["aclmdlGetFirstAippInfo"](model_id[0], 0, ffi.NULL) == 100000
    size = _out(ffi, "size_t")
    assert C["aclmdlGetAippDataSize"](2, size) == 0 and size[0] == 64 + 2 * 96
    assert C["aclmdlGetAippDataSize"](0, size) == 100000
    assert C["aclmdlGetAippDataSize"](1, ffi.NULL) == 100000
    assert C["aclmdlUnload"](model_id[0]) == 0
    assert C["aclrtResetDevice"](0) == 0


# --------------------------------------------------------------------------------------------
# the C-only model calls: sizes and the caller's memory


def test_query_size_and_load_with_the_callers_memory(session, ffi, tmp_path):
    assert C["aclrtSetDevice"](0) == 0
    path = ffi.new("char[]", ADD_MODEL.encode())
    work, weight = _out(ffi, "size_t"), _out(ffi, "size_t")
    assert C["aclmdlQuerySize"](path, work, weight) == 0
    assert work[0] == 3 * NBYTES and weight[0] == 32  # feature maps; no weights: the minimum
    blob = (MODELS / "add.toml").read_bytes()
    from_mem = (_out(ffi, "size_t"), _out(ffi, "size_t"))
    assert C["aclmdlQuerySizeFromMem"](ffi.from_buffer(blob), len(blob), *from_mem) == 0
    assert (from_mem[0][0], from_mem[1][0]) == (work[0], weight[0])
    missing = ffi.new("char[]", str(tmp_path / "missing.om").encode())
    assert C["aclmdlQuerySize"](missing, work, weight) == 145002

    work_ptr, weight_ptr = ffi.new("void **"), ffi.new("void **")
    assert C["aclrtMalloc"](work_ptr, work[0], 0) == 0
    assert C["aclrtMalloc"](weight_ptr, weight[0], 0) == 0
    model_id = _out(ffi, "uint32_t")
    load = C["aclmdlLoadFromFileWithMem"]
    assert load(path, model_id, work_ptr[0], work[0] - 1, weight_ptr[0], weight[0]) == 145000
    host = ffi.new("char[]", work[0])
    assert load(path, model_id, host, work[0], weight_ptr[0], weight[0]) == 107000
    assert load(path, model_id, work_ptr[0], work[0], weight_ptr[0], weight[0]) == 0
    assert C["aclmdlUnload"](model_id[0]) == 0
    assert load(path, model_id, ffi.NULL, 0, ffi.NULL, 0) == 0  # the runtime's own memory
    assert C["aclmdlUnload"](model_id[0]) == 0
    load_mem = C["aclmdlLoadFromMemWithMem"]
    data = ffi.from_buffer(blob)
    assert load_mem(data, len(blob), model_id, work_ptr[0], work[0], ffi.NULL, 0) == 0
    assert C["aclmdlUnload"](model_id[0]) == 0
    assert C["aclrtFree"](work_ptr[0]) == 0 and C["aclrtFree"](weight_ptr[0]) == 0
    assert C["aclrtResetDevice"](0) == 0


# --------------------------------------------------------------------------------------------
# aclInit and its configuration file


def test_acl_init_configuration_files(farm, ffi, monkeypatch, tmp_path):
    monkeypatch.setenv("NPUFARM_ADDRESS", farm.address)
    empty_object, not_json = tmp_path / "acl.json", tmp_path / "bad.json"
    empty_object.write_text("{}")
    not_json.write_text("{ dump: ")
    init = C["aclInit"]
    assert init(ffi.new("char[]", str(tmp_path / "missing.json").encode())) == 100003
    assert init(ffi.new("char[]", str(not_json).encode())) == 100006
    assert "not JSON" in _text(ffi, C["aclGetRecentErrMsg"]())
    assert init(ffi.new("char[]", str(tmp_path).encode())) == 100003  # a directory
    assert RUNTIME.session is None  # no failed init started anything
    assert init(ffi.new("char[]", str(empty_object).encode())) == 0
    assert init(ffi.new("char[]", str(not_json).encode())) == 100002  # before the file
    assert C["aclFinalize"]() == 0
    assert C["aclFinalize"]() == 100037
    assert init(ffi.new("char[]", b"")) == 0
    assert C["aclFinalize"]() == 0


# --------------------------------------------------------------------------------------------
# float16 helpers against numpy


def test_float16_round_trips_match_numpy(ffi):
    values = np.random.default_rng(5).standard_normal(4096).astype(np.float32) * 1000
    halves = values.astype(np.float16)
    for value, half in zip(values.tolist(), halves.view(np.uint16).tolist()):
        assert C["aclFloatToFloat16"](value) == half
        assert C["aclFloat16ToFloat"](half) == float(np.uint16(half).view(np.float16))
