"""Starting, watching and stopping card processes.

Cards are started from a forkserver that has preloaded numpy, pyzmq and the card module, so a
card starts in milliseconds and inherits no ZeroMQ state from the farm process (which holds
sockets and must never plain-fork). Each process's sentinel is an fd the broker polls beside its
sockets: a card that dies is seen at once, not at the next heartbeat.

Nothing here waits for a process while the farm runs (the broker loop must never block): a
replaced or lost card is killed and parked in :attr:`Supervisor.reaping` until its sentinel
fires, then reaped (:meth:`Supervisor.reap`). Only :meth:`Supervisor.stop_all` (shutdown) waits.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path

from core.config import FarmConfig
from core.faults import FaultPlan
from device.card import CardSpec, run_card
from device.memory import check_shm_capacity

__all__ = ["Supervisor", "Spawner", "sweep_segments"]

logger = logging.getLogger(__name__)

_STOP_GRACE_S = 2.0


def sweep_segments(farm_id: str, shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink every shared-memory segment of this farm (cards' HBM, clients' pinned memory)."""
    prefix = f"npufarm-{farm_id}-"
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(shm_dir, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


class Supervisor:
    """Card processes of one farm, by device id."""

    def __init__(self, config: FarmConfig, farm_id: str, backend: str) -> None:
        self.config = config
        self.farm_id = farm_id
        self.backend = backend
        self.processes: dict[int, BaseProcess] = {}
        self.sentinels: dict[int, int] = {}  # sentinel fd -> device id
        self.reaping: dict[int, BaseProcess] = {}  # sentinel fd -> killed process, not reaped
        self.plan = FaultPlan(seed=config.seed)  # the farm's current fault plan (broker sets it)
        self.fired: dict[tuple[int, int], int] = {}  # (rule id, card) -> times fired, any epoch
        self.farm_start_s = 0.0
        self._mp = multiprocessing.get_context("forkserver")
        self._mp.set_forkserver_preload(["device.card"])

    def check_capacity(self) -> None:
        check_shm_capacity(sum(c.profile.hbm_bytes for c in self.config.cards))

    def card_spec(self, device_id: int, epoch: int) -> CardSpec:
        card = next(c for c in self.config.cards if c.device_id == device_id)
        profile = card.profile
        return CardSpec(
            farm_id=self.farm_id,
            device_id=device_id,
            epoch=epoch,
            backend=self.backend,
            hbm_bytes=profile.hbm_bytes,
            soc_name=profile.soc_name,
            speed_factor=profile.speed_factor,
            jitter_sigma=profile.jitter_sigma,
            exec_slots=profile.exec_slots,
            time_scale=self.config.time_scale,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            heartbeat_liveness=self.config.heartbeat_liveness,
            seed=self.config.seed,
            min_completion_delay_s=self.config.min_completion_delay_s,
            op_timeout_s=profile.op_timeout_s,
            farm_start_s=self.farm_start_s,
            faults=self.card_plan(device_id).to_dict() if self.plan.rules else None,
            intra_op_threads=profile.intra_op_threads,
            cpu_affinity=profile.to_dict()["cpu_affinity"] or None,  # msgpack: list or "auto"
            timer_spin_s=profile.timer_spin_s,
        )

    def card_plan(self, device_id: int) -> FaultPlan:
        """The card's rules for a new epoch: ``count`` is farm-wide, so a rule that already
        fired its count on this card (in an earlier epoch) does not fire again after a restart."""
        plan = self.plan.for_card(device_id)
        rules, ids = [], []
        for rule, rule_id in zip(plan.rules, plan.rule_ids):
            fired = self.fired.get((rule_id, device_id), 0)
            if rule.count is not None:
                if fired >= rule.count:
                    continue
                rule = dataclasses.replace(rule, count=rule.count - fired)
            rules.append(rule)
            ids.append(rule_id)
        return FaultPlan(plan.seed, tuple(rules), tuple(ids))

    def start(self, device_id: int, epoch: int) -> int:
        """Start a card process now (blocking: tests and tools); return its pid."""
        self.forget(device_id)
        process = self.spawn(device_id, self.card_spec(device_id, epoch).to_dict())
        self.adopt(device_id, epoch, process)
        return process.pid

    def spawn(self, device_id: int, spec: dict) -> BaseProcess:
        """Start a card process from its spec (any thread: touches no supervisor state). It
        waits for the forkserver, which can take long on a loaded box: the broker calls it from
        its spawner thread, never from its loop."""
        process = self._mp.Process(
            target=run_card, args=(spec,), name=f"npufarm-card{device_id}", daemon=True
        )
        process.start()
        return process

    def adopt(self, device_id: int, epoch: int, process: BaseProcess) -> None:
        """Watch a spawned card process (the loop thread)."""
        self.forget(device_id)
        self.processes[device_id] = process
        self.sentinels[process.sentinel] = device_id
        logger.info("card %d epoch %d started, pid %d", device_id, epoch, process.pid)

    def park(self, process: BaseProcess) -> None:
        """A spawned process nobody wants any more (its epoch was superseded): kill, reap later."""
        if process.is_alive():
            process.kill()
        self.reaping[process.sentinel] = process

    def forget(self, device_id: int) -> None:
        """Stop watching a card's process: killed if alive, and parked in :attr:`reaping` until
        the broker sees its sentinel fire and calls :meth:`reap` (never waits here; the fd stays
        open until then, so its number is not reused while the broker's poller holds it)."""
        process = self.processes.pop(device_id, None)
        if process is None:
            return
        self.sentinels.pop(process.sentinel, None)
        if process.is_alive():
            process.kill()
        self.reaping[process.sentinel] = process

    def reap(self, fd: int) -> None:
        """A parked process's sentinel fired: collect its exit status and release it."""
        process = self.reaping.pop(fd, None)
        if process is not None:
            process.join(timeout=0)
            if process.is_alive():  # a spurious wake-up: watch it again
                self.reaping[fd] = process
            else:
                process.close()

    def kill(self, device_id: int) -> None:
        process = self.processes.get(device_id)
        if process is not None and process.is_alive():
            process.kill()

    def stop_all(self) -> None:
        """Wait for cards told to DISCONNECT, then terminate and kill stragglers."""
        for process in self.processes.values():
            process.join(timeout=_STOP_GRACE_S)
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
                process.join(timeout=_STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join(timeout=_STOP_GRACE_S)
        for device_id in list(self.processes):
            self.forget(device_id)
        for process in self.reaping.values():
            process.join(timeout=_STOP_GRACE_S)
            if not process.is_alive():
                process.close()
        self.reaping.clear()
        removed = sweep_segments(self.farm_id)
        if removed:
            logger.info("swept %d leftover shm segments", len(removed))

    def pid(self, device_id: int) -> int:
        process = self.processes.get(device_id)
        return process.pid if process is not None else 0


class Spawner:
    """One thread that starts card processes in order, so the broker loop never waits for the
    forkserver (starting 256 cards takes seconds; the loop keeps heartbeating meanwhile).
    ``notify`` is called (from the thread) after each start; the loop then takes the results
    with :meth:`done`."""

    def __init__(self, supervisor: Supervisor, notify: Callable[[], None]) -> None:
        self.supervisor = supervisor
        self.notify = notify
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.pending = 0  # requested, not yet taken back by done()

    def request(self, device_id: int, epoch: int, spec: dict) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="npufarm-spawner", daemon=True)
            self._thread.start()
        self.pending += 1
        self._requests.put((device_id, epoch, spec))

    def _run(self) -> None:
        while (item := self._requests.get()) is not None:
            device_id, epoch, spec = item
            try:
                result = (device_id, epoch, self.supervisor.spawn(device_id, spec), None)
            except Exception as exc:  # reported to the loop: the card is lost
                result = (device_id, epoch, None, exc)
            self._results.put(result)
            self.notify()

    def done(self) -> list[tuple[int, int, BaseProcess | None, Exception | None]]:
        results = []
        while True:
            try:
                results.append(self._results.get_nowait())
            except queue.Empty:
                self.pending -= len(results)
                return results

    def close(self, timeout_s: float = 30.0) -> None:
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(timeout_s)


def ipc_path(address: str) -> Path | None:
    return Path(address[len("ipc://") :]) if address.startswith("ipc://") else None
