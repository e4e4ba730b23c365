"""Where a modelled task's latency tail goes: ``python -m benchmarks.tail [--case 1|8|all]``.

Runs the two accuracy cases of issue 12 (a 5 ms fixed model; 1 card closed loop at 1 in flight;
8 cards open loop at 70 % load, 1,120 req/s constant, 1 stream per card, 2 client processes, as
``npufarm bench`` deals them) on a farm whose cards put their stage times in the completion rows
(``NPUFARM_TIMING_DIAG``, device/card.py), and splits each request's end-to-end latency, on the
host's one CLOCK_MONOTONIC, into the stages drawn in :mod:`benchmarks.tail_stages` (the pure part:
records, stages, the decomposition, the table, run-queue readings).

``way_in`` (card receipt − stamp) is shown apart: the model absorbs it. For p50/p90/p99/p99.9
of end-to-end, the requests at or above that percentile: their mean per stage minus the median
request's (the stage's median over all): the stage that holds the excess. Also per case: which
share of the tail requests were received by the client's I/O thread rather than the waiting
one, which overlapped a client GC; apart (:data:`INFO`), the card loop's run-queue wait over the
sleep its timer ended and its GC time, the client thread's run-queue wait during the sync; every
process group's run-queue wait (``/proc/<pid>/task/*/schedstat`` field 2) per second of run;
and the host's own floor, no farm code (:func:`host_floor`: a bare timer sleep's lateness, a
two-hop pipe relay); the cards' CPU (ms per s) and the host's CPU pressure (PSI "some" share:
what a card's spin rule sees, device/pacing.py). ``--profile-set timer_spin_s=0`` runs the cards
with a profile field changed. JSON out, like the others (:func:`benchmarks.rounds.emit`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import multiprocessing
import os
import queue
import select
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.rounds import emit
from benchmarks.tail_stages import (
    BANDS,
    RECORD,
    STAGES,
    decompose,
    rounded,
    run_queue,
    schedstat_ns,
    stages,
    table,
)
from device.pacing import psi_some_us
from farm.admin import stop_process, up_command
from loadtest.messages import STOP, Phase
from loadtest.plan import arrival_offsets
from loadtest.workers import Slot

__all__ = ["STAGES", "RECORD", "stages", "decompose", "run_case", "main"]

logger = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[1]
_CONFIG = _REPO / "configs" / "default.toml"
_MODEL = _REPO / "configs" / "models" / "matmul-5ms.toml"  # fixed 5 ms (MODELLED_MS)
_DIAG_ENV = "NPUFARM_TIMING_DIAG"  # device.card.TIMING_DIAG_ENV (not imported: a lower layer)
_CASES = {
    "1": {"farm_cards": 4, "cards": 1, "rate": None},
    "8": {"farm_cards": 8, "cards": 8, "rate": 1120.0},
}


# --------------------------------------------------------------------------------------------
# the client side (a spawned process per worker, as the bench's)
# --------------------------------------------------------------------------------------------

_BOOK: dict[int, tuple[float, bool, list]] = {}  # device id -> (receipt, I/O thread?, its row)
_GCS: deque[tuple[float, float]] = deque(maxlen=256)  # the client's GC pauses (start, end)
_GC_START = [0.0]


def _install_hooks() -> None:
    """In a worker: note when each COMPLETE is received, by which thread, and every GC pause.
    The session's own hook point is its message handler (a diagnostic wrapper, this process
    only)."""
    from client.session import Session  # (the client layer: only this process patches it)

    original = Session._on_complete

    def on_complete(self, rows: Any) -> None:
        now = time.monotonic()
        io_thread = threading.current_thread().name == "npufarm-io"
        if isinstance(rows, list):
            for row in rows:
                if type(row) is list and len(row) >= 13:
                    _BOOK[row[6]] = (now, io_thread, row)
        original(self, rows)

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            _GC_START[0] = time.monotonic()
        else:
            _GCS.append((_GC_START[0], time.monotonic()))

    Session._on_complete = on_complete
    gc.callbacks.append(on_gc)


_THREAD = threading.local()


def _thread_rq_s() -> float:
    """The calling thread's run-queue wait so far (s; schedstat field 2)."""
    fd = getattr(_THREAD, "fd", None)
    if fd is None:
        fd = _THREAD.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    return int(os.pread(fd, 128, 0).split()[1]) / 1e9


