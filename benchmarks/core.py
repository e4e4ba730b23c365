"""Farm benchmark: what the farm costs, divided by raw baselines measured in the same run.

``python -m benchmarks.core [--quick] [--out FILE] [--markdown]`` prints one JSON document (and a
markdown summary table on stderr; ``--markdown`` prints only the table, on stdout). Sections:

* ``baselines`` - :func:`benchmarks.raw.collect_baselines` plus a 4-in-flight raw echo.
* ``farm.routing`` - zero-latency tasks/s with K = 1/4/16 tasks in flight on 1 and 8 cards. The
  window is K streams (spread round-robin over the cards), each holding exactly one
  ``execute_async``; the loop syncs them in turn and resubmits, so K tasks are outstanding
  whenever a task is submitted. Ratio against the raw 3-hop echo at the same in-flight count.
* ``farm.pipelined`` - bursts of B ``execute_async`` per stream, then one ``synchronize_stream``
  (the client batches the burst into few SUBMIT messages), 2 streams per card; single-threaded
  and with one worker thread per card. Target: >= 100k tasks/s on 8 cards.
* ``farm.latency`` - one task at a time (``execute_async`` + ``synchronize_stream``) vs raw RTT.
* ``farm.sync_finished`` - ``synchronize_stream`` on a stream with nothing pending.
* ``farm.memcpy`` - ``acl.rt.memcpy`` H2D / D2H GB/s vs warm ``np.copyto`` into shm.
* ``farm.start`` - ``python -m npufarm up`` to state file for 4/16/64 cards (plus the broker's own
  ``uptime_s`` at announce, and SIGTERM-to-exit time).
* ``farm.idle_cpu`` - CPU of each card of an idle 4-card farm.

Every farm is a ``python -m npufarm up`` subprocess with a private temp config (``time_scale`` 0,
default heartbeats), a private runtime dir and ``--watch-parent``; it is SIGTERMed and waited for
(killed after a timeout), its temp dir removed, and its ``/dev/shm`` segments checked (and swept
if anything was left). ``acl.finalize()`` always runs before a farm is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks import raw

__all__ = [
    "BenchError",
    "FarmProcess",
    "acl_session",
    "main",
    "markdown_table",
    "measure_idle_cpu",
    "measure_latency",
    "measure_memcpy",
    "measure_pipelined",
    "measure_routing",
    "measure_start",
    "measure_sync_finished",
    "run",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ZERO_MODEL = REPO / "configs" / "models" / "zero.toml"
SHM_DIR = "/dev/shm"
MIB = 1 << 20
ACL_MEMCPY_H2D, ACL_MEMCPY_D2H = 1, 2

# targets from the issue
ROUTING_RATIO_TARGET = 0.80  # of the raw 3-hop echo rate, at 16 in flight
PIPELINED_TARGET_TPS = 100_000.0  # async tasks/s on 8 cards, batched
LATENCY_RATIO_TARGET = 1.20  # added latency per async task vs raw 3-hop RTT p50
SYNC_DONE_RATIO_TARGET = 0.10  # "no round trip": far below one raw RTT
MEMCPY_RATIO_TARGET = 0.80  # of a warm raw copy
START_64_TARGET_S = 1.5
IDLE_CPU_TARGET = 0.5  # percent of one core, per card

_HEARTBEAT_S = 0.25  # the default config's heartbeat, so idle CPU is what users see
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


class BenchError(RuntimeError):
    """An ACL call failed or a farm misbehaved during the benchmark."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _acl():
    import acl  # deferred: importing the client is only needed once a farm runs

    return acl


def _ok(ret: int, what: str) -> None:
    if ret != 0:
        detail = _acl().get_recent_err_msg()
        raise BenchError(f"{what} failed with {ret}" + (f": {detail}" if detail else ""))


def _out(result: tuple, what: str) -> Any:
    *values, ret = result
    _ok(ret, what)
    return values[0] if len(values) == 1 else tuple(values)


