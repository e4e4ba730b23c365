"""The Python half of :mod:`benchmarks.cabi`: the pyACL twin of ``benchmarks/cabi_bench.c``.

``python -m benchmarks.cabi_pyside MODEL COPY_ITERS EXEC_ITERS WARMUP REPEATS BIG_BYTES`` makes
the C program's calls through ``import acl``, in the same order with the same warm-up, and
prints the same JSON object (per-sample seconds) on stdout. It runs in a process of its own, so
neither side pays for the other's interpreter, and finds the farm through ``NPUFARM_ADDRESS``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

import acl

__all__ = ["SMALL_BYTES", "inner_copies", "main", "measure"]

SMALL_BYTES = 4096
MIB = 1 << 20
H2D, D2H = 1, 2
HUGE_FIRST = 0


def inner_copies(big_bytes: int) -> int:
    """Copies per timed sample, as ``benchmarks.raw.raw_copy_rate`` repeats them."""
    return max(1, min(64, (64 * MIB) // big_bytes))


def _ok(result: Any, what: str) -> Any:
    """The value of a pyACL ``(value, ret)`` tuple or a bare ``ret``; exits unless ret is 0."""
    *values, ret = result if isinstance(result, tuple) else (result,)
    if ret != 0:
        sys.exit(f"{what} failed: {ret}")
    return values[0] if values else None


def _small_copies(iters: int, warmup: int) -> list[float]:
    host = np.full(SMALL_BYTES, 0x5A, dtype=np.uint8)
    device = _ok(acl.rt.malloc(SMALL_BYTES, HUGE_FIRST), "malloc")
    memcpy, ptr, clock = acl.rt.memcpy, acl.util.numpy_to_ptr(host), time.perf_counter
    out = [0.0] * iters
    for i in range(-warmup, iters):
        t = clock()
        ret = memcpy(device, SMALL_BYTES, ptr, SMALL_BYTES, H2D)
        dt = clock() - t
        if ret:
            _ok(ret, "memcpy")
        if i >= 0:
            out[i] = dt
    _ok(acl.rt.free(device), "free")
    return out


def _dataset(device: int, size: int) -> int:
    dataset = acl.mdl.create_dataset()
    _ok(acl.mdl.add_dataset_buffer(dataset, acl.create_data_buffer(device, size)), "add buffer")
    return dataset


def _destroy_dataset(dataset: int) -> None:
    _ok(acl.destroy_data_buffer(acl.mdl.get_dataset_buffer(dataset, 0)), "destroy buffer")
    _ok(acl.mdl.destroy_dataset(dataset), "destroy_dataset")


def _exec_sync(iters: int, warmup: int, model_path: str) -> list[float]:
    stream = _ok(acl.rt.create_stream(), "create_stream")
    model = _ok(acl.mdl.load_from_file(model_path), "load_from_file")
    desc = acl.mdl.create_desc()
    _ok(acl.mdl.get_desc(desc, model), "get_desc")
    in_size = acl.mdl.get_input_size_by_index(desc, 0)
    out_size = acl.mdl.get_output_size_by_index(desc, 0)
    devices = [_ok(acl.rt.malloc(size, HUGE_FIRST), "malloc") for size in (in_size, out_size)]
    inputs, outputs = _dataset(devices[0], in_size), _dataset(devices[1], out_size)
    execute, sync, clock = acl.mdl.execute_async, acl.rt.synchronize_stream, time.perf_counter
    out = [0.0] * iters
    for i in range(-warmup, iters):
        t = clock()
        ret = execute(model, inputs, outputs, stream)
        ret2 = sync(stream)
        dt = clock() - t
        if ret or ret2:
            _ok(ret or ret2, "execute_async/synchronize_stream")
        if i >= 0:
            out[i] = dt
    for dataset in (inputs, outputs):
        _destroy_dataset(dataset)
    for device in devices:
        _ok(acl.rt.free(device), "free")
    _ok(acl.mdl.destroy_desc(desc), "destroy_desc")
    _ok(acl.mdl.unload(model), "unload")
    _ok(acl.rt.destroy_stream(stream), "destroy_stream")
    return out


def _big_copies(repeats: int, inner: int, size: int) -> tuple[list[float], list[float]]:
    src = np.full(size, 0x5A, dtype=np.uint8)
    dst = np.ones(size, dtype=np.uint8)  # resident pages, as the C side's memset buffers
    psrc, pdst = acl.util.numpy_to_ptr(src), acl.util.numpy_to_ptr(dst)
    device = _ok(acl.rt.malloc(size, HUGE_FIRST), "malloc")
    memcpy, clock = acl.rt.memcpy, time.perf_counter
    _ok(memcpy(device, size, psrc, size, H2D), "memcpy H2D")
    _ok(memcpy(pdst, size, device, size, D2H), "memcpy D2H")
    if dst[0] != 0x5A or dst[-1] != 0x5A:
        sys.exit("memcpy round trip returned the wrong bytes")
    h2d, d2h = [], []
    for _ in range(repeats):
        t = clock()
        for _ in range(inner):
            _ok(memcpy(device, size, psrc, size, H2D), "memcpy H2D")
        h2d.append(clock() - t)
        t = clock()
        for _ in range(inner):
            _ok(memcpy(pdst, size, device, size, D2H), "memcpy D2H")
        d2h.append(clock() - t)
    _ok(acl.rt.free(device), "free")
    return h2d, d2h


def measure(
    model: str, copy_iters: int, exec_iters: int, warmup: int, repeats: int, big_bytes: int
) -> dict[str, Any]:
    """One session: init, device 0 and a context, the three loops, then everything released."""
    inner = inner_copies(big_bytes)
    _ok(acl.init(), "acl.init")
    _ok(acl.rt.set_device(0), "set_device")
    context = _ok(acl.rt.create_context(0), "create_context")
    small = _small_copies(copy_iters, warmup)
    exec_sync = _exec_sync(exec_iters, warmup, model)
    h2d, d2h = _big_copies(repeats, inner, big_bytes)
    _ok(acl.rt.destroy_context(context), "destroy_context")
    _ok(acl.rt.reset_device(0), "reset_device")
    _ok(acl.finalize(), "acl.finalize")
    return {
        "side": "python",
        "small_bytes": SMALL_BYTES,
        "big_bytes": big_bytes,
        "inner": inner,
        "memcpy_small_h2d_s": small,
        "exec_sync_s": exec_sync,
        "memcpy_big_h2d_s": h2d,
        "memcpy_big_d2h_s": d2h,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 6:
        sys.exit(
            "usage: python -m benchmarks.cabi_pyside MODEL COPY_ITERS EXEC_ITERS WARMUP "
            "REPEATS BIG_BYTES"
        )
    model, *counts = args
    copy_iters, exec_iters, warmup, repeats, big_bytes = map(int, counts)
    print(json.dumps(measure(model, copy_iters, exec_iters, warmup, repeats, big_bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