def _gc_during(start: float, end: float) -> bool:
    return any(a < end and b > start for a, b in list(_GCS)[-8:])


class _Rig:
    """What a :class:`loadtest.workers.Slot` needs of its worker, plus the stage records."""

    def __init__(self, acl_module: Any, model: str) -> None:
        self.acl, self.model, self.sync_timeout_ms = acl_module, model, 10_000
        self.stop = threading.Event()
        self.samples: deque = deque(maxlen=1)  # (the bench's samples: not needed here)
        self.done: queue.Queue = queue.Queue()
        self.failure: str | None = None
        self.budget = None
        self.warm_end = float("inf")
        self.records: list[tuple] = []


class _TailSlot(Slot):
    """The bench's slot, its request timed stage by stage (the same calls in the same order)."""

    def request(self) -> tuple[int, float, float]:
        if "config" not in self.__dict__:
            return super().request()
        acl, w = self.w.acl, self.w
        start = time.monotonic()
        ret = 0
        for ptr, size, _, host_ptr in self.ins:
            ret = ret or acl.rt.memcpy(ptr, size, host_ptr, size, 1)
        ret = ret or acl.mdl.execute_async_v2(
            self.model_id, self.datasets[0], self.datasets[1], self.stream, self.config
        )
        rq_s = _thread_rq_s()
        ret = ret or acl.rt.synchronize_stream(self.stream)
        sync_ret = time.monotonic()
        rq_s = _thread_rq_s() - rq_s
        for ptr, size, _, host_ptr in self.outs:
            ret = ret or acl.rt.memcpy(host_ptr, size, ptr, size, 2)
        done = time.monotonic()
        hit = _BOOK.get(self.card)
        if ret == 0 and start >= w.warm_end and hit is not None and start <= hit[2][5] <= done:
            receipt, io_thread, row = hit
            times = (start, row[5], row[2], row[3], row[7], row[8], row[9], row[12], receipt)
            waits = (row[10], row[11], rq_s)
            w.records.append((*times, sync_ret, done, *waits, io_thread, _gc_during(start, done)))
        return ret, start, done


def _worker_main(address: str, slots: list, model: str, commands: Any, results: Any) -> None:
    """A spawned client process: its slots, one phase, its records back to the parent."""
    os.environ["NPUFARM_ADDRESS"] = address
    _install_hooks()
    import acl  # (after the address is set; importing connects nothing)

    if acl.init() != 0:
        results.put(("error", f"acl.init failed: {acl.get_recent_err_msg()}"))
        return
    rig = _Rig(acl, model)
    threads = [_TailSlot(rig, sid, card) for sid, card in slots]
    try:
        for slot in threads:
            slot.start()
        for slot in threads:
            slot.ready.wait()
        errors = [slot.setup_error for slot in threads if slot.setup_error]
        results.put(("ready", errors[0] if errors else None))
        phase = commands.get()
        rig.warm_end = phase.warm_end
        for slot in threads:
            slot.inbox.put(phase)
        for _ in threads:
            rig.done.get()
        results.put(("records", np.array(rig.records, RECORD), rig.failure))
    finally:
        for slot in threads:
            slot.inbox.put(STOP)
        for slot in threads:
            slot.join(timeout=10.0)
        acl.finalize()


# --------------------------------------------------------------------------------------------
# the parent: a farm, the workers, one phase
# --------------------------------------------------------------------------------------------


def farm_config(profile: dict[str, str]) -> str:
    """The farm's config text: configs/default.toml, its card profile's fields overridden by
    ``profile`` (TOML values, e.g. ``{"timer_spin_s": "0.0"}``) as an inline table."""
    text = _CONFIG.read_text(encoding="utf-8")
    if not profile:
        return text
    fields = ", ".join(f"{key} = {value}" for key, value in profile.items())
    return text.replace('profile = "910b"', f'profile = {{ base = "910b", {fields} }}', 1)


