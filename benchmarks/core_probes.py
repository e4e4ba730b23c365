"""Farm probes measured one at a time: task latency, sync on a finished stream, memcpy rates,
start/stop time of a farm, and the idle CPU of its cards.

Each ``measure_*`` call is one round and returns its figures; the ``*_entry`` functions reduce the
rounds (and the raw baseline's rounds measured beside them) to result entries. Latency and sync
are timed against the raw 3-hop RTT, memcpy against a warm raw ``np.copyto`` into shm
(:mod:`benchmarks.raw`); start and idle CPU launch a farm per round.
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
    percentiles_us,
)
from benchmarks.rounds import Target, at_least, at_most, median_fields, rounds_entry, spread

__all__ = [
    "idle_cpu_entry",
    "latency_entry",
    "measure_idle_cpu",
    "measure_latency",
    "measure_memcpy",
    "measure_start",
    "measure_sync_finished",
    "memcpy_entries",
    "start_entry",
    "sync_finished_entry",
]

ACL_MEMCPY_H2D, ACL_MEMCPY_D2H = 1, 2


# --------------------------------------------------------------------------------------------
# latency, sync on a finished stream, memcpy
# --------------------------------------------------------------------------------------------


def measure_latency(slot: Slot, samples: int) -> dict[str, Any]:
    """One round of one task at a time: execute_async + synchronize_stream; percentiles in µs."""
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
    return {**percentiles_us(times * 1e6), "samples": samples}


def measure_sync_finished(slot: Slot, samples: int) -> dict[str, Any]:
    """One round of synchronize_stream on a stream whose tasks are all complete (no round trip
    expected); percentiles in µs."""
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
    return {**percentiles_us(times * 1e6), "samples": samples}


def _p50_entry(
    rounds: list[dict[str, Any]], raw_rtt: list[dict[str, Any]], target: Target
) -> dict[str, Any]:
    """p50 µs of the rounds against the raw 3-hop RTT p50 of the rounds beside them; the other
    percentiles are medians over the rounds too (so ``p50_us`` is ``measured``)."""
    return rounds_entry(
        [r["p50_us"] for r in rounds],
        [r["p50_us"] for r in raw_rtt],
        unit="us",
        target=target,
        **median_fields(rounds),
    )


def latency_entry(rounds: list[dict[str, Any]], raw_rtt: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency per async task: p50 ratio to the raw RTT, met at <= the issue's bound."""
    text = f"p50 ratio <= {LATENCY_RATIO_TARGET}"
    return _p50_entry(rounds, raw_rtt, at_most(LATENCY_RATIO_TARGET, text=text))


def sync_finished_entry(
    rounds: list[dict[str, Any]], raw_rtt: list[dict[str, Any]]
) -> dict[str, Any]:
    """Sync on a finished stream: far below one raw RTT, since no message should be sent."""
    text = f"p50 ratio <= {SYNC_DONE_RATIO_TARGET} (no round trip)"
    return _p50_entry(rounds, raw_rtt, at_most(SYNC_DONE_RATIO_TARGET, text=text))


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def measure_memcpy(size_bytes: int, repeats: int, context: int) -> dict[str, Any]:
    """One round of acl.rt.memcpy H2D and D2H (numpy_to_ptr host buffers) in ``context``: best
    and median GB/s of ``repeats`` samples each, and the first (cold) H2D copy."""
    acl = load_acl()
    acl_ok(acl.rt.set_context(context), "set_context")
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
    return {
        "h2d": {"best_gbps": round(max(h2d), 2), "median_gbps": round(float(np.median(h2d)), 2)},
        "d2h": {"best_gbps": round(max(d2h), 2), "median_gbps": round(float(np.median(d2h)), 2)},
        "first_copy_gbps": round(first, 2),
        "size_bytes": size_bytes,
        "repeats": repeats,
        "inner": inner,
    }


