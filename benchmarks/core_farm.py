"""The benchmark's farm: a ``python -m npufarm up`` subprocess, an ACL session against it, and
the streams (:class:`Slot`) the measurements drive.

Every farm has a private temp config (``time_scale`` 0, default heartbeats), a private runtime dir
and ``--watch-parent``; it is SIGTERMed and waited for (killed after a timeout), its temp dir
removed, and its ``/dev/shm`` segments checked (and swept if anything was left). ``NPUFARM_*``
variables are not passed on. ``acl.finalize()`` always runs before a farm is stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.admin import up_command

__all__ = [
    "HEARTBEAT_S",
    "MIB",
    "REPO",
    "SHM_DIR",
    "ZERO_MODEL",
    "BenchError",
    "FarmProcess",
    "Slot",
    "acl_ok",
    "acl_out",
    "acl_session",
    "interleave",
    "load_acl",
    "setup_slots",
    "shm_free",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ZERO_MODEL = REPO / "configs" / "models" / "zero.toml"
SHM_DIR = "/dev/shm"
MIB = 1 << 20
HEARTBEAT_S = 0.25  # the default config's heartbeat, so idle CPU is what users see

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


class BenchError(RuntimeError):
    """An ACL call failed or a farm misbehaved during the benchmark."""


def load_acl() -> Any:
    """The ``acl`` module, imported on first use.

    Deferred on purpose: ``python -m benchmarks.core`` is the ``__main__`` that every ``spawn``
    helper of the raw baselines re-imports (with this module), and a module-level ``import acl``
    would load the whole client runtime into those helpers and into this process before the
    baselines are measured; the client is only needed once a farm runs.
    """
    import acl

    return acl


def acl_ok(ret: int, what: str) -> None:
    """Raise :class:`BenchError` (with ACL's recent error message) unless ``ret`` is 0."""
    if ret != 0:
        detail = load_acl().get_recent_err_msg()
        raise BenchError(f"{what} failed with {ret}" + (f": {detail}" if detail else ""))


def acl_out(result: tuple, what: str) -> Any:
    """The value(s) of a pyACL ``(..., ret)`` tuple, after :func:`acl_ok` on ``ret``."""
    *values, ret = result
    acl_ok(ret, what)
    return values[0] if len(values) == 1 else tuple(values)


# --------------------------------------------------------------------------------------------
# farm processes
# --------------------------------------------------------------------------------------------


def _config_text(name: str, hbm: str, cards: int, profile_keys: str = "") -> str:
    return (
        "# written by benchmarks.core\n"
        "[farm]\n"
        f'name = "{name}"\n'
        'endpoint = "ipc"\n'
        "time_scale = 0.0\n"
        f"heartbeat_interval_s = {HEARTBEAT_S}\n"
        "heartbeat_liveness = 4\n"
        'sanitizer = "off"\n'
        "seed = 0\n"
        "[cards]\n"
        f"count = {cards}\n"
        f'profile = {{ base = "910b", name = "910b-bench", hbm_bytes = "{hbm}"{profile_keys} }}\n'
    )


def shm_free() -> int:
    """Bytes free in /dev/shm."""
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


class FarmProcess:
    """A ``python -m npufarm up`` subprocess with its own temp config and runtime dir.

    ``start()`` returns once the state file exists; ``stop()`` SIGTERMs, waits (kills after a
    timeout), sweeps leftover shm segments of this farm and removes the temp dir. Idempotent.
    """

    _seq = 0

    def __init__(self, cards: int, hbm: str = "256MiB", profile_keys: str = "") -> None:
        FarmProcess._seq += 1
        self.cards = cards
        self.hbm = hbm
        self.profile_keys = profile_keys  # more card profile keys, e.g. ', cpu_affinity = "auto"'
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
            config.write_text(_config_text(self.name, self.hbm, self.cards, self.profile_keys))
            state_file = Path(self.tmpdir, f"{self.name}.json")
            env = {k: v for k, v in os.environ.items() if not k.startswith("NPUFARM_")}
            extra = ("--time-scale", "0", "--watch-parent", str(os.getpid()))
            cmd = up_command(config, self.tmpdir, self.name, self.cards, *extra)
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
    acl = load_acl()
    old = os.environ.get("NPUFARM_ADDRESS")
    os.environ["NPUFARM_ADDRESS"] = endpoint
    try:
        acl_ok(acl.init(), "acl.init")
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
    acl = load_acl()
    by_card: list[list[Slot]] = []
    for dev in range(n_cards):
        acl_ok(acl.rt.set_device(dev), f"set_device({dev})")
        ctx = acl_out(acl.rt.create_context(dev), "create_context")
        slots = []
        for _ in range(per_card):
            stream = acl_out(acl.rt.create_stream(), "create_stream")
            model = acl_out(acl.mdl.load_from_file(str(ZERO_MODEL)), "load_from_file")
            desc = acl.mdl.create_desc()
            acl_ok(acl.mdl.get_desc(desc, model), "get_desc")
            datasets = []
            for size_of in (acl.mdl.get_input_size_by_index, acl.mdl.get_output_size_by_index):
                size = size_of(desc, 0)
                ptr = acl_out(acl.rt.malloc(size, 0), "malloc")
                ds = acl.mdl.create_dataset()
                acl_out(acl.mdl.add_dataset_buffer(ds, acl.create_data_buffer(ptr, size)), "add")
                datasets.append(ds)
            acl_ok(acl.mdl.destroy_desc(desc), "destroy_desc")
            slots.append(Slot(dev, ctx, stream, model, datasets[0], datasets[1]))
        by_card.append(slots)
    return by_card


def interleave(by_card: list[list[Slot]], count: int) -> list[Slot]:
    """``count`` slots taken round-robin over the cards (card 0, 1, ..., 0, 1, ...)."""
    order = [card[i] for i in range(max(map(len, by_card))) for card in by_card if i < len(card)]
    if count > len(order):
        raise ValueError(f"need {count} slots, have {len(order)}")
    return order[:count]
