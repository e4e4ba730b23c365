"""Every wrong argument returns the ACL code real hardware returns, and the farm stays healthy."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from core import protocol as proto
from farm.admin import query_status
from tests.system.conftest import MODELS

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H = 1, 2


def test_calls_before_init_and_repeat_init_finalize(farm, monkeypatch):
    import acl

    monkeypatch.setenv("NPUFARM_ADDRESS", farm.address)
    assert acl.rt.set_device(0) == 100001
    assert acl.rt.malloc(64, 0) == (0, 100001)
    assert acl.rt.get_device_count() == (2, 0)  # discovery works before init, as on hardware
    assert acl.mdl.load_from_file(str(MODELS / "add.toml")) == (0, 100001)
    assert acl.init() == 0
    assert acl.init() == 100002
    assert acl.finalize() == 0
    assert acl.finalize() == 100037
    assert acl.init() == 0  # re-init after finalize is allowed
    assert acl.finalize() == 0


def test_init_reads_its_config_file_as_cann_does(farm, monkeypatch, tmp_path):
    """Same checks as the C aclInit: a missing path 100003, text that is not JSON 100006,
    ``{}`` and an empty file fine; a refused init leaves no session behind."""
    import acl

    monkeypatch.setenv("NPUFARM_ADDRESS", farm.address)
    (tmp_path / "bad.json").write_text("{ not json")
    (tmp_path / "empty.json").write_text("{}")
    assert acl.init(str(tmp_path / "missing.json")) == 100003
    assert acl.init(str(tmp_path / "bad.json")) == 100006
    assert acl.rt.malloc(64, 0) == (0, 100001)  # no session was started
    assert acl.init(str(tmp_path / "empty.json")) == 0
    assert acl.finalize() == 0


def test_device_and_context_misuse(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(2) == 107001
        assert acl.rt.set_device(-1) == 107001
        assert acl.rt.set_device("0") == 107001
        assert acl.rt.create_context(99) == (0, 107001)
        assert acl.rt.get_context() == (0, 107002)  # no set_device yet in this thread
        assert acl.rt.create_stream() == (0, 107002)
        assert acl.rt.malloc(64, 0) == (0, 107002)
        assert acl.rt.get_device() == (0, 107002)
        assert acl.rt.destroy_context(12345) == 100000
        assert acl.rt.set_context(12345) == 100000
        assert acl.rt.query_device_status(7) == (0, 107001)
        assert acl.rt.set_device(0) == 0
        assert acl.rt.get_device() == (0, 0)
        assert acl.rt.get_run_mode() == (1, 0)
        assert acl.rt.get_soc_name() == "Ascend910B"
        assert acl.rt.query_device_status(0) == (0, 0)
        assert acl.rt.reset_device(0) == 0


def test_stream_and_event_misuse(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, ret = acl.rt.create_stream()
        assert ret == 0
        assert acl.rt.synchronize_stream_with_timeout(stream, 0) == 107000
        assert acl.rt.synchronize_stream_with_timeout(stream, -2) == 107000
        assert acl.rt.synchronize_stream_with_timeout(stream, -1) == 0
        assert acl.rt.synchronize_stream_with_timeout(stream, 10) == 0
        assert acl.rt.destroy_stream(stream) == 0
        assert acl.rt.synchronize_stream(stream) == 107000  # destroyed handle
        assert acl.rt.destroy_stream(stream) == 107000
        assert acl.rt.synchronize_stream(0xDEAD) == 107000
        assert acl.rt.destroy_stream(0) == 107000  # the default stream is not destroyable
        event, ret = acl.rt.create_event()
        assert ret == 0
        assert acl.rt.synchronize_event_with_timeout(event, 0) == 107000
        assert acl.rt.synchronize_event_with_timeout(event, -5) == 107000
        assert acl.rt.record_event(event, 0xBAD) == 107000
        assert acl.rt.destroy_event(event) == 0
        assert acl.rt.destroy_event(event) == 107000
        assert acl.rt.record_event(event, 0) == 107000
        assert acl.rt.query_event_status(event) == (0, 107000)
        # a NULL event fails ACL's not-null check: 100000, like every NULL handle argument
        assert acl.rt.record_event(0, 0) == 100000
        assert acl.rt.synchronize_event(0) == 100000
        assert acl.rt.query_event_status(0) == (0, 100000)
        assert acl.rt.destroy_event(0) == 100000
        assert acl.rt.reset_device(0) == 0


def test_memory_misuse(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        assert acl.rt.malloc(0, 0) == (0, 100000)
        assert acl.rt.malloc(-4, 0) == (0, 100000)
        assert acl.rt.malloc("64", 0) == (0, 100000)
        ptr, ret = acl.rt.malloc(1000, 0)
        assert ret == 0 and ptr % 64 == 0
        host = np.zeros(4096, np.uint8)
        hp = acl.util.numpy_to_ptr(host)
        assert acl.rt.memcpy(ptr, 100, hp, 200, H2D) == 100000  # count > dst_max
        assert acl.rt.memcpy(ptr, 4096, hp, 4096, H2D) == 107000  # past the allocation
        assert acl.rt.memcpy(ptr + 512, 1000, hp, 1000, H2D) == 107000  # crosses the end
        assert acl.rt.memcpy(ptr, 1000, hp, 1000, 9) == 100000  # unknown kind
        assert acl.rt.memcpy(ptr, 1000, hp, 1000, D2H) == 107000  # kind vs addresses
        assert acl.rt.memcpy(0, 1000, hp, 1000, H2D) == 100000  # NULL
        assert acl.rt.memcpy(ptr, 1000, hp, 0, H2D) == 0  # count 0: a no-op
        assert acl.rt.memcpy(ptr, 1000, hp, 1000, 4) == 0  # DEFAULT: direction from addresses
        assert acl.rt.memset(ptr, 10, 1, 20) == 100000
        assert acl.rt.free(0) == 100000
        assert acl.rt.free(ptr + 64) == 107000  # interior pointer
        assert acl.rt.free(0x1234_5678) == 107000  # not a device pointer
        assert acl.rt.free(ptr) == 0
        assert acl.rt.free(ptr) == 107000  # double free
        assert acl.rt.memcpy(ptr, 1000, hp, 1000, H2D) == 107000  # use after free
        foreign = ptr ^ (1 << 48)  # the same offset on device 1: not ours
        assert acl.rt.memcpy(foreign, 1000, hp, 1000, H2D) == 107000
        assert acl.rt.free_host(hp) == 100000  # pageable memory is not malloc_host memory
        assert acl.rt.malloc_host(0) == (0, 100000)
        assert acl.rt.reset_device(0) == 0


def _model_session(acl):
    model_id, ret = acl.mdl.load_from_file(str(MODELS / "add.toml"))
    assert ret == 0
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    size = acl.mdl.get_input_size_by_index(desc, 0)
    ptrs = [acl.rt.malloc(size, 0)[0] for _ in range(3)]
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    for ptr in ptrs[:2]:
        acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(ptr, size))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(ptrs[2], size))
    return model_id, desc, size, ptrs, inputs, outputs


def test_model_misuse(farm, acl_on, tmp_path):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(1) == 0
        assert acl.mdl.load_from_file(str(tmp_path / "missing.toml")) == (0, 145002)
        assert acl.mdl.load_from_file(str(tmp_path)) == (0, 145002)  # a directory
        junk = tmp_path / "junk.om"
        junk.write_bytes(b"\x00\x01not a model at all")
        assert acl.mdl.load_from_file(str(junk)) == (0, 145006)
        assert acl.mdl.load_from_mem(0, 10) == (0, 100000)
        data = b"[model]\nname = 'x'\n"
        assert acl.mdl.load_from_mem(acl.util.bytes_to_ptr(data), len(data)) == (0, 145006)
        good = (MODELS / "identity.toml").read_bytes()
        model_mem, ret = acl.mdl.load_from_mem(acl.util.bytes_to_ptr(good), len(good))
        assert ret == 0
        assert acl.mdl.unload(model_mem) == 0
        assert acl.mdl.unload(model_mem) == 145003
        assert acl.mdl.unload(999) == 145003
        desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(desc, 999) == 145003
        model_id, desc, size, ptrs, inputs, outputs = _model_session(acl)
        stream, _ = acl.rt.create_stream()
        assert acl.mdl.execute_async(999, inputs, outputs, stream) == 145003
        short = acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(short, acl.create_data_buffer(ptrs[0], size))
        assert acl.mdl.execute_async(model_id, short, outputs, stream) == 100000
        small = acl.mdl.create_dataset()
        acl.mdl.add_dataset_buffer(small, acl.create_data_buffer(ptrs[2], size // 2))
        assert acl.mdl.execute_async(model_id, inputs, small, stream) == 100000
        assert acl.mdl.execute_async(model_id, 0xBAD, outputs, stream) == 100000
        assert acl.mdl.execute_async(model_id, inputs, outputs, 0xBAD) == 107000
        assert acl.mdl.execute_async_v2(model_id, inputs, outputs, stream, 0) == 100000
        cfg = acl.mdl.create_exec_config_handle()
        assert cfg != 0
        assert acl.mdl.set_exec_config_opt(cfg, 0, -2) == 100000
        assert acl.mdl.set_exec_config_opt(cfg, 5, 1) == 100000
        assert acl.mdl.set_exec_config_opt(cfg, 2, 0) == 100000  # 910B: work addr rejected
        assert acl.mdl.set_exec_config_opt(cfg, 0, 0) == 0  # accepted here ...
        assert acl.mdl.execute_async_v2(model_id, inputs, outputs, stream, cfg) == 0
        assert acl.rt.synchronize_stream(stream) == 107000  # ... but a sync with 0 fails
        assert acl.mdl.set_exec_config_opt(cfg, 0, 1000) == 0
        assert acl.mdl.execute_v2(model_id, inputs, outputs, stream, cfg) == 0
        # a freed buffer inside a dataset
        assert acl.rt.free(ptrs[2]) == 0
        assert acl.mdl.execute_async(model_id, inputs, outputs, stream) == 107000
        assert acl.mdl.destroy_exec_config_handle(cfg) == 0
        assert acl.mdl.execute_async_v2(model_id, inputs, outputs, stream, cfg) == 100000
        assert acl.rt.synchronize_stream(stream) == 0
        assert acl.rt.reset_device(1) == 0


def test_garbage_frames_do_not_hurt_the_farm(farm, acl_on):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(farm.address)
        route = proto.pack_route(0, farm.state["cards"][0]["epoch"])
        for frames in (
            [b"hello"],
            [b"", b"XXXX01", proto.Cmd.SUBMIT, route, b"\xc1"],
            [b"", proto.CLIENT_HEADER, b"\x7f", route, b""],
            [b"", proto.CLIENT_HEADER, proto.Cmd.SUBMIT, b"\x00", b""],
            [b"", proto.CLIENT_HEADER, proto.Cmd.SUBMIT, route, b"\xc1\xc1"],
            [b"", proto.CLIENT_HEADER, proto.Cmd.SUBMIT, route, proto.pack({"not": "a list"})],
            [b"", proto.CLIENT_HEADER, proto.Cmd.SUBMIT, route, proto.pack([{"t": "x"}, 5])],
            [b"", proto.CLIENT_HEADER, proto.Cmd.REQUEST, route, proto.pack({"op": "malloc"})],
            [b"", proto.CLIENT_HEADER, proto.Cmd.REQUEST, route, proto.pack([1, 2])],
            [b"", proto.CLIENT_HEADER, proto.Cmd.HELLO, b"\xff\xff\x00\x00", b"\xc1"],
        ):
            sock.send_multipart(frames)
        # a well-formed task with a bad pointer still ends with a code
        bad = [{"t": 1, "s": 1, "k": "exec", "m": 1, "i": [[12, 4]], "o": [[16, 4]]}]
        sock.send_multipart(proto.client_message(proto.Cmd.SUBMIT, route, proto.pack(bad)))
        replies = []
        while not replies or replies[-1].cmd != proto.Cmd.COMPLETE:
            assert sock.poll(5000), f"no completion; got {[r.cmd for r in replies]}"
            replies.append(proto.parse_client_message(sock.recv_multipart(), False))
        reply = replies[-1]
        assert {r.cmd for r in replies} <= {proto.Cmd.HELLO, proto.Cmd.REPLY, proto.Cmd.COMPLETE}
        rows = proto.unpack(reply.body)
        assert rows[0][0] == 1 and rows[0][1] != 0
    finally:
        sock.close(0)
        ctx.term()
    status = query_status(farm.address)
    assert [c["state"] for c in status["cards"]] == ["ready", "ready"]
    with acl_on(farm) as acl:  # and real work still flows
        assert acl.rt.set_device(0) == 0
        model_id, desc, size, ptrs, inputs, outputs = _model_session(acl)
        x = np.arange(size // 4, dtype=np.float32)
        for ptr in ptrs[:2]:
            assert acl.rt.memcpy(ptr, size, acl.util.numpy_to_ptr(x), size, H2D) == 0
        assert acl.mdl.execute(model_id, inputs, outputs) == 0
        y = np.empty_like(x)
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(y), size, ptrs[2], size, D2H) == 0
        np.testing.assert_array_equal(y, 2 * x)
        assert acl.rt.reset_device(0) == 0


def test_a_failing_settle_hook_never_strands_a_sync(farm, acl_on, monkeypatch):
    """Every submitted task ends: even if client-side bookkeeping of its completion fails, the
    task settles and the sync returns."""
    from client import RUNTIME

    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        stream, _ = acl.rt.create_stream()
        ptr, _ = acl.rt.malloc(64, 0)

        def broken(*args):
            raise RuntimeError("bookkeeping bug")

        monkeypatch.setattr(RUNTIME.state, "task_settled", broken)
        RUNTIME.session.on_settle = broken
        assert acl.rt.memset_async(ptr, 64, 1, 64, stream) == 0
        assert acl.rt.synchronize_stream_with_timeout(stream, 5000) == 0
        assert acl.rt.free(ptr) == 0
        assert acl.rt.destroy_stream(stream) == 0
        assert acl.rt.reset_device(0) == 0
