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

Every helper process is started with the ``spawn`` context and creates its own ``zmq.Context``;
sockets are closed with linger 0, processes joined (then terminated/killed if they do not stop),
IPC temp dirs and shm files removed, also on errors. :class:`EchoRig` owns one broker+worker (or one
direct echo process) and can be passed to several measurements to pay the start-up cost once.

Run ``python -m benchmarks.raw [--quick] [--out FILE]`` to print all baselines as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import msgpack
import numpy as np
import zmq

__all__ = [
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

# Frame vocabulary. It mirrors the farm's MDP-style protocol (DESIGN.md section 3) but is private
# to this module on purpose: the baseline must not depend on the code it is a baseline for.
CLIENT_HDR = b"NPUC01"
WORKER_HDR = b"NPUW01"
CMD_REQUEST = b"\x01"
CMD_READY = b"\x02"
CMD_REPLY = b"\x03"
CMD_PING = b"\x04"
CMD_PONG = b"\x05"
CMD_ERROR = b"\x06"
CMD_STOP = b"\x7f"
DEVICE_ID = (0).to_bytes(2, "big")

SHM_DIR = "/dev/shm"
SHM_PREFIX = "npufarm-bench-"
MIB = 1 << 20

_IDLE_POLL_MS = 500  # helpers wake this often when idle, to notice an orphaning
_BURST = 256  # max messages drained from one socket per poll wake-up
_RECV_TIMEOUT_MS = 5000  # client side: a reply slower than this means the rig is broken
_STOP_ACK_S = 1.0  # broker waits this long for workers to acknowledge STOP
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ECHO_CONFIGS = ((1, 1), (16, 1), (64, 1), (16, 16), (64, 16))


# --------------------------------------------------------------------------------------------
# helper processes (module-level so that the spawn context can import them)
# --------------------------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _child_signals() -> None:
    """SIGTERM unwinds through the finally blocks; Ctrl-C is left to the parent, which stops us."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _orphaned(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


def _safe_send(sock: zmq.Socket, frames: list[bytes]) -> None:
    try:
        sock.send_multipart(frames)
    except zmq.ZMQError as exc:  # EHOSTUNREACH (ROUTER_MANDATORY) or EAGAIN (SNDTIMEO)
        log.warning("raw bench: dropped a message: %s", exc)


def _bound_router(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.bind(endpoint)
    return sock


def _broker_main(front_ep: str, back_ep: str, parent_pid: int) -> None:
    """Broker process: ROUTER front (clients), ROUTER back (workers), manual poll loop."""
    _child_signals()
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []
    try:
        front = _bound_router(ctx, front_ep)
        socks.append(front)
        back = _bound_router(ctx, back_ep)
        socks.append(back)
        _broker_loop(front, back, parent_pid)
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


def _broker_loop(front: zmq.Socket, back: zmq.Socket, parent_pid: int) -> None:
    workers: dict[bytes, bytes] = {}  # device id -> worker identity
    devices: dict[bytes, bytes] = {}  # worker identity -> device id
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        ready = dict(poller.poll(_IDLE_POLL_MS))
        if not ready:
            if _orphaned(parent_pid):
                log.warning("raw bench broker: parent gone, exiting")
                return
            continue
        if back in ready:
            for _ in range(_BURST):
                if not back.get(zmq.EVENTS) & zmq.POLLIN:
                    break
                _broker_on_back(back.recv_multipart(zmq.NOBLOCK), front, workers, devices)
        if front in ready:
            for _ in range(_BURST):
                if not front.get(zmq.EVENTS) & zmq.POLLIN:
                    break
                frames = front.recv_multipart(zmq.NOBLOCK)
                if _broker_on_front(frames, front, back, workers):
                    _broker_stop_workers(back, devices)
                    _safe_send(front, [frames[0], b"", CLIENT_HDR, CMD_STOP, frames[4], b""])
                    return


def _broker_on_front(
    frames: list[bytes], front: zmq.Socket, back: zmq.Socket, workers: dict[bytes, bytes]
) -> bool:
    """Handle ``[client, b"", NPUC01, cmd, dev, payload]``; return True on STOP."""
    if len(frames) != 6 or frames[1] != b"" or frames[2] != CLIENT_HDR:
        log.warning("raw bench broker: dropped malformed client message (%d frames)", len(frames))
        return False
    client, cmd, dev = frames[0], frames[3], frames[4]
    if cmd == CMD_REQUEST:
        worker = workers.get(dev)
        if worker is None:
            _safe_send(front, [client, b"", CLIENT_HDR, CMD_ERROR, dev, b""])
        else:
            _safe_send(back, [worker, b"", WORKER_HDR, CMD_REQUEST, client, frames[5]])
    elif cmd == CMD_PING:
        state = b"\x01" if dev in workers else b"\x00"
        _safe_send(front, [client, b"", CLIENT_HDR, CMD_PONG, dev, state])
    elif cmd == CMD_STOP:
        return True
    else:
        log.warning("raw bench broker: unknown client command %r", cmd)
    return False


def _broker_on_back(
    frames: list[bytes],
    front: zmq.Socket,
    workers: dict[bytes, bytes],
    devices: dict[bytes, bytes],
) -> None:
    """Handle ``[worker, b"", NPUW01, cmd, ...]``."""
    if len(frames) < 4 or frames[1] != b"" or frames[2] != WORKER_HDR:
        log.warning("raw bench broker: dropped malformed worker message (%d frames)", len(frames))
        return
    worker, cmd = frames[0], frames[3]
    if cmd == CMD_REPLY and len(frames) == 6:
        dev = devices.get(worker)
        if dev is None:
            log.warning("raw bench broker: reply from unregistered worker")
        else:
            _safe_send(front, [frames[4], b"", CLIENT_HDR, CMD_REPLY, dev, frames[5]])
    elif cmd == CMD_READY and len(frames) == 5:
        workers[frames[4]] = worker
        devices[worker] = frames[4]
    else:
        log.warning("raw bench broker: unexpected worker command %r", cmd)


def _broker_stop_workers(back: zmq.Socket, devices: dict[bytes, bytes]) -> None:
    """Send STOP to every worker and wait (bounded) for the acks, so linger 0 loses nothing."""
    pending = set(devices)
    for worker in devices:
        _safe_send(back, [worker, b"", WORKER_HDR, CMD_STOP])
    deadline = time.monotonic() + _STOP_ACK_S
    while pending:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0 or not back.poll(remaining_ms):
            log.warning("raw bench broker: %d worker(s) did not ack STOP", len(pending))
            return
        frames = back.recv_multipart(zmq.NOBLOCK)
        if len(frames) >= 4 and frames[3] == CMD_STOP:
            pending.discard(frames[0])


def _worker_main(back_ep: str, device_id: bytes, parent_pid: int) -> None:
    """Echo worker behind the broker: DEALER, registers ``device_id``, echoes payloads raw."""
    _child_signals()
    ctx = zmq.Context()
    sock = None
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(back_ep)
        sock.send_multipart([b"", WORKER_HDR, CMD_READY, device_id])
        while True:
            if not sock.poll(_IDLE_POLL_MS):
                if _orphaned(parent_pid):
                    log.warning("raw bench worker: parent gone, exiting")
                    return
                continue
            for _ in range(_BURST):
                if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                    break
                frames = sock.recv_multipart(zmq.NOBLOCK)
                # [b"", NPUW01, cmd, client, payload]
                if len(frames) < 3 or frames[0] != b"" or frames[1] != WORKER_HDR:
                    log.warning("raw bench worker: dropped malformed message")
                elif frames[2] == CMD_REQUEST and len(frames) == 5:
                    sock.send_multipart([b"", WORKER_HDR, CMD_REPLY, frames[3], frames[4]])
                elif frames[2] == CMD_STOP:
                    sock.send_multipart([b"", WORKER_HDR, CMD_STOP])
                    return
                else:
                    log.warning("raw bench worker: unexpected command %r", frames[2])
    finally:
        if sock is not None:
            sock.close(linger=0)
        ctx.term()


def _direct_main(endpoint: str, parent_pid: int) -> None:
    """Direct echo process: ROUTER bound at ``endpoint``, speaks the client frames itself."""
    _child_signals()
    ctx = zmq.Context()
    sock = None
    try:
        sock = _bound_router(ctx, endpoint)
        while True:
            if not sock.poll(_IDLE_POLL_MS):
                if _orphaned(parent_pid):
                    log.warning("raw bench direct echo: parent gone, exiting")
                    return
                continue
            for _ in range(_BURST):
                if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                    break
                frames = sock.recv_multipart(zmq.NOBLOCK)
                # [client, b"", NPUC01, cmd, dev, payload]
                if len(frames) != 6 or frames[1] != b"" or frames[2] != CLIENT_HDR:
                    log.warning("raw bench direct echo: dropped malformed message")
                    continue
                cmd = frames[3]
                if cmd == CMD_REQUEST:
                    frames[3] = CMD_REPLY
                    _safe_send(sock, frames)
                elif cmd == CMD_PING:
                    _safe_send(sock, [frames[0], b"", CLIENT_HDR, CMD_PONG, frames[4], b"\x01"])
                elif cmd == CMD_STOP:
                    _safe_send(sock, [frames[0], b"", CLIENT_HDR, CMD_STOP, frames[4], b""])
                    return
                else:
                    log.warning("raw bench direct echo: unknown command %r", cmd)
    finally:
        if sock is not None:
            sock.close(linger=0)
        ctx.term()


# --------------------------------------------------------------------------------------------
# the rig: helper processes + the client socket living in this process
# --------------------------------------------------------------------------------------------


def _reap(proc: mp.process.BaseProcess, timeout_s: float) -> None:
    """Join ``proc``; escalate to SIGTERM then SIGKILL if it does not exit in time."""
    if proc.pid is None:  # never started
        return
    proc.join(timeout_s)
    if proc.exitcode is None:
        log.warning("raw bench: %s did not stop, terminating", proc.name)
        proc.terminate()
        proc.join(2.0)
    if proc.exitcode is None:
        log.warning("raw bench: %s ignored SIGTERM, killing", proc.name)
        proc.kill()
        proc.join()
    proc.close()


class EchoRig:
    """Echo helpers in their own processes plus a client DEALER in this process.

    ``EchoRig()`` starts a broker and one echo worker (3 hops each way);
    ``EchoRig(direct=True)`` starts a single echo process the client talks to directly (1 hop).
    Use as a context manager; ``close()`` is idempotent and always reaps everything.
    """

    def __init__(self, direct: bool = False, start_timeout_s: float = 20.0) -> None:
        self.direct = direct
        self.start_timeout_s = start_timeout_s
        self.tmpdir: str | None = None
        self.pids: dict[str, int] = {}
        self._procs: list[mp.process.BaseProcess] = []
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> EchoRig:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> EchoRig:
        if self._procs:
            raise RuntimeError("EchoRig already started")
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        base = tempfile.gettempdir()
        if len(base) > 60:  # ipc:// paths are limited to ~107 bytes
            base = "/tmp"
        self.tmpdir = tempfile.mkdtemp(prefix=SHM_PREFIX, dir=base)
        spawn = mp.get_context("spawn")
        me = os.getpid()
        if self.direct:
            client_ep = f"ipc://{self.tmpdir}/direct"
            specs = [("direct", _direct_main, (client_ep, me))]
        else:
            client_ep = f"ipc://{self.tmpdir}/front"
            back_ep = f"ipc://{self.tmpdir}/back"
            specs = [
                ("broker", _broker_main, (client_ep, back_ep, me)),
                ("worker", _worker_main, (back_ep, DEVICE_ID, me)),
            ]
        for role, target, args in specs:
            proc = spawn.Process(
                target=target, args=args, name=f"npufarm-bench-{role}", daemon=True
            )
            self._procs.append(proc)
            proc.start()
            self.pids[role] = proc.pid
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, _RECV_TIMEOUT_MS)
        self._sock.setsockopt(zmq.SNDTIMEO, _RECV_TIMEOUT_MS)
        self._sock.connect(client_ep)
        self._wait_ready()

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.exitcode is not None:
                raise RuntimeError(f"{proc.name} exited early (exit code {proc.exitcode})")

    def _wait_ready(self) -> None:
        """PING until the broker has the worker registered (or the direct echo answers)."""
        assert self._sock is not None
        deadline = time.perf_counter() + self.start_timeout_s
        while True:
            self.send(b"", CMD_PING)  # one ping outstanding at a time: no stale PONGs later
            while not self._sock.poll(100):
                self._check_alive()
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"echo rig not ready after {self.start_timeout_s} s")
            cmd, payload = self.recv()
            if cmd == CMD_PONG and payload == b"\x01":
                return
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self._request_stop()
        finally:
            try:
                if self._sock is not None:
                    self._sock.close(linger=0)
                    self._sock = None
                if self._ctx is not None:
                    self._ctx.term()
                    self._ctx = None
            finally:
                try:
                    while self._procs:
                        _reap(self._procs.pop(), timeout_s=3.0)
                finally:
                    if self.tmpdir is not None:
                        shutil.rmtree(self.tmpdir, ignore_errors=True)
                        self.tmpdir = None

    def _request_stop(self) -> None:
        """Ask the front process to stop (it stops the worker); bounded wait for the ack."""
        sock = self._sock
        if sock is None or not any(p.exitcode is None for p in self._procs):
            return
        try:
            sock.send_multipart([b"", CLIENT_HDR, CMD_STOP, DEVICE_ID, b""], zmq.NOBLOCK)
            deadline = time.monotonic() + _STOP_ACK_S + 1.5
            while (remaining_ms := int((deadline - time.monotonic()) * 1000)) > 0:
                if not sock.poll(remaining_ms):
                    break
                frames = sock.recv_multipart(zmq.NOBLOCK)
                if len(frames) >= 3 and frames[2] == CMD_STOP:
                    return
            log.warning("raw bench: no STOP ack, relying on join/terminate")
        except zmq.ZMQError as exc:
            log.warning("raw bench: could not send STOP: %s", exc)

    # -- client operations -------------------------------------------------------------------

    def send(self, payload: bytes, cmd: bytes = CMD_REQUEST) -> None:
        assert self._sock is not None, "EchoRig not started"
        self._sock.send_multipart([b"", CLIENT_HDR, cmd, DEVICE_ID, payload])

    def recv(self) -> tuple[bytes, bytes]:
        """Receive one reply; return ``(cmd, payload)``."""
        assert self._sock is not None, "EchoRig not started"
        try:
            frames = self._sock.recv_multipart()
        except zmq.Again:
            self._check_alive()
            raise TimeoutError(f"no echo reply within {_RECV_TIMEOUT_MS} ms") from None
        if len(frames) != 5 or frames[0] != b"" or frames[1] != CLIENT_HDR:
            raise RuntimeError(f"malformed reply ({len(frames)} frames)")
        if frames[2] == CMD_ERROR:
            raise RuntimeError("broker has no worker for the device")
        return frames[2], frames[4]


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

    packb, unpackb = msgpack.packb, msgpack.unpackb
    next_id = 0

    def make() -> bytes:
        nonlocal next_id
        if batch == 1:
            obj: Any = _task(next_id)
        else:
            obj = [_task(next_id + k) for k in range(batch)]
        next_id += batch
        return packb(obj, use_bin_type=True)

    payload_bytes = len(make())
    pids = [rig.pids["broker"], rig.pids["worker"], os.getpid()]
    for _ in range(in_flight):
        rig.send(make())
    outstanding = in_flight
    done = 0
    t_measure = time.perf_counter() + warmup_s
    t_stop = t_measure + duration_s
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

    window = t1 - t0
    msgs = n1 - n0
    broker_cpu, worker_cpu, client_cpu = (b - a for a, b in zip(cpu0, cpu1))
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
