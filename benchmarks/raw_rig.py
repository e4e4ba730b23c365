"""The raw baselines' echo rig: helper processes and the client socket, with no farm logic.

:class:`EchoRig` starts, in ``spawn`` processes over ``ipc://``, either a minimal Python
ROUTER/ROUTER broker that routes by a 2-byte device-id frame (like the farm's broker) plus one echo
worker behind it (3 hops each way), or a single echo process the client talks to directly (1 hop),
and holds the client DEALER in this process. :mod:`benchmarks.raw` measures through it.

Every helper process creates its own ``zmq.Context``; sockets are closed with linger 0, processes
joined (then terminated/killed if they do not stop), the IPC temp dir removed, also on errors.
Helpers poll their parent and exit if it is gone.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from types import TracebackType

import zmq

__all__ = [
    "CLIENT_HDR",
    "CMD_ERROR",
    "CMD_PING",
    "CMD_PONG",
    "CMD_READY",
    "CMD_REPLY",
    "CMD_REQUEST",
    "CMD_STOP",
    "DEVICE_ID",
    "SHM_PREFIX",
    "WORKER_HDR",
    "EchoRig",
]

log = logging.getLogger(__name__)

# Frame vocabulary. It mirrors the farm's MDP-style protocol (DESIGN.md section 3) but is private
# to the raw baselines on purpose: the baseline must not depend on the code it is a baseline for.
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

SHM_PREFIX = "npufarm-bench-"  # temp dirs and shm files of the raw baselines

_IDLE_POLL_MS = 500  # helpers wake this often when idle, to notice an orphaning
_BURST = 256  # max messages drained from one socket per poll wake-up
_RECV_TIMEOUT_MS = 5000  # client side: a reply slower than this means the rig is broken
_STOP_ACK_S = 1.0  # broker waits this long for workers to acknowledge STOP


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
