"""Farm probes measured one at a time: task latency, sync on a finished stream, memcpy rates,
start/stop time of a farm, and the idle CPU of its cards.

Latency and sync are timed against the raw 3-hop RTT, memcpy against a warm raw ``np.copyto``
into shm (:mod:`benchmarks.raw`); start and idle CPU each launch their own farm.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import numpy as np

from benchmarks import raw
from benchmarks.core_farm import (
    HEARTBEAT_S,
    MIB,
    BenchError,
    FarmProcess,
    Slot,
    acl_ok,
    acl_out,
    load_acl,
    shm_free,
)
from benchmarks.core_report import (
    IDLE_CPU_TARGET,
    LATENCY_RATIO_TARGET,
    MEMCPY_RATIO_TARGET,
    START_64_TARGET_S,
    SYNC_DONE_RATIO_TARGET,
    entry,
    p50_vs_rtt,
    ratio_of,
)

__all__ = [
    "measure_idle_cpu",
    "measure_latency",
    "measure_memcpy",
    "measure_start",
    "measure_sync_finished",
]

ACL_MEMCPY_H2D, ACL_MEMCPY_D2H = 1, 2


# --------------------------------------------------------------------------------------------
# latency, sync on a finished stream, memcpy
# --------------------------------------------------------------------------------------------


def measure_latency(slot: Slot, samples: int, raw_rtt: dict[str, Any] | None) -> dict[str, Any]:
    """One task at a time: execute_async + synchronize_stream, microseconds."""
    acl = load_acl()
    ex, sync = acl.mdl.execute_async, acl.rt.synchronize_stream
    acl_ok(acl.rt.set_context(slot.context), "set_context")
    warmup = max(50, samples // 10)
    times = np.empty(samples)
    clock = time.perf_counter
    for i in range(-warmup, samples):
        t = clock()
        ret = ex(slot.model, slot.inputs, slot.outputs, slot.stream)
        ret2 = sync(slot.stream)
        dt = clock() - t
        if ret or ret2:
            acl_ok(ret or ret2, "execute_async/synchronize_stream")
        if i >= 0:
            times[i] = dt
    return p50_vs_rtt(times, raw_rtt, LATENCY_RATIO_TARGET, "", samples)


def measure_sync_finished(
    slot: Slot, samples: int, raw_rtt: dict[str, Any] | None
) -> dict[str, Any]:
    """synchronize_stream on a stream whose tasks are all complete (no round trip expected)."""
    acl = load_acl()
    sync = acl.rt.synchronize_stream
    acl_ok(acl.rt.set_context(slot.context), "set_context")
    acl_ok(acl.mdl.execute_async(slot.model, slot.inputs, slot.outputs, slot.stream), "execute")
    acl_ok(sync(slot.stream), "synchronize_stream")
    times = np.empty(samples)
    clock = time.perf_counter
    for i in range(samples):
        t = clock()
        ret = sync(slot.stream)
        times[i] = clock() - t
        if ret:
            acl_ok(ret, "synchronize_stream")
    return p50_vs_rtt(times, raw_rtt, SYNC_DONE_RATIO_TARGET, " (no round trip)", samples)


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def measure_memcpy(
    size_bytes: int, repeats: int, raw_copy: dict[str, Any] | None
) -> dict[str, Any]:
    """acl.rt.memcpy H2D and D2H (numpy_to_ptr host buffers) on the current device, GB/s."""
    acl = load_acl()
    dev = acl_out(acl.rt.malloc(size_bytes, 0), "malloc")
    try:
        src = np.full(size_bytes, 0x5A, dtype=np.uint8)
        dst = np.zeros(size_bytes, dtype=np.uint8)
        dst.fill(1)  # resident pages
        psrc, pdst = acl.util.numpy_to_ptr(src), acl.util.numpy_to_ptr(dst)
        t = time.perf_counter()
        acl_ok(acl.rt.memcpy(dev, size_bytes, psrc, size_bytes, ACL_MEMCPY_H2D), "memcpy H2D")
        first = _gbps(size_bytes, time.perf_counter() - t)
        acl_ok(acl.rt.memcpy(pdst, size_bytes, dev, size_bytes, ACL_MEMCPY_D2H), "memcpy D2H")
        if dst[0] != 0x5A or dst[-1] != 0x5A:
            raise BenchError("memcpy round trip returned the wrong bytes")
        inner = max(1, min(64, (64 * MIB) // size_bytes))  # as raw_copy_rate does
        h2d: list[float] = []
        d2h: list[float] = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                acl_ok(acl.rt.memcpy(dev, size_bytes, psrc, size_bytes, ACL_MEMCPY_H2D), "H2D")
            h2d.append(_gbps(size_bytes * inner, time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(inner):
                acl_ok(acl.rt.memcpy(pdst, size_bytes, dev, size_bytes, ACL_MEMCPY_D2H), "D2H")
            d2h.append(_gbps(size_bytes * inner, time.perf_counter() - t))
    finally:
        acl_ok(acl.rt.free(dev), "free")
    out: dict[str, Any] = {}
    for kind, rates, raw_key in (
        ("h2d", h2d, "host_to_shm_gbps_best"),
        ("d2h", d2h, "shm_to_host_gbps_best"),
    ):
        best = round(max(rates), 2)
        baseline = raw_copy[raw_key] if raw_copy else None
        ratio = ratio_of(best, baseline)
        out[kind] = entry(
            best,
            unit="GB/s",
            baseline=baseline,
            target=f"ratio >= {MEMCPY_RATIO_TARGET}",
            met=None if ratio is None else ratio >= MEMCPY_RATIO_TARGET,
            median_gbps=round(float(np.median(rates)), 2),
            size_bytes=size_bytes,
            repeats=repeats,
            inner=inner,
        )
    out["h2d"]["first_copy_gbps"] = round(first, 2)
    return out


# --------------------------------------------------------------------------------------------
# start time and idle CPU
# --------------------------------------------------------------------------------------------


def _sched_seconds(pid: int) -> float | None:
    """On-CPU time of all threads of ``pid`` from schedstat (ns resolution); None if absent."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{tid}/schedstat"
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                total += int(f.read().split()[0])
    except (FileNotFoundError, PermissionError, ValueError, IndexError):
        return None
    return total / 1e9