def _pct(values: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50_us": round(float(p50), 2),
        "p90_us": round(float(p90), 2),
        "p99_us": round(float(p99), 2),
        "mean_us": round(float(values.mean()), 2),
    }


def _ratio(measured: float | None, baseline: float | None) -> float | None:
    if measured is None or not baseline:
        return None
    return round(measured / baseline, 3)


def _p50_vs_rtt(
    times_s: np.ndarray, raw_rtt: dict[str, Any] | None, target: float, note: str, samples: int
) -> dict[str, Any]:
    """A latency entry: p50 in µs against the raw 3-hop RTT p50, met if ratio <= target."""
    stats = _pct(times_s * 1e6)
    baseline = raw_rtt["p50_us"] if raw_rtt else None
    ratio = _ratio(stats["p50_us"], baseline)
    return _entry(
        stats["p50_us"],
        unit="us",
        baseline=baseline,
        target=f"p50 ratio <= {target}{note}",
        met=None if ratio is None else ratio <= target,
        samples=samples,
        **stats,
    )


def _entry(
    measured: float | None,
    *,
    unit: str,
    baseline: float | None = None,
    target: str | None = None,
    met: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A result entry: measured, baseline, ratio, target and meets_target (None = no target)."""
    return {
        "measured": measured,
        "unit": unit,
        "baseline": baseline,
        "ratio": _ratio(measured, baseline),
        "target": target,
        "meets_target": met,
        **extra,
    }


def _cpu_seconds(pid: int) -> float:
    """utime+stime of a process from /proc (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class _CpuWindow:
    """CPU % of several pids over a window opened by :meth:`open` and closed by :meth:`close`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._c0: dict[str, float] = {}

    def open(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = {k: _cpu_seconds(p) for k, p in self.pids.items()}

    def close(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        return {
            k: round(100.0 * (_cpu_seconds(p) - self._c0[k]) / elapsed, 1)
            for k, p in self.pids.items()
        }


# --------------------------------------------------------------------------------------------
# farm processes
# --------------------------------------------------------------------------------------------


def _config_text(name: str, hbm: str, cards: int) -> str:
    return (
        "# written by benchmarks.core\n"
        "[farm]\n"
        f'name = "{name}"\n'
        'endpoint = "ipc"\n'
        "time_scale = 0.0\n"
        f"heartbeat_interval_s = {_HEARTBEAT_S}\n"
        "heartbeat_liveness = 4\n"
        'sanitizer = "off"\n'
        "seed = 0\n"
        "[cards]\n"
        f"count = {cards}\n"
        f'profile = {{ base = "910b", name = "910b-bench", hbm_bytes = "{hbm}" }}\n'
    )


def _shm_free() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


class FarmProcess:
    """A ``python -m npufarm up`` subprocess with its own temp config and runtime dir.

    ``start()`` returns once the state file exists; ``stop()`` SIGTERMs, waits (kills after a
    timeout), sweeps leftover shm segments of this farm and removes the temp dir. Idempotent.
    """

    _seq = 0

    def __init__(self, cards: int, hbm: str = "256MiB") -> None:
        FarmProcess._seq += 1
        self.cards = cards
        self.hbm = hbm
        self.name = f"bench{os.getpid()}n{FarmProcess._seq}"
        self.tmpdir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.state: dict[str, Any] = {}
        self.start_s: float | None = None
        self.stop_s: float | None = None
        self.killed = False
        self.leftover_shm: list[str] = []

    def __enter__(self) -> FarmProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return self.state["endpoint"]

    @property
    def card_pids(self) -> list[int]:
        return [int(c["pid"]) for c in self.state.get("cards", [])]

    def _log_tail(self) -> str:
        if self.tmpdir is None:
            return ""
        with contextlib.suppress(OSError):
            return Path(self.tmpdir, "farm.log").read_text()[-2000:]
        return ""

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> FarmProcess:
        self.tmpdir = tempfile.mkdtemp(prefix="nfb-", dir="/tmp")  # short: ipc path limit
        try:
            config = Path(self.tmpdir, "farm.toml")
            config.write_text(_config_text(self.name, self.hbm, self.cards))
            state_file = Path(self.tmpdir, f"{self.name}.json")
            env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
            cmd = [
                sys.executable,
                "-m",
                "npufarm",
                "up",
                "--config",
                str(config),
                "--runtime-dir",
                self.tmpdir,
                "--name",
                self.name,
                "--cards",
                str(self.cards),
                "--time-scale",
                "0",
                "--watch-parent",
                str(os.getpid()),
            ]
            with open(Path(self.tmpdir, "farm.log"), "wb") as logf:
                t0 = time.perf_counter()
                self.proc = subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf
                )
            deadline = t0 + timeout_s
            while not state_file.exists():
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"farm {self.name} exited with {self.proc.returncode}:\n{self._log_tail()}"
                    )
                if time.perf_counter() > deadline:
                    raise BenchError(f"farm {self.name} not up after {timeout_s} s")
                time.sleep(0.002)
            self.start_s = time.perf_counter() - t0
            for _ in range(100):  # written atomically, but be tolerant
                with contextlib.suppress(ValueError, OSError):
                    self.state = json.loads(state_file.read_text())
                    break
                time.sleep(0.01)
            if not self.state:
                raise BenchError(f"farm {self.name}: unreadable state file")
        except BaseException:
            self.stop()
            raise
        return self

    def _segments(self) -> list[str]:
        pid = self.proc.pid if self.proc is not None else None
        if pid is None:
            return []
        prefix = f"npufarm-{self.name}-{pid}-"
        try:
            return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
        except OSError:
            return []

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            t0 = time.perf_counter()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("farm %s did not stop in %s s; killing it", self.name, timeout_s)
                self.killed = True
                proc.kill()
                proc.wait()
            self.stop_s = time.perf_counter() - t0
            leftover = self._segments()
            deadline = time.monotonic() + 3.0  # orphaned cards unlink theirs after expiry
            while leftover and self.killed and time.monotonic() < deadline:
                time.sleep(0.1)
                leftover = self._segments()
            self.leftover_shm = leftover
            for name in leftover:
                log.warning("farm %s left %s; removing it", self.name, name)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(SHM_DIR, name))
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


@contextlib.contextmanager
def acl_session(endpoint: str) -> Iterator[Any]:
    """``acl.init()`` against ``endpoint``; ``acl.finalize()`` and env restored on exit."""
    acl = _acl()
    old = os.environ.get("NPUFARM_ADDRESS")
    os.environ["NPUFARM_ADDRESS"] = endpoint
    try:
        _ok(acl.init(), "acl.init")
        try:
            yield acl
        finally:
            ret = acl.finalize()
            if ret != 0:
                log.warning("acl.finalize returned %s", ret)
    finally:
        if old is None:
            os.environ.pop("NPUFARM_ADDRESS", None)
        else:
            os.environ["NPUFARM_ADDRESS"] = old


# --------------------------------------------------------------------------------------------
# ACL workload setup
# --------------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One stream with its own loaded model and input/output datasets, on one card."""

    device: int
    context: int
    stream: int
    model: int
    inputs: int
    outputs: int


def setup_slots(n_cards: int, per_card: int) -> list[list[Slot]]:
    """For each card: set_device/create_context, then ``per_card`` streams, each with its own
    zero.toml model, input/output device buffers and datasets. Returns slots by card."""
    acl = _acl()
    by_card: list[list[Slot]] = []
    for dev in range(n_cards):
        _ok(acl.rt.set_device(dev), f"set_device({dev})")
        ctx = _out(acl.rt.create_context(dev), "create_context")
        slots = []
        for _ in range(per_card):
            stream = _out(acl.rt.create_stream(), "create_stream")
            model = _out(acl.mdl.load_from_file(str(ZERO_MODEL)), "load_from_file")
            desc = acl.mdl.create_desc()
            _ok(acl.mdl.get_desc(desc, model), "get_desc")
            datasets = []
            for size_of in (acl.mdl.get_input_size_by_index, acl.mdl.get_output_size_by_index):
                size = size_of(desc, 0)
                ptr = _out(acl.rt.malloc(size, 0), "malloc")
                ds = acl.mdl.create_dataset()
                _out(acl.mdl.add_dataset_buffer(ds, acl.create_data_buffer(ptr, size)), "add")
                datasets.append(ds)
            _ok(acl.mdl.destroy_desc(desc), "destroy_desc")
            slots.append(Slot(dev, ctx, stream, model, datasets[0], datasets[1]))
        by_card.append(slots)
    return by_card


def interleave(by_card: list[list[Slot]], count: int) -> list[Slot]:
    """``count`` slots taken round-robin over the cards (card 0, 1, ..., 0, 1, ...)."""
    order = [card[i] for i in range(max(map(len, by_card))) for card in by_card if i < len(card)]
    if count > len(order):
        raise ValueError(f"need {count} slots, have {len(order)}")
    return order[:count]


# --------------------------------------------------------------------------------------------
# the submit/sync loop: routing (burst 1) and pipelined (burst B)
# --------------------------------------------------------------------------------------------


def _burst_loop(
    slots: list[Slot],
    burst: int,
    counter: list[int],
    index: int,
    stop: threading.Event,
    marks: list[tuple[float, int]] | None = None,
    window: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Keep ``burst`` tasks queued on every stream: sync a stream (its tasks are done), refill.

    With ``burst`` 1 this is the K-in-flight window: K = len(slots) streams holding one task each,
    so K tasks are outstanding whenever one is submitted. With ``marks`` the loop times its own
    window (``(warmup_s, duration_s)``) and stops; otherwise it runs until ``stop`` is set and the
    caller samples ``counter``.
    """
    acl = _acl()
    ex, sync, set_ctx = acl.mdl.execute_async, acl.rt.synchronize_stream, acl.rt.set_context
    current = None
    for s in slots:
        if s.context != current:
            _ok(set_ctx(s.context), "set_context")
            current = s.context
        for _ in range(burst):
            _ok(ex(s.model, s.inputs, s.outputs, s.stream), "execute_async")
    t_measure = time.perf_counter() + window[0]
    while not stop.is_set():
        for s in slots:
            if s.context != current:
                _ok(set_ctx(s.context), "set_context")
                current = s.context
            _ok(sync(s.stream), "synchronize_stream")
            counter[index] += burst
            for _ in range(burst):
                _ok(ex(s.model, s.inputs, s.outputs, s.stream), "execute_async")
        if marks is not None:
            now = time.perf_counter()
            if not marks:
                if now >= t_measure:
                    marks.append((now, counter[index]))
            elif now >= marks[0][0] + window[1]:
                marks.append((now, counter[index]))
                break
    for s in slots:
        _ok(set_ctx(s.context), "set_context")
        _ok(sync(s.stream), "synchronize_stream")


def _loop_rate(
    groups: list[list[Slot]], burst: int, warmup_s: float, duration_s: float
) -> tuple[float, int, float]:
    """One loop per group: inline for one group, a thread per group otherwise."""
    counter = [0] * len(groups)
    stop = threading.Event()
    if len(groups) == 1:
        marks: list[tuple[float, int]] = []
        _burst_loop(groups[0], burst, counter, 0, stop, marks, (warmup_s, duration_s))
        (t0, n0), (t1, n1) = marks
        return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            _burst_loop(groups[i], burst, counter, i, stop)
        except BaseException as exc:  # re-raised below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(groups))]
    for t in threads:
        t.start()
    try:
        time.sleep(warmup_s)
        t0, n0 = time.perf_counter(), sum(counter)
        time.sleep(duration_s)
        t1, n1 = time.perf_counter(), sum(counter)
    finally:
        stop.set()
        for t in threads:
            t.join(30.0)
    if errors:
        raise errors[0]
    return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0


def _measure_loop(
    farm: FarmProcess, slots: list[Slot], burst: int, duration_s: float, threads: bool
) -> dict[str, Any]:
    """Run the loop over ``slots`` (one thread, or one per card) with CPU accounting."""
    if threads:
        by_dev: dict[int, list[Slot]] = {}
        for s in slots:
            by_dev.setdefault(s.device, []).append(s)
        groups = list(by_dev.values())
    else:
        groups = [slots]
    pids = {"broker": farm.state["pid"], "client": os.getpid()}
    pids.update({f"card{i}": pid for i, pid in enumerate(farm.card_pids)})
    cpu = _CpuWindow(pids)
    cpu.open()
    tps, tasks, window = _loop_rate(groups, burst, min(0.2, duration_s / 2), duration_s)
    pct = cpu.close()
    cards_total = round(sum(v for k, v in pct.items() if k.startswith("card")), 1)
    return {
        "tasks_per_s": round(tps, 1),
        "tasks": tasks,
        "window_s": round(window, 4),
        "threads": len(groups),
        "cards_used": len({s.device for s in slots}),
        "cpu_percent": {"broker": pct["broker"], "client": pct["client"], "cards": cards_total},
        "cpu_us_per_task": {
            "broker": round(1e4 * pct["broker"] / tps, 2),
            "client": round(1e4 * pct["client"] / tps, 2),
            "cards": round(1e4 * cards_total / tps, 2),
        },
    }


def measure_routing(
    farm: FarmProcess,
    by_card: list[list[Slot]],
    in_flight: int,
    duration_s: float,
    raw_echo: dict[str, Any] | None,
    threads: bool = False,
) -> dict[str, Any]:
    """Tasks/s with ``in_flight`` streams (one task each) spread round-robin over the cards."""
    res = _measure_loop(farm, interleave(by_card, in_flight), 1, duration_s, threads)
    tps = res.pop("tasks_per_s")
    baseline = raw_echo["tasks_per_s"] if raw_echo else None
    target = met = None
    if in_flight == 16 and baseline:
        target = f"ratio >= {ROUTING_RATIO_TARGET}"
        met = tps / baseline >= ROUTING_RATIO_TARGET
    return _entry(
        tps,
        unit="tasks/s",
        baseline=baseline,
        target=target,
        met=met,
        in_flight=in_flight,
        cards=len(by_card),
        **res,
    )


def measure_pipelined(
    farm: FarmProcess,
    by_card: list[list[Slot]],
    burst: int,
    duration_s: float,
    baseline_tps: float | None,
    threads: bool = False,
) -> dict[str, Any]:
    """Bursts of ``burst`` execute_async per stream, one sync per burst, over every slot."""
    slots = interleave(by_card, sum(map(len, by_card)))
    res = _measure_loop(farm, slots, burst, duration_s, threads)
    tps = res.pop("tasks_per_s")
    eight = len(by_card) == 8
    return _entry(
        tps,
        unit="tasks/s",
        baseline=baseline_tps,
        target=f">= {PIPELINED_TARGET_TPS:,.0f} tasks/s" if eight else None,
        met=(tps >= PIPELINED_TARGET_TPS) if eight else None,
        cards=len(by_card),
        streams_per_card=len(by_card[0]),
        burst=burst,
        **res,
    )


# --------------------------------------------------------------------------------------------
# latency, sync on a finished stream, memcpy
# --------------------------------------------------------------------------------------------


def measure_latency(slot: Slot, samples: int, raw_rtt: dict[str, Any] | None) -> dict[str, Any]:
    """One task at a time: execute_async + synchronize_stream, microseconds."""
    acl = _acl()
    ex, sync = acl.mdl.execute_async, acl.rt.synchronize_stream
    _ok(acl.rt.set_context(slot.context), "set_context")
    warmup = max(50, samples // 10)
    times = np.empty(samples)
    clock = time.perf_counter
    for i in range(-warmup, samples):
        t = clock()
        ret = ex(slot.model, slot.inputs, slot.outputs, slot.stream)
        ret2 = sync(slot.stream)
        dt = clock() - t
        if ret or ret2:
            _ok(ret or ret2, "execute_async/synchronize_stream")
        if i >= 0:
            times[i] = dt
    return _p50_vs_rtt(times, raw_rtt, LATENCY_RATIO_TARGET, "", samples)


def measure_sync_finished(
    slot: Slot, samples: int, raw_rtt: dict[str, Any] | None
) -> dict[str, Any]:
    """synchronize_stream on a stream whose tasks are all complete (no round trip expected)."""
    acl = _acl()
    sync = acl.rt.synchronize_stream
    _ok(acl.rt.set_context(slot.context), "set_context")
    _ok(acl.mdl.execute_async(slot.model, slot.inputs, slot.outputs, slot.stream), "execute")
    _ok(sync(slot.stream), "synchronize_stream")
    times = np.empty(samples)
    clock = time.perf_counter
    for i in range(samples):
        t = clock()
        ret = sync(slot.stream)
        times[i] = clock() - t
        if ret:
            _ok(ret, "synchronize_stream")
    return _p50_vs_rtt(times, raw_rtt, SYNC_DONE_RATIO_TARGET, " (no round trip)", samples)


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def measure_memcpy(
    size_bytes: int, repeats: int, raw_copy: dict[str, Any] | None
) -> dict[str, Any]:
    """acl.rt.memcpy H2D and D2H (numpy_to_ptr host buffers) on the current device, GB/s."""
    acl = _acl()
    dev = _out(acl.rt.malloc(size_bytes, 0), "malloc")
    try:
        src = np.full(size_bytes, 0x5A, dtype=np.uint8)
        dst = np.zeros(size_bytes, dtype=np.uint8)
        dst.fill(1)  # resident pages
        psrc, pdst = acl.util.numpy_to_ptr(src), acl.util.numpy_to_ptr(dst)
        t = time.perf_counter()
        _ok(acl.rt.memcpy(dev, size_bytes, psrc, size_bytes, ACL_MEMCPY_H2D), "memcpy H2D")
        first = _gbps(size_bytes, time.perf_counter() - t)
        _ok(acl.rt.memcpy(pdst, size_bytes, dev, size_bytes, ACL_MEMCPY_D2H), "memcpy D2H")
        if dst[0] != 0x5A or dst[-1] != 0x5A:
            raise BenchError("memcpy round trip returned the wrong bytes")
        inner = max(1, min(64, (64 * MIB) // size_bytes))  # as raw_copy_rate does
        h2d: list[float] = []
        d2h: list[float] = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                _ok(acl.rt.memcpy(dev, size_bytes, psrc, size_bytes, ACL_MEMCPY_H2D), "H2D")
            h2d.append(_gbps(size_bytes * inner, time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(inner):
                _ok(acl.rt.memcpy(pdst, size_bytes, dev, size_bytes, ACL_MEMCPY_D2H), "D2H")
            d2h.append(_gbps(size_bytes * inner, time.perf_counter() - t))
    finally:
        _ok(acl.rt.free(dev), "free")
    out: dict[str, Any] = {}
    for kind, rates, raw_key in (
        ("h2d", h2d, "host_to_shm_gbps_best"),
        ("d2h", d2h, "shm_to_host_gbps_best"),
    ):
        best = round(max(rates), 2)
        baseline = raw_copy[raw_key] if raw_copy else None
        ratio = _ratio(best, baseline)
        out[kind] = _entry(
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
    return _entry(
        mean,
        unit="% of a core per card",
        target=f"< {IDLE_CPU_TARGET} % per card",
        met=mean < IDLE_CPU_TARGET,
        max=round(float(np.max(values)), 3),
        source="schedstat" if precise else "proc stat ticks",
        window_s=window_s,
        heartbeat_interval_s=_HEARTBEAT_S,
        cards=len(card_keys),
        ticks_percent=ticks,
        schedstat_percent=sched,
    )


def measure_start(cards: int, hbm: str, idle_window_s: float | None = None) -> dict[str, Any]:
    """Launch-to-state-file time of a farm with ``cards`` cards, its own figure, stop time."""
    need = cards * int(hbm.removesuffix("MiB")) * MIB
    if need > _shm_free():
        return _entry(None, unit="s", skipped=f"/dev/shm has less than {need} bytes free")
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
    res = _entry(
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


# --------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------


def _host() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _phase(name: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    log.info("bench: %s ...", name)
    out = fn()
    log.info("bench: %s done in %.2f s", name, time.perf_counter() - t)
    return out


def _routing_farm(
    n_cards: int,
    in_flights: tuple[int, ...],
    duration_s: float,
    echo: dict[str, dict[str, Any]],
    pipelined: dict[str, Any] | None,
    burst: int,
    batched_baseline: float | None,
) -> dict[str, Any]:
    per_card = max(2, math.ceil(max(in_flights) / n_cards))
    out: dict[str, Any] = {}
    with FarmProcess(n_cards, hbm="64MiB") as farm, acl_session(farm.endpoint):
        by_card = setup_slots(n_cards, per_card)
        for k in in_flights:
            base = echo.get(f"if{k}_b1")
            out[f"if{k}"] = measure_routing(farm, by_card, k, duration_s, base)
            if n_cards > 1 and k >= n_cards:
                out[f"if{k}_thread_per_card"] = measure_routing(
                    farm, by_card, k, duration_s, base, threads=True
                )
        if pipelined is not None:
            two = [c[:2] for c in by_card]
            pipelined[f"{n_cards}_cards"] = measure_pipelined(
                farm, two, burst, duration_s, batched_baseline
            )
            if n_cards > 1:
                pipelined[f"{n_cards}_cards_thread_per_card"] = measure_pipelined(
                    farm, two, burst, duration_s, batched_baseline, threads=True
                )
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Measure everything; return the JSON-able result."""
    started = time.perf_counter()
    duration = 0.4 if quick else 1.0
    in_flights = (1, 4, 16)
    samples = 500 if quick else 2000
    sizes_mib = (1, 16) if quick else (1, 16, 256)
    start_cards = (4, 16) if quick else (4, 16, 64)
    idle_window = 1.0 if quick else 2.0
    burst = 64
    result: dict[str, Any] = {"quick": quick, "host": _host()}

    baselines = _phase("raw baselines", lambda: raw.collect_baselines(quick=quick))
    with raw.EchoRig() as rig:
        baselines["echo"]["if4_b1"] = raw.raw_echo_rate(4, 0.5 if quick else 1.0, rig=rig)
    result["baselines"] = baselines
    echo = baselines["echo"]
    batched = [v["tasks_per_s"] for v in echo.values() if v["batch"] > 1]
    batched_baseline = max(batched) if batched else None
    rtt = baselines["rtt"]

    farm_res: dict[str, Any] = {"routing": {}, "pipelined": {}}
    result["farm"] = farm_res

    # one 1-card farm with 1 GiB HBM: routing, latency, sync, memcpy
    with FarmProcess(1, hbm="1GiB") as farm, acl_session(farm.endpoint) as acl:
        by_card = setup_slots(1, max(in_flights))
        farm_res["routing"]["1_card"] = _phase(
            "routing 1 card",
            lambda: {
                f"if{k}": measure_routing(farm, by_card, k, duration, echo.get(f"if{k}_b1"))
                for k in in_flights
            },
        )
        farm_res["pipelined"]["1_card"] = measure_pipelined(
            farm, [by_card[0][:2]], burst, duration, batched_baseline
        )
        farm_res["latency"] = _phase(
            "latency", lambda: measure_latency(by_card[0][0], samples, rtt)
        )
        farm_res["sync_finished"] = measure_sync_finished(by_card[0][1], samples, rtt)
        _ok(acl.rt.set_context(by_card[0][0].context), "set_context")
        farm_res["memcpy"] = _phase(
            "memcpy",
            lambda: {
                f"{m}MiB": measure_memcpy(m * MIB, 5, baselines["copy"].get(f"{m}MiB"))
                for m in sizes_mib
            },
        )

    # 8 cards: routing and pipelined
    farm_res["routing"]["8_cards"] = _phase(
        "routing 8 cards",
        lambda: _routing_farm(
            8, in_flights, duration, echo, farm_res["pipelined"], burst, batched_baseline
        ),
    )

    # start times (the 4-card farm is also the idle-CPU farm)
    farm_res["start"] = {}
    for n in start_cards:
        farm_res["start"][f"{n}_cards"] = _phase(
            f"start {n} cards",
            lambda n=n: measure_start(n, "64MiB", idle_window if n == 4 else None),
        )
    farm_res["idle_cpu"] = farm_res["start"]["4_cards"].pop("idle_cpu")

    result["summary"] = summarize(result)
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    return result


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------


def _row(metric: str, entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if not entry:
        return None
    return {
        "metric": metric,
        "unit": entry.get("unit"),
        "measured": entry.get("measured"),
        "baseline": entry.get("baseline"),
        "ratio": entry.get("ratio"),
        "target": entry.get("target"),
        "met": entry.get("meets_target"),
    }


def _cards(n: int) -> str:
    return f"{n} card" + ("s" if n != 1 else "")


def _threads(entry: dict[str, Any]) -> str:
    return ", thread per card" if entry.get("threads", 1) > 1 else ""


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the summary table, in a fixed order; missing measurements are skipped."""
    farm = result.get("farm", {})
    rows: list[dict[str, Any] | None] = []
    for routing in farm.get("routing", {}).values():
        for entry in routing.values():
            label = f"routing {_cards(entry['cards'])}, {entry['in_flight']} in flight"
            rows.append(_row(label + _threads(entry), entry))
    for entry in farm.get("pipelined", {}).values():
        label = (
            f"pipelined bursts of {entry['burst']}, {_cards(entry['cards'])} x "
            f"{entry['streams_per_card']} streams"
        )
        rows.append(_row(label + _threads(entry), entry))
    rows.append(_row("latency per async task p50", farm.get("latency")))
    rows.append(_row("sync on a finished stream p50", farm.get("sync_finished")))
    for size, both in farm.get("memcpy", {}).items():
        rows.append(_row(f"memcpy H2D {size}", both.get("h2d")))
        rows.append(_row(f"memcpy D2H {size}", both.get("d2h")))
    for key, entry in farm.get("start", {}).items():
        rows.append(_row(f"farm start {key.replace('_', ' ')}", entry))
        if entry.get("broker_uptime_at_announce_s") is not None:
            rows.append(
                {
                    "metric": f"  broker's own start figure, {key.replace('_', ' ')}",
                    "unit": "s",
                    "measured": entry["broker_uptime_at_announce_s"],
                    "baseline": None,
                    "ratio": None,
                    "target": None,
                    "met": None,
                }
            )
        if entry.get("stop_s") is not None:
            rows.append(
                {
                    "metric": f"  farm stop {key.replace('_', ' ')}",
                    "unit": "s",
                    "measured": entry["stop_s"],
                    "baseline": None,
                    "ratio": None,
                    "target": None,
                    "met": None,
                }
            )
    rows.append(_row("idle CPU per card (mean)", farm.get("idle_cpu")))
    return [r for r in rows if r is not None]


def _fmt(value: Any, unit: str | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float | int):
        if unit == "tasks/s":
            return f"{value:,.0f}"
        if unit == "us":
            return f"{value:.1f}"
        if unit == "s":
            return f"{value:.3f}"
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    return str(value)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| metric | unit | measured | raw baseline | ratio | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in summary:
        unit = r.get("unit")
        lines.append(
            f"| {r['metric']} | {unit or ''} | {_fmt(r['measured'], unit)} | "
            f"{_fmt(r['baseline'], unit)} | {_fmt(r['ratio'])} | {r['target'] or '-'} | "
            f"{_fmt(r['met'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core",
        description="Benchmark the farm against raw baselines; print JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="short windows, fewer sizes/cards")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the summary table on stdout instead of the JSON (JSON still goes to --out)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    result = run(quick=args.quick)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    table = markdown_table(result["summary"])
    if args.markdown:
        print(table)
    else:
        print(text)
        print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