def _start_farm(
    runtime_dir: Path, cards: int, card_env: dict[str, str], profile: dict[str, str]
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
    env.update({_DIAG_ENV: "1", **card_env})
    config = runtime_dir / "farm.toml"
    config.write_text(farm_config(profile), encoding="utf-8")
    log = open(runtime_dir / "farm.log", "w", encoding="utf-8")  # noqa: SIM115 (the child's)
    cmd = up_command(config, runtime_dir, "tail", cards, "--watch-parent", str(os.getpid()))
    process = subprocess.Popen(
        cmd, cwd=_REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
    )
    log.close()
    deadline = time.monotonic() + 60.0
    while not (runtime_dir / "tail.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            tail = (runtime_dir / "farm.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"farm did not come up: {tail}")
        time.sleep(0.02)
    return process


def _snapshot(groups: dict[str, list[int]]) -> dict[str, dict[int, tuple[int, int]]]:
    return {group: {pid: schedstat_ns(pid) for pid in pids} for group, pids in groups.items()}


def cpu_s(pids: list[int]) -> float:
    """CPU time (user + system, s) of these processes so far (0 for one gone)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _phases(case: dict, workers: int, warmup_s: float, duration_s: float) -> list[Phase]:
    t0 = time.monotonic() + 0.5
    warm_end, end = t0 + warmup_s, t0 + warmup_s + duration_s
    sids = list(range(case["cards"]))
    if case["rate"] is None:
        per_slot = dict.fromkeys(sids)
    else:
        offsets = arrival_offsets(
            case["rate"], "constant", warmup_s=warmup_s, duration_s=duration_s, requests=None
        )
        per_slot = {sid: offsets[sid :: len(sids)] for sid in sids}
    return [
        Phase(0, t0, warm_end, end, False, {s: v for s, v in per_slot.items() if s % workers == i})
        for i in range(workers)
    ]


def _drive(address: str, farm_pid: int, case: dict, model: str, timing: tuple) -> tuple:
    """Spawn the workers, run one phase; (records, run-queue figures)."""
    warmup_s, duration_s = timing
    workers = min(2, case["cards"])
    mp = multiprocessing.get_context("spawn")
    commands = [mp.Queue() for _ in range(workers)]
    results = mp.Queue()
    slots = [(sid, sid) for sid in range(case["cards"])]
    procs = [
        mp.Process(
            target=_worker_main,
            args=(address, [s for s in slots if s[0] % workers == i], model, commands[i], results),
            daemon=True,
        )
        for i in range(workers)
    ]
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            kind, error = results.get(timeout=60.0)
            if kind != "ready" or error:
                raise RuntimeError(f"worker not ready: {error}")
        farm = psutil.Process(farm_pid)
        groups = {
            "broker": [farm_pid],
            "cards": [p.pid for p in farm.children(recursive=True)],
            "clients": [p.pid for p in procs],
            "tail": [os.getpid()],
        }
        phases = _phases(case, workers, warmup_s, duration_s)
        for command, phase in zip(commands, phases):
            command.put(phase)
        time.sleep(max(0.0, phases[0].warm_end - time.monotonic()))
        before, cpu0, psi0 = _snapshot(groups), cpu_s(groups["cards"]), psi_some_us()
        time.sleep(max(0.0, phases[0].end - time.monotonic()))
        after, cpu1, psi1 = _snapshot(groups), cpu_s(groups["cards"]), psi_some_us()
        parts = []
        for _ in procs:
            kind, records, *rest = results.get(timeout=60.0)
            if kind != "records" or (rest and rest[0]):
                raise RuntimeError(f"worker failed: {records if kind == 'error' else rest}")
            parts.append(records)
        waits = run_queue(before, after, duration_s)
        waits["cards"]["cpu_ms_per_s"] = rounded((cpu1 - cpu0) * 1e3 / duration_s)
        if psi0 is not None and psi1 is not None:  # (the host's: what a card's spin rule sees)
            waits["host"] = {"cpu_pressure_share": rounded((psi1 - psi0) / 1e6 / duration_s)}
        return np.concatenate(parts), waits
    finally:
        for proc in procs:
            proc.join(timeout=15.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


def run_case(
    name: str,
    duration_s: float,
    warmup_s: float,
    card_env: dict[str, str] | None = None,
    records_out: Path | None = None,
    profile: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One case (:data:`_CASES`: "1" or "8") on a fresh farm: its decomposition, the
    run-queue waits, the load average, the host's steal time (a VM's vCPUs not run); the raw
    records (:data:`RECORD`) to ``records_out`` (``.npy``) if given."""
    case = _CASES[name]
    with tempfile.TemporaryDirectory(prefix="ntl", dir="/tmp") as tmp:
        runtime_dir = Path(tmp)
        farm = _start_farm(runtime_dir, case["farm_cards"], card_env or {}, profile or {})
        try:
            address = json.loads((runtime_dir / "tail.json").read_text())["endpoint"]
            load0, steal0 = os.getloadavg()[0], _steal_s()
            records, waits = _drive(address, farm.pid, case, str(_MODEL), (warmup_s, duration_s))
            steal_s = _steal_s() - steal0
        finally:
            stop_process(farm)
    if records_out is not None:
        np.save(records_out, records)
    result = decompose(records)
    result.update(run_queue_ms=waits, load_avg=[rounded(load0), rounded(os.getloadavg()[0])])
    result["steal_ms_per_s"] = rounded(steal_s * 1e3 / (duration_s + warmup_s + 1.0))
    return result


def _percentiles(values_ms: np.ndarray) -> dict[str, float]:
    out = {f"p{q:g}": rounded(np.percentile(values_ms, q)) for q in BANDS}
    out["top1_mean"] = rounded(values_ms[values_ms >= np.percentile(values_ms, 99)].mean())
    return out


def host_floor(n: int = 1500, sleep_s: float = 0.0045) -> dict[str, Any]:
    """What this host adds with no farm code at all (ms): how late a ``select`` sleep of
    ``sleep_s`` wakes (1 µs timer slack, as a card's), and a relay of two pipe hops between
    three processes that sleep meanwhile (card -> broker -> client, the way back's wake-ups)."""
    ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, as device/card.py
    hop1, hop2 = os.pipe(), os.pipe()
    relay = os.fork()
    if relay == 0:  # (the "broker": wakes on hop 1, passes it on)
        try:
            os.close(hop1[1])
            os.close(hop2[0])
            while data := os.read(hop1[0], 8):
                os.write(hop2[1], data)
        finally:
            os._exit(0)
    os.close(hop1[0])
    os.close(hop2[1])
    late, relayed = np.empty(n), np.empty(n)
    try:
        for k in range(n):
            due = time.monotonic() + sleep_s
            select.select([], [], [], sleep_s)
            sent = time.monotonic()
            late[k] = sent - due
            os.write(hop1[1], np.float64(sent).tobytes())
            os.read(hop2[0], 8)
            relayed[k] = time.monotonic() - sent
    finally:
        os.close(hop1[1])
        os.waitpid(relay, 0)
        os.close(hop2[0])
    return {"timer_late_ms": _percentiles(late * 1e3), "two_hops_ms": _percentiles(relayed * 1e3)}


def _steal_s() -> float:
    """The host's steal time so far (all CPUs, s; /proc/stat), 0 where unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tail", description=__doc__)
    parser.add_argument("--case", choices=("1", "8", "all"), default="all")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case, interleaved")
    parser.add_argument(
        "--card-env", action="append", default=[], metavar="K=V", help="farm environment"
    )
    parser.add_argument(
        "--profile-set",
        action="append",
        default=[],
        metavar="K=V",
        help="card profile field (TOML value), e.g. timer_spin_s=0.0",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--records", default=None, help="save each run's raw records in DIR")
    parser.add_argument("--markdown", action="store_true", help="only the table, on stdout")
    parser.add_argument("--no-floor", action="store_true", help="skip the host's own floor")
    parser.add_argument("--quick", action="store_true", help="4 s runs, no host floor")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration_s, args.warmup_s, args.no_floor = 4.0, 0.5, True
    logging.basicConfig(level=logging.WARNING)
    card_env = dict(item.split("=", 1) for item in args.card_env)
    profile = dict(item.split("=", 1) for item in args.profile_set)
    names = ["1", "8"] if args.case == "all" else [args.case]
    results: dict[str, Any] = {}
    for run in range(args.repeat):
        for name in names:
            key = f"{name}card{'s' if name != '1' else ''}" + (f"#{run + 1}" if run else "")
            raw = Path(args.records) / f"{key.replace('#', '-')}.npy" if args.records else None
            if raw is not None:
                raw.parent.mkdir(parents=True, exist_ok=True)
            results[key] = run_case(name, args.duration_s, args.warmup_s, card_env, raw, profile)
    out = {"benchmark": "tail", "card_env": card_env, "profile": profile, "cases": results}
    if not args.no_floor:
        out["host_floor"] = host_floor()
        floor = out["host_floor"]
        text = ", ".join(
            f"{name} p50 {v['p50']:.3f} p99 {v['p99']:.3f} p99.9 {v['p99.9']:.3f}"
            for name, v in floor.items()
        )
        logger.warning("host floor (ms): %s", text)
    emit(out, table(results), args.out, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
