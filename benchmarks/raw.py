"""Raw baselines for the npufarm benchmark, measured in the same run as the farm figures.

``benchmarks.core`` divides its figures by these numbers, so they describe what the bare machinery
can do on this box with no farm logic in the way:

* :func:`raw_echo_rate` - pipelined 3-hop echo (client -> broker -> worker -> broker -> client)
  through a minimal Python ROUTER/ROUTER broker that routes by a device-id frame, like the farm's
  broker, with ``in_flight`` messages outstanding and optionally ``batch`` tasks per message.
* :func:`raw_rtt` / :func:`raw_direct_rtt` - one-at-a-time round trip through the same broker, and
  straight to an echo process (1 hop each way) for context.
* :func:`raw_copy_rate` - warm ``np.copyto`` between host memory and a ``/dev/shm`` mapping.
* :func:`process_cpu_percent` / :func:`idle_process_cpu` - CPU use of a pid from ``/proc``.

The echo helpers live in :mod:`benchmarks.raw_rig`: :class:`EchoRig` owns one broker+worker (or
one direct echo process) and can be passed to several measurements to pay the start-up cost once.
Shm files of the copy measurement are removed, also on errors.

Run ``python -m benchmarks.raw [--quick] [--out FILE]`` to print all baselines as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from benchmarks.raw_rig import CMD_REPLY, SHM_PREFIX, EchoRig

__all__ = [
    "MIB",
    "SHM_DIR",
    "SHM_PREFIX",
    "EchoRig",
    "collect_baselines",
    "idle_process_cpu",
    "main",
    "process_cpu_percent",
    "raw_copy_rate",
    "raw_direct_rtt",
    "raw_echo_rate",
    "raw_rtt",
]

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
MIB = 1 << 20

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ECHO_CONFIGS = ((1, 1), (16, 1), (64, 1), (16, 16), (64, 16))


# --------------------------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) in seconds, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    fields = data.rpartition(b")")[2].split()  # comm may contain spaces and ')'
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of proc(5)


def _cpu_percents(pids: Iterable[int], window_s: float) -> list[float]:
    pids = list(pids)
    if window_s <= 0:
        raise ValueError("window_s must be > 0")
    before = [_cpu_seconds(pid) for pid in pids]
    t0 = time.perf_counter()
    time.sleep(window_s)
    after = [_cpu_seconds(pid) for pid in pids]
    elapsed = time.perf_counter() - t0
    return [100.0 * (b - a) / elapsed for a, b in zip(before, after)]


def process_cpu_percent(pid: int, window_s: float) -> float:
    """CPU used by ``pid`` over the next ``window_s`` seconds, in percent of one core.

    Resolution is one clock tick (usually 10 ms) over the window. Raises ProcessLookupError if
    the process does not exist.
    """
    return _cpu_percents([pid], window_s)[0]


def idle_process_cpu(seconds: float = 2.0, *, rig: EchoRig | None = None) -> dict[str, Any]:
    """CPU burned by an idle broker and an idle echo worker over ``seconds`` (same window)."""
    if rig is None:
        with EchoRig() as own:
            return idle_process_cpu(seconds, rig=own)
    _require(rig, direct=False)
    roles = sorted(rig.pids)
    percents = _cpu_percents([rig.pids[r] for r in roles], seconds)
    out: dict[str, Any] = {"seconds": seconds, "clock_ticks_per_s": _CLK_TCK}
    for role, pct in zip(roles, percents):
        out[f"{role}_cpu_percent"] = round(pct, 2)
    return out


# --------------------------------------------------------------------------------------------
# echo measurements
# --------------------------------------------------------------------------------------------


def _task(task_id: int) -> dict[str, int]:
    return {"task_id": task_id, "stream": 1, "model": 1, "device": 0, "epoch": 1}


def _require(rig: EchoRig, direct: bool) -> None:
    if rig.direct != direct:
        kind = "a direct" if direct else "a brokered"
        raise ValueError(f"this measurement needs {kind} EchoRig")


def _payload_maker(batch: int) -> Callable[[], bytes]:
    """A maker of msgpack payloads: one task map, or a list of ``batch`` maps; fresh ids each."""
    packb = msgpack.packb
    next_id = 0

    def make() -> bytes:
        nonlocal next_id
        if batch == 1:
            obj: Any = _task(next_id)
        else:
            obj = [_task(next_id + k) for k in range(batch)]
        next_id += batch
        return packb(obj, use_bin_type=True)

    return make


@dataclass
class _EchoWindow:
    """Both ends of a measured echo window: time, replies so far, CPU seconds of each pid."""

    t0: float
    t1: float
    n0: int
    n1: int
    cpu0: list[float] = field(default_factory=list)
    cpu1: list[float] = field(default_factory=list)


def _pump_echoes(
    rig: EchoRig,
    in_flight: int,
    batch: int,
    make: Callable[[], bytes],
    pids: list[int],
    window: tuple[float, float],
) -> _EchoWindow:
    """Keep ``in_flight`` messages outstanding; mark the ``(warmup_s, duration_s)`` window at the
    first reply past each end; then stop sending and drain what is still outstanding."""
    unpackb = msgpack.unpackb
    for _ in range(in_flight):
        rig.send(make())
    outstanding = in_flight
    done = 0
    t_measure = time.perf_counter() + window[0]
    t_stop = t_measure + window[1]
    t0 = t1 = 0.0
    n0 = n1 = 0
    cpu0: list[float] = []
    cpu1: list[float] = []
    while outstanding:
        cmd, payload = rig.recv()
        outstanding -= 1
        if cmd != CMD_REPLY:
            raise RuntimeError(f"unexpected reply command {cmd!r}")
        tasks = unpackb(payload, raw=False)
        if (len(tasks) if batch > 1 else 1) != batch:
            raise RuntimeError("echo returned a different batch")
        done += 1
        now = time.perf_counter()
        if not cpu0:
            if now >= t_measure:
                t0, n0, cpu0 = now, done, [_cpu_seconds(p) for p in pids]
        elif not cpu1 and now >= t_stop:
            t1, n1, cpu1 = now, done, [_cpu_seconds(p) for p in pids]
        if not cpu1:
            rig.send(make())
            outstanding += 1
    return _EchoWindow(t0, t1, n0, n1, cpu0, cpu1)


def raw_echo_rate(
    in_flight: int,
    duration_s: float = 1.0,
    batch: int = 1,
    *,
    warmup_s: float | None = None,
    rig: EchoRig | None = None,
) -> dict[str, Any]:
    """Pipelined 3-hop echo rate with ``in_flight`` messages outstanding.

    Each message carries one msgpack task map (~40 bytes) or, with ``batch`` > 1, a list of
    ``batch`` maps; ``tasks_per_s`` counts tasks, ``msgs_per_s`` messages. The window starts at the
    first reply after ``warmup_s`` (default ``min(0.2, duration_s / 2)``) and ends at the first
    reply after ``duration_s`` more; outstanding messages are then drained. Extra keys: broker and
    worker CPU over the window, and broker CPU microseconds per message (one message = one
    client->worker forward plus one worker->client forward).
    """
    if in_flight < 1 or batch < 1:
        raise ValueError("in_flight and batch must be >= 1")
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    if rig is None:
        with EchoRig() as own:
            return raw_echo_rate(in_flight, duration_s, batch, warmup_s=warmup_s, rig=own)
    _require(rig, direct=False)
    if warmup_s is None:
        warmup_s = min(0.2, duration_s / 2)
    make = _payload_maker(batch)
    payload_bytes = len(make())
    pids = [rig.pids["broker"], rig.pids["worker"], os.getpid()]
    w = _pump_echoes(rig, in_flight, batch, make, pids, (warmup_s, duration_s))
    window = w.t1 - w.t0
    msgs = w.n1 - w.n0
    broker_cpu, worker_cpu, client_cpu = (b - a for a, b in zip(w.cpu0, w.cpu1))
    return {
        "in_flight": in_flight,
        "batch": batch,
        "duration_s": round(window, 4),
        "round_trips": msgs,
        "tasks_per_s": round(msgs * batch / window, 1),
        "msgs_per_s": round(msgs / window, 1),
        "payload_bytes": payload_bytes,
        "broker_cpu_percent": round(100.0 * broker_cpu / window, 1),
        "worker_cpu_percent": round(100.0 * worker_cpu / window, 1),
        "client_cpu_percent": round(100.0 * client_cpu / window, 1),
        "broker_cpu_us_per_round_trip": round(1e6 * broker_cpu / msgs, 2) if msgs else None,
    }


def _rtt(rig: EchoRig, samples: int, warmup: int | None) -> dict[str, Any]:
    if samples < 1:
        raise ValueError("samples must be >= 1")
    if warmup is None:
        warmup = max(20, samples // 10)
    packb = msgpack.packb
    times = np.empty(samples, dtype=np.float64)
    for i in range(-warmup, samples):
        payload = packb(_task(i), use_bin_type=True)
        t = time.perf_counter()
        rig.send(payload)
        cmd, _ = rig.recv()
        dt = time.perf_counter() - t
        if cmd != CMD_REPLY:
            raise RuntimeError(f"unexpected reply command {cmd!r}")
        if i >= 0:
            times[i] = dt
    us = times * 1e6
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {
        "samples": samples,
        "hops": 1 if rig.direct else 3,
        "p50_us": round(float(p50), 1),
        "p90_us": round(float(p90), 1),
        "p99_us": round(float(p99), 1),
        "mean_us": round(float(us.mean()), 1),
        "min_us": round(float(us.min()), 1),
        "max_us": round(float(us.max()), 1),
    }


def raw_rtt(
    samples: int = 2000, *, warmup: int | None = None, rig: EchoRig | None = None
) -> dict[str, Any]:
    """One-at-a-time 3-hop round trip (client -> broker -> worker and back), microseconds."""
    if rig is None:
        with EchoRig() as own:
            return raw_rtt(samples, warmup=warmup, rig=own)
    _require(rig, direct=False)
    return _rtt(rig, samples, warmup)


def raw_direct_rtt(
    samples: int = 2000, *, warmup: int | None = None, rig: EchoRig | None = None
) -> dict[str, Any]:
    """One-at-a-time round trip straight to an echo process (1 hop each way), microseconds."""
    if rig is None:
        with EchoRig(direct=True) as own:
            return raw_direct_rtt(samples, warmup=warmup, rig=own)
    _require(rig, direct=True)
    return _rtt(rig, samples, warmup)


# --------------------------------------------------------------------------------------------
# copy rate
# --------------------------------------------------------------------------------------------


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def _measure_copies(mm: mmap.mmap, size_bytes: int, repeats: int) -> dict[str, Any]:
    host_src = np.full(size_bytes, 0x5A, dtype=np.uint8)  # touched
    host_dst = np.zeros(size_bytes, dtype=np.uint8)
    host_dst.fill(1)  # np.zeros may hand out untouched pages; make them resident
    shm = np.frombuffer(mm, dtype=np.uint8)
    try:
        t = time.perf_counter()
        np.copyto(shm, host_src)  # first write: page faults on fresh shm pages
        cold = _gbps(size_bytes, time.perf_counter() - t)
        if shm[0] != 0x5A or shm[-1] != 0x5A:
            raise RuntimeError("shm copy verification failed")
        np.copyto(host_dst, shm)  # warm the other direction too
        # Small copies are repeated inside one timed sample so that timer overhead is noise.
        inner = max(1, min(64, (64 * MIB) // size_bytes))
        h2s: list[float] = []
        s2h: list[float] = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                np.copyto(shm, host_src)
            h2s.append(_gbps(size_bytes * inner, time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(inner):
                np.copyto(host_dst, shm)
            s2h.append(_gbps(size_bytes * inner, time.perf_counter() - t))
    finally:
        del shm  # release the buffer export even if a traceback keeps this frame alive
    return {
        "size_bytes": size_bytes,
        "repeats": repeats,
        "inner": inner,
        "host_to_shm_gbps_best": round(max(h2s), 2),
        "host_to_shm_gbps_median": round(float(np.median(h2s)), 2),
        "shm_to_host_gbps_best": round(max(s2h), 2),
        "shm_to_host_gbps_median": round(float(np.median(s2h)), 2),
        "cold_host_to_shm_gbps": round(cold, 2),
    }


def raw_copy_rate(size_bytes: int, repeats: int = 5) -> dict[str, Any]:
    """Warm ``np.copyto`` rate between a host ndarray and a view on a /dev/shm mapping.

    GB/s means 1e9 bytes per second. Each of the ``repeats`` samples times ``inner`` back-to-back
    copies (64 for 1 MiB, 1 for >= 64 MiB). ``cold_host_to_shm_gbps`` is the single first write
    into the fresh mapping (page faults included), for contrast.
    """
    if size_bytes < 1 or repeats < 1:
        raise ValueError("size_bytes and repeats must be >= 1")
    st = os.statvfs(SHM_DIR)
    if st.f_bavail * st.f_frsize < size_bytes:  # a short tmpfs would SIGBUS on first touch
        raise OSError(f"{SHM_DIR} has less than {size_bytes} bytes free")
    path = os.path.join(SHM_DIR, f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        mm = None
        try:
            os.ftruncate(fd, size_bytes)
            mm = mmap.mmap(fd, size_bytes)
            return _measure_copies(mm, size_bytes, repeats)
        finally:
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    log.warning("raw bench: shm mapping still exported; left to the GC")
            os.close(fd)
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------------------------
# all baselines + CLI
# --------------------------------------------------------------------------------------------


def collect_baselines(quick: bool = False) -> dict[str, Any]:
    """Measure every baseline; ``quick`` shortens windows and skips the 256 MiB copy.

    Keys: ``echo`` (by ``"if<in_flight>_b<batch>"``), ``rtt``, ``direct_rtt``, ``copy`` (by
    ``"<n>MiB"``), ``idle_cpu``, plus ``host``, ``quick`` and ``elapsed_s``.
    """
    started = time.perf_counter()
    duration = 0.5 if quick else 1.0
    samples = 1000 if quick else 2000
    idle_s = 1.0 if quick else 2.0
    sizes_mib = (1, 16) if quick else (1, 16, 256)
    out: dict[str, Any] = {
        "quick": quick,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
        },
    }
    with EchoRig() as rig:
        out["idle_cpu"] = idle_process_cpu(idle_s, rig=rig)  # first, while still idle
        out["rtt"] = raw_rtt(samples, rig=rig)
        out["echo"] = {
            f"if{n}_b{b}": raw_echo_rate(n, duration, b, rig=rig) for n, b in _ECHO_CONFIGS
        }
    with EchoRig(direct=True) as rig:
        out["direct_rtt"] = raw_direct_rtt(samples, rig=rig)
    out["copy"] = {f"{mib}MiB": raw_copy_rate(mib * MIB) for mib in sizes_mib}
    out["elapsed_s"] = round(time.perf_counter() - started, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.raw", description="Print npufarm raw baselines as JSON."
    )
    parser.add_argument("--quick", action="store_true", help="short windows, 1/16 MiB copies")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    text = json.dumps(collect_baselines(quick=args.quick), indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