def measure_idle_cpu(farm: FarmProcess, window_s: float) -> dict[str, Any]:
    """CPU of every card (and the broker) of an idle farm over one shared window.

    ``raw.process_cpu_percent`` runs for each pid in parallel threads (clock-tick resolution:
    one tick over 2 s is 0.5 %); schedstat on-CPU time (ns resolution) is read over the same
    window and decides the target when available.
    """
    pids = {f"card{i}": pid for i, pid in enumerate(farm.card_pids)}
    pids["broker"] = farm.state["pid"]
    ticks: dict[str, float] = {}
    sched0 = {k: _sched_seconds(p) for k, p in pids.items()}
    t0 = time.perf_counter()

    def one(key: str, pid: int) -> None:
        ticks[key] = round(raw.process_cpu_percent(pid, window_s), 3)

    threads = [threading.Thread(target=one, args=kv) for kv in pids.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    sched = {}
    for k, p in pids.items():
        after = _sched_seconds(p)
        if sched0[k] is not None and after is not None:
            sched[k] = round(100.0 * (after - sched0[k]) / elapsed, 3)
    card_keys = [k for k in pids if k.startswith("card")]
    card_ticks = [ticks[k] for k in card_keys]
    card_sched = [sched[k] for k in card_keys if k in sched]
    precise = len(card_sched) == len(card_keys)
    values = card_sched if precise else card_ticks
    mean = round(float(np.mean(values)), 3)
    return entry(
        mean,
        unit="% of a core per card",
        target=f"< {IDLE_CPU_TARGET} % per card",
        met=mean < IDLE_CPU_TARGET,
        max=round(float(np.max(values)), 3),
        source="schedstat" if precise else "proc stat ticks",
        window_s=window_s,
        heartbeat_interval_s=HEARTBEAT_S,
        cards=len(card_keys),
        ticks_percent=ticks,
        schedstat_percent=sched,
    )


def measure_start(cards: int, hbm: str, idle_window_s: float | None = None) -> dict[str, Any]:
    """Launch-to-state-file time of a farm with ``cards`` cards, its own figure, stop time."""
    need = cards * int(hbm.removesuffix("MiB")) * MIB
    if need > shm_free():
        return entry(None, unit="s", skipped=f"/dev/shm has less than {need} bytes free")
    farm = FarmProcess(cards, hbm=hbm)
    idle = None
    with farm:
        uptime = farm.state.get("uptime_s")
        if idle_window_s:
            time.sleep(0.5)  # let start-up work (imports, first heartbeats) settle
            idle = measure_idle_cpu(farm, idle_window_s)
    target = met = None
    if cards == 64:
        target = f"<= {START_64_TARGET_S} s"
        met = farm.start_s <= START_64_TARGET_S
    res = entry(
        round(farm.start_s, 3),
        unit="s",
        target=target,
        met=met,
        cards=cards,
        hbm_per_card=hbm,
        broker_uptime_at_announce_s=None if uptime is None else round(uptime, 3),
        stop_s=None if farm.stop_s is None else round(farm.stop_s, 3),
        killed=farm.killed,
        leftover_shm=len(farm.leftover_shm),
    )
    if idle is not None:
        res["idle_cpu"] = idle
    return res