def memcpy_entries(
    rounds: list[dict[str, Any]], raw_copy: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``h2d`` and ``d2h`` entries: the rounds' best GB/s against the warm raw copy's best of
    the rounds beside them (:func:`benchmarks.raw.raw_copy_rate`), met at >= the issue's ratio."""
    out: dict[str, Any] = {}
    for kind, raw_key in (("h2d", "host_to_shm_gbps_best"), ("d2h", "shm_to_host_gbps_best")):
        out[kind] = rounds_entry(
            [r[kind]["best_gbps"] for r in rounds],
            [c[raw_key] for c in raw_copy],
            unit="GB/s",
            target=at_least(MEMCPY_RATIO_TARGET),
            median_gbps=spread([r[kind]["median_gbps"] for r in rounds])["median"],
            size_bytes=rounds[0]["size_bytes"],
            repeats=rounds[0]["repeats"],
            inner=rounds[0]["inner"],
        )
    out["h2d"]["first_copy_gbps"] = spread([r["first_copy_gbps"] for r in rounds])["median"]
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
    return {
        "mean_percent": round(float(np.mean(values)), 3),
        "max": round(float(np.max(values)), 3),
        "source": "schedstat" if precise else "proc stat ticks",
        "window_s": window_s,
        "heartbeat_interval_s": HEARTBEAT_S,
        "cards": len(card_keys),
        "ticks_percent": ticks,
        "schedstat_percent": sched,
    }


def idle_cpu_entry(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean idle CPU per card, median over the rounds (``max``: the highest card of any round),
    met below the issue's bound."""
    context = median_fields([{k: v for k, v in r.items() if k != "mean_percent"} for r in rounds])
    context["max"] = max(r["max"] for r in rounds)
    text = f"< {IDLE_CPU_TARGET} % per card"
    return rounds_entry(
        [r["mean_percent"] for r in rounds],
        unit="% of a core per card",
        target=at_most(IDLE_CPU_TARGET, on="measured", strict=True, text=text),
        **context,
    )


def measure_start(cards: int, hbm: str, idle_window_s: float | None = None) -> dict[str, Any]:
    """One round: launch-to-state-file time of a farm with ``cards`` cards, the broker's own
    figure, the stop time, and (with ``idle_window_s``) the idle CPU of its cards."""
    need = cards * int(hbm.removesuffix("MiB")) * MIB
    if need > shm_free():
        return {"skipped": f"/dev/shm has less than {need} bytes free"}
    farm = FarmProcess(cards, hbm=hbm)
    out: dict[str, Any] = {}
    with farm:
        uptime = farm.state.get("uptime_s")
        if idle_window_s:
            time.sleep(0.5)  # let start-up work (imports, first heartbeats) settle
            out["idle_cpu"] = measure_idle_cpu(farm, idle_window_s)
    out.update(
        start_s=round(farm.start_s, 3),
        broker_uptime_at_announce_s=None if uptime is None else round(uptime, 3),
        stop_s=None if farm.stop_s is None else round(farm.stop_s, 3),
        killed=farm.killed,
        leftover_shm=len(farm.leftover_shm),
    )
    return out


def _side_figure(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """``key``'s median over the rounds with ``key_min`` / ``key_max``; None if a round lacks it."""
    values = [r[key] for r in rounds]
    if any(v is None for v in values):
        return {key: None}
    both = spread(values)
    return {key: both["median"], f"{key}_min": both["min"], f"{key}_max": both["max"]}


def start_entry(rounds: list[dict[str, Any]], cards: int, hbm: str) -> dict[str, Any]:
    """Start time, median over the rounds (target on 64 cards); the broker's own figure and the
    stop time likewise; ``killed`` if any round's farm was, ``leftover_shm`` summed."""
    skipped = [r["skipped"] for r in rounds if "skipped" in r]
    if skipped:
        return entry(None, unit="s", skipped=skipped[0])
    target = None
    if cards == 64:
        target = at_most(START_64_TARGET_S, on="measured", text=f"<= {START_64_TARGET_S} s")
    return rounds_entry(
        [r["start_s"] for r in rounds],
        unit="s",
        target=target,
        cards=cards,
        hbm_per_card=hbm,
        **_side_figure(rounds, "broker_uptime_at_announce_s"),
        **_side_figure(rounds, "stop_s"),
        killed=any(r["killed"] for r in rounds),
        leftover_shm=sum(r["leftover_shm"] for r in rounds),
    )
