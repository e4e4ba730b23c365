"""Real data flow through a real farm: host bytes in, card-computed bytes out."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from device.models import load_model_file, reference
from tests.system.conftest import MODELS, REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

H2D, D2H, D2D = 1, 2, 3


class Runner:
    """The classic pyACL inference structure, for one model on the current device."""

    def __init__(self, acl, model_path, stream):
        self.acl = acl
        self.stream = stream
        self.model_id, ret = acl.mdl.load_from_file(str(model_path))
        assert ret == 0
        self.desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(self.desc, self.model_id) == 0
        self.inputs = self._dataset(acl.mdl.get_num_inputs(self.desc), True)
        self.outputs = self._dataset(acl.mdl.get_num_outputs(self.desc), False)

    def _dataset(self, count, is_input):
        acl = self.acl
        size_of = acl.mdl.get_input_size_by_index if is_input else acl.mdl.get_output_size_by_index
        dataset = acl.mdl.create_dataset()
        ptrs = []
        for i in range(count):
            size = size_of(self.desc, i)
            ptr, ret = acl.rt.malloc(size, 0)
            assert ret == 0
            _, ret = acl.mdl.add_dataset_buffer(dataset, acl.create_data_buffer(ptr, size))
            assert ret == 0
            ptrs.append((ptr, size))
        return dataset, ptrs

    def write_inputs(self, arrays):
        for (ptr, size), array in zip(self.inputs[1], arrays):
            assert array.nbytes == size
            host = np.ascontiguousarray(array)
            ret = self.acl.rt.memcpy(ptr, size, self.acl.util.numpy_to_ptr(host), size, H2D)
            assert ret == 0

    def read_output(self, index, dtype=np.float32):
        ptr, size = self.outputs[1][index]
        host = np.empty(size // np.dtype(dtype).itemsize, dtype)
        assert self.acl.rt.memcpy(self.acl.util.numpy_to_ptr(host), size, ptr, size, D2H) == 0
        return host

    def execute_async(self):
        return self.acl.mdl.execute_async(
            self.model_id, self.inputs[0], self.outputs[0], self.stream
        )

    def close(self):
        acl = self.acl
        for dataset, ptrs in (self.inputs, self.outputs):
            for i in range(acl.mdl.get_dataset_num_buffers(dataset)):
                assert acl.destroy_data_buffer(acl.mdl.get_dataset_buffer(dataset, i)) == 0
            assert acl.mdl.destroy_dataset(dataset) == 0
            for ptr, _ in ptrs:
                assert acl.rt.free(ptr) == 0
        assert acl.mdl.destroy_desc(self.desc) == 0
        assert acl.mdl.unload(self.model_id) == 0


def _inputs(spec, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(t.shape).astype(t.np_dtype) for t in spec.inputs]


def test_matmul_on_every_card_matches_reference(farm, acl_on):
    spec = load_model_file(MODELS / "matmul.toml")
    with acl_on(farm) as acl:
        count, ret = acl.rt.get_device_count()
        assert (count, ret) == (2, 0)
        for device_id in range(count):
            assert acl.rt.set_device(device_id) == 0
            stream, ret = acl.rt.create_stream()
            assert ret == 0
            runner = Runner(acl, MODELS / "matmul.toml", stream)
            x = _inputs(spec, device_id)
            runner.write_inputs(x)
            assert runner.execute_async() == 0
            assert acl.rt.synchronize_stream(stream) == 0
            expected = reference(spec, x)[0].ravel()
            np.testing.assert_allclose(runner.read_output(0), expected, rtol=1e-5, atol=1e-5)
            runner.close()
            assert acl.rt.destroy_stream(stream) == 0
            assert acl.rt.reset_device(device_id) == 0


def test_threads_one_per_device_many_tasks(farm, acl_on):
    """pyACL style: one host thread per device, each with its own context and stream."""
    spec = load_model_file(MODELS / "add.toml")
    errors: list[str] = []

    def worker(acl, device_id, thread_index):
        try:
            assert acl.rt.set_device(device_id) == 0
            context, ret = acl.rt.create_context(device_id)
            assert ret == 0
            stream, ret = acl.rt.create_stream()
            assert ret == 0
            runner = Runner(acl, MODELS / "add.toml", stream)
            for step in range(25):
                x = _inputs(spec, 1000 * thread_index + step)
                runner.write_inputs(x)
                assert runner.execute_async() == 0
                assert acl.rt.synchronize_stream(stream) == 0
                np.testing.assert_allclose(runner.read_output(0), (x[0] + x[1]).ravel())
            runner.close()
            assert acl.rt.destroy_stream(stream) == 0
            assert acl.rt.destroy_context(context) == 0
            assert acl.rt.reset_device(device_id) == 0
        except BaseException as exc:  # surfaced in the main thread
            errors.append(f"thread {thread_index} device {device_id}: {exc!r}")

    with acl_on(farm) as acl:
        threads = [
            threading.Thread(target=worker, args=(acl, i % 2, i)) for i in range(4)
        ]  # two threads per card
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=50)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors


_CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import acl
from device.models import load_model_file, reference

model = sys.argv[1]; seed = int(sys.argv[2])
spec = load_model_file(model)
assert acl.init() == 0
results = []
for device_id in range(acl.rt.get_device_count()[0]):
    assert acl.rt.set_device(device_id) == 0
    stream, ret = acl.rt.create_stream()
    model_id, ret = acl.mdl.load_from_file(model); assert ret == 0
    desc = acl.mdl.create_desc(); acl.mdl.get_desc(desc, model_id)
    nin = acl.mdl.get_input_size_by_index(desc, 0); nout = acl.mdl.get_output_size_by_index(desc, 0)
    din, _ = acl.rt.malloc(nin, 0); dout, _ = acl.rt.malloc(nout, 0)
    ins = acl.mdl.create_dataset(); outs = acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(ins, acl.create_data_buffer(din, nin))
    acl.mdl.add_dataset_buffer(outs, acl.create_data_buffer(dout, nout))
    for step in range(20):
        x = np.random.default_rng(seed * 100 + step).standard_normal((1, 256)).astype(np.float32)
        acl.rt.memcpy(din, nin, acl.util.numpy_to_ptr(x), nin, 1)
        assert acl.mdl.execute_async(model_id, ins, outs, stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        y = np.empty((1, 256), np.float32)
        acl.rt.memcpy(acl.util.numpy_to_ptr(y), nout, dout, nout, 2)
        results.append(bool(np.allclose(y, reference(spec, [x])[0], atol=1e-5)))
    assert acl.rt.reset_device(device_id) == 0
assert acl.finalize() == 0
print(json.dumps({"ok": all(results), "n": len(results)}))
"""


def test_two_client_processes_share_the_farm(farm):
    env = {"NPUFARM_ADDRESS": farm.address, "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLIENT_SCRIPT, str(MODELS / "matmul.toml"), str(seed)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=50) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"ok": True, "n": 40}


def test_async_copies_events_and_memset(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(1) == 0
        stream_a, _ = acl.rt.create_stream()
        stream_b, _ = acl.rt.create_stream()
        n = 1 << 16
        host_in, ret = acl.rt.malloc_host(n)
        assert ret == 0
        host_out, _ = acl.rt.malloc_host(n)
        src = acl.util.ptr_to_numpy(host_in, (n,), 2)
        src[:] = np.arange(n, dtype=np.uint64).astype(np.uint8)
        dev_a, _ = acl.rt.malloc(n, 0)
        dev_b, _ = acl.rt.malloc(n, 0)
        event, ret = acl.rt.create_event()
        assert ret == 0
        assert acl.rt.query_event_status(event) == (1, 0)  # never recorded: complete
        # A: pinned host -> device A, record; B waits for the event, copies A -> B -> host
        assert acl.rt.memcpy_async(dev_a, n, host_in, n, H2D, stream_a) == 0
        assert acl.rt.record_event(event, stream_a) == 0
        assert acl.rt.stream_wait_event(stream_b, event) == 0
        assert acl.rt.memcpy_async(dev_b, n, dev_a, n, D2D, stream_b) == 0
        assert acl.rt.memcpy_async(host_out, n, dev_b, n, D2H, stream_b) == 0
        assert acl.rt.synchronize_event(event) == 0
        assert acl.rt.query_event_status(event) == (1, 0)
        assert acl.rt.synchronize_stream(stream_b) == 0
        assert np.array_equal(acl.util.ptr_to_numpy(host_out, (n,), 2), src)
        # memset (sync) and memset_async
        assert acl.rt.memset(dev_a, n, 7, n) == 0
        assert acl.rt.memset_async(dev_b, n, 9, n // 2, stream_b) == 0
        assert acl.rt.synchronize_stream(stream_b) == 0
        out = np.empty(n, np.uint8)
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, dev_a, n, D2H) == 0
        assert (out == 7).all()
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, dev_b, n, D2H) == 0
        assert (out[: n // 2] == 9).all() and np.array_equal(out[n // 2 :], src[n // 2 :])
        # pageable host memory with memcpy_async completes before the call returns
        pageable = np.full(n, 3, np.uint8)
        assert acl.rt.memcpy_async(dev_a, n, acl.util.numpy_to_ptr(pageable), n, H2D, 0) == 0
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, dev_a, n, D2H) == 0
        assert (out == 3).all()
        assert acl.rt.destroy_event(event) == 0
        for ptr in (dev_a, dev_b):
            assert acl.rt.free(ptr) == 0
        assert acl.rt.free_host(host_in) == 0
        assert acl.rt.free_host(host_out) == 0
        assert acl.rt.synchronize_device() == 0
        assert acl.rt.reset_device(1) == 0


def test_mem_info_and_out_of_memory(farm, acl_on):
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        free_before, total, ret = acl.rt.get_mem_info(1)
        assert ret == 0 and total == 256 << 20 and free_before <= total
        ptr, ret = acl.rt.malloc(64 << 20, 0)
        assert ret == 0
        free_after, _, _ = acl.rt.get_mem_info(1)
        assert free_before - free_after >= 64 << 20
        assert acl.rt.malloc(total, 0) == (0, 207001)  # beyond HBM: clear code, no SIGBUS
        assert acl.rt.free(ptr) == 0
        ptr, ret = acl.rt.malloc(128 << 20, 0)  # the farm is still healthy
        assert ret == 0 and acl.rt.free(ptr) == 0
        assert acl.rt.reset_device(0) == 0


def test_sync_execute_and_classifier(farm, acl_on):
    spec = load_model_file(MODELS / "classifier.toml")
    with acl_on(farm) as acl:
        assert acl.rt.set_device(0) == 0
        runner = Runner(acl, MODELS / "classifier.toml", 0)
        x = _inputs(spec, 5)
        runner.write_inputs(x)
        assert acl.mdl.execute(runner.model_id, runner.inputs[0], runner.outputs[0]) == 0
        scores = runner.read_output(0)
        assert scores.shape == (1000,)
        np.testing.assert_allclose(scores.sum(), 1.0, rtol=1e-4)
        np.testing.assert_allclose(scores, reference(spec, x)[0].ravel(), rtol=1e-4, atol=1e-6)
        runner.close()
        assert acl.rt.reset_device(0) == 0
