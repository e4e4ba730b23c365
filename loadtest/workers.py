"""The worker-process side of ``npufarm bench`` (:mod:`loadtest.loadgen` is the parent side and
has the data-flow diagram): :func:`worker_main` is the entry of a spawned worker process; its
:class:`Worker` runs one :class:`Slot` thread per (card, stream) it was dealt, each with its
own ACL objects and request loop, and sends the samples to the parent in numpy batches
(:data:`loadtest.schema.SAMPLE_DTYPE`) every :data:`FLUSH_S`, then each phase's CPU time. The
messages both ways are the dataclasses of :mod:`loadtest.messages`.
Importing ``acl`` connects nothing: :func:`worker_main` sets ``NPUFARM_ADDRESS`` before
``acl.init()``, which is where the farm is found.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque

import numpy as np

import acl
from core.errors import ACL_ERROR_RT_LOST_HEARTBEAT
from loadtest.messages import (
    STOP,
    Bye,
    Command,
    Phase,
    PhaseDone,
    Ready,
    Samples,
    Stop,
    WorkerError,
)
from loadtest.schema import SAMPLE_DTYPE

__all__ = ["FLUSH_S", "Slot", "Worker", "worker_main"]

logger = logging.getLogger(__name__)

_H2D, _D2H = 1, 2
_STREAM_SYNC_TIMEOUT = 0  # exec-config attribute ACL_MDL_STREAM_SYNC_TIMEOUT
FLUSH_S = 0.1  # a worker sends its samples this often (the parent polls its queue as often)
_DRAIN_GRACE_S = 2.0
_ERROR_PAUSE_S = 0.001
_RECOVER_RETRY_S = 0.05
_LOST = 507010  # ACL_ERROR_RT_LOST_HEARTBEAT: the slot resets the device and reopens it


class Slot(threading.Thread):
    """One (card, stream) of a worker: its ACL objects and its request loop."""

    def __init__(self, worker: Worker, slot_id: int, card: int) -> None:
        super().__init__(name=f"slot{slot_id}", daemon=True)
        self.w, self.slot_id, self.card = worker, slot_id, card
        self.inbox: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.setup_error: str | None = None
        self.missed = 0

    def _check(self, ret: int, what: str) -> None:
        if ret != 0:
            raise RuntimeError(f"card {self.card}: {what} returned {ret}")

    def setup(self) -> None:
        acl, w = self.w.acl, self.w
        ret = acl.rt.set_device(self.card)
        if ret == ACL_ERROR_RT_LOST_HEARTBEAT:
            # a card lost before this process opened it is lost for it too, until its own
            # reset (as on hardware); the next attempt's set_device restarts the card
            acl.rt.reset_device(self.card)
        self._check(ret, "set_device")
        self.holds_device = True
        self.context, ret = acl.rt.create_context(self.card)
        self._check(ret, "create_context")
        self.stream, ret = acl.rt.create_stream()
        self._check(ret, "create_stream")
        self.model_id, ret = acl.mdl.load_from_file(w.model)
        self._check(ret, f"load_from_file({w.model})")
        self.desc = acl.mdl.create_desc()
        self._check(acl.mdl.get_desc(self.desc, self.model_id), "get_desc")
        rng = np.random.default_rng(self.slot_id)
        self.ins, self.outs, self.buffers = [], [], []
        self.datasets = (acl.mdl.create_dataset(), acl.mdl.create_dataset())
        for dataset, count, size_of, host_list in (
            (self.datasets[0], acl.mdl.get_num_inputs, acl.mdl.get_input_size_by_index, self.ins),
            (
                self.datasets[1],
                acl.mdl.get_num_outputs,
                acl.mdl.get_output_size_by_index,
                self.outs,
            ),
        ):
            for index in range(count(self.desc)):
                size = size_of(self.desc, index)
                ptr, ret = acl.rt.malloc(size, 0)
                self._check(ret, "malloc")
                host = rng.standard_normal(size // 4).astype(np.float32).view(np.uint8)
                host = np.concatenate([host, np.zeros(size - host.size, np.uint8)])
                host_list.append((ptr, size, host, acl.util.numpy_to_ptr(host)))
                buffer = acl.create_data_buffer(ptr, size)
                self.buffers.append(buffer)
                self._check(acl.mdl.add_dataset_buffer(dataset, buffer)[1], "add_dataset_buffer")
        self.config = acl.mdl.create_exec_config_handle()
        ret = acl.mdl.set_exec_config_opt(self.config, _STREAM_SYNC_TIMEOUT, w.sync_timeout_ms)
        self._check(ret, "set_exec_config_opt")

    def teardown(self) -> None:
        acl = self.w.acl
        for call, *args in (
            (acl.mdl.destroy_exec_config_handle, getattr(self, "config", None)),
            *((acl.destroy_data_buffer, b) for b in getattr(self, "buffers", ())),
            *((acl.mdl.destroy_dataset, d) for d in getattr(self, "datasets", ())),
            *((acl.rt.free, h[0]) for h in (*getattr(self, "ins", ()), *getattr(self, "outs", ()))),
            (acl.mdl.unload, getattr(self, "model_id", None)),
            (acl.mdl.destroy_desc, getattr(self, "desc", None)),
            (acl.rt.destroy_stream, getattr(self, "stream", None)),
            (acl.rt.destroy_context, getattr(self, "context", None)),
        ):
            if args[0] is not None:
                with contextlib.suppress(Exception):
                    call(*args)
        for name in (
            "config",
            "buffers",
            "datasets",
            "ins",
            "outs",
            "model_id",
            "desc",
            "stream",
            "context",
        ):
            self.__dict__.pop(name, None)  # released: a second teardown must not touch them
        if self.__dict__.pop("holds_device", False):
            with contextlib.suppress(Exception):
                acl.rt.reset_device(self.card)

    def recover(self, until: float) -> None:
        """After 507010 (card lost), do what a resilient service does: release the device and
        open it again; set_device restarts the card once every slot of this process on it has
        let go. Retried every 50 ms until it works or ``until``."""
        self.teardown()
        while not self.w.stop.is_set() and time.monotonic() < until:
            try:
                self.setup()
                logger.info("slot %d: card %d reopened", self.slot_id, self.card)
                return
            except Exception as exc:
                logger.debug("slot %d: card %d not back yet: %s", self.slot_id, self.card, exc)
                self.teardown()
                self.w.stop.wait(_RECOVER_RETRY_S)

    def request(self) -> tuple[int, float, float]:
        """One request: (code, start, end). 507010 at once when the slot holds no device: its
        card was lost and did not come back before :meth:`recover` gave up (the phase ended);
        an open-loop send still due in the drain grace is then an error, as for the client."""
        acl = self.w.acl
        start = time.monotonic()
        if "config" not in self.__dict__:  # set last by setup(), dropped by teardown()
            return _LOST, start, start
        ret = 0
        for ptr, size, _, host_ptr in self.ins:
            ret = ret or acl.rt.memcpy(ptr, size, host_ptr, size, _H2D)
        ret = ret or acl.mdl.execute_async_v2(
            self.model_id, self.datasets[0], self.datasets[1], self.stream, self.config
        )
        ret = ret or acl.rt.synchronize_stream(self.stream)
        for ptr, size, _, host_ptr in self.outs:
            ret = ret or acl.rt.memcpy(host_ptr, size, ptr, size, _D2H)
        return ret, start, time.monotonic()

    def run(self) -> None:
        try:
            self.setup()
        except Exception as exc:
            self.setup_error = str(exc)
        self.ready.set()
        try:
            while self.setup_error is None and isinstance(phase := self.inbox.get(), Phase):
                try:
                    self.run_phase(phase)
                except Exception as exc:
                    logger.exception("slot %d failed", self.slot_id)
                    self.w.failure = f"slot {self.slot_id}: {exc!r}"
                finally:
                    self.w.done.put(self.slot_id)
        finally:
            self.teardown()

    def run_phase(self, phase: Phase) -> None:
        stop, record, index = self.w.stop, self.w.samples.append, phase.index
        t0, warm_end, end = phase.t0, phase.warm_end, phase.end
        if (delay := t0 - time.monotonic()) > 0:
            stop.wait(delay)
        offsets = phase.slots[self.slot_id]
        if offsets is None:  # closed loop
            budget = self.w.budget if phase.budget else None
            while not stop.is_set() and time.monotonic() < end:
                if budget is not None and time.monotonic() >= warm_end:
                    with budget.get_lock():
                        if budget.value <= 0:
                            break
                        budget.value -= 1
                code, start, done = self.request()
                record((index, self.slot_id, self.card, code, start, start, done))
                if code == _LOST:
                    self.recover(end)
                elif code:
                    time.sleep(_ERROR_PAUSE_S)
            return
        for k, intended in enumerate((t0 + offsets).tolist()):
            now = time.monotonic()
            if intended > now and stop.wait(intended - now):
                return
            if stop.is_set():
                return
            if now > end + _DRAIN_GRACE_S:
                self.missed += int((offsets[k:] + t0 >= warm_end).sum())
                return
            code, start, done = self.request()
            record((index, self.slot_id, self.card, code, intended, start, done))
            if code == _LOST:
                self.recover(end)


class Worker:
    """The slots of one bench worker and its message loop: in a spawned process
    (:func:`worker_main`) or a Ray actor (:class:`loadtest.ray_bench.BenchActor`). ``results``
    and ``commands`` need ``put`` / ``get(timeout=)`` (queues), ``stop_all`` ``is_set``,
    ``budget`` ``value`` and ``get_lock()``."""

    def __init__(
        self,
        index: int,
        slots: list[tuple[int, int]],
        model: str,
        sync_timeout_ms: int,
        results,
        stop_all,
        budget,
    ) -> None:
        self.acl, self.index, self.model, self.sync_timeout_ms = acl, index, model, sync_timeout_ms
        self.results, self.stop_all, self.budget = results, stop_all, budget
        self.stop = threading.Event()
        self.failure: str | None = None
        self.samples: deque = deque()
        self.done: queue.Queue = queue.Queue()
        self.slots = {sid: Slot(self, sid, card) for sid, card in slots}

    def flush(self) -> None:
        rows = [self.samples.popleft() for _ in range(len(self.samples))]
        if rows:
            self.results.put(Samples(self.index, np.array(rows, SAMPLE_DTYPE)))

    def run(self, commands) -> None:
        started = time.monotonic()
        for slot in self.slots.values():
            slot.start()
        try:
            for slot in self.slots.values():
                slot.ready.wait()
            errors = [s.setup_error for s in self.slots.values() if s.setup_error]
            if errors:
                raise RuntimeError(f"worker {self.index} setup: {errors[0]}")
            self.results.put(Ready(self.index, time.monotonic() - started))
            while True:
                match self._next(commands):
                    case Phase() as phase:
                        self.run_phase(phase)
                    case Stop():
                        break
                if self.failure:
                    raise RuntimeError(self.failure)
        finally:
            self.stop.set()
            for slot in self.slots.values():
                slot.inbox.put(STOP)
            for slot in self.slots.values():
                slot.join()

    @staticmethod
    def _next(commands) -> Command:
        """The next command; :data:`STOP` also when the parent has gone."""
        while True:
            with contextlib.suppress(queue.Empty):
                return commands.get(timeout=1.0)
            parent = multiprocessing.parent_process()
            if parent is not None and not parent.is_alive():
                return STOP

    def run_phase(self, phase: Phase) -> None:
        cpu0, wall0 = time.process_time(), time.monotonic()
        active = [s for sid, s in self.slots.items() if sid in phase.slots]
        for slot in active:
            slot.missed = 0
            slot.inbox.put(phase)
        pending = len(active)
        while pending:
            with contextlib.suppress(queue.Empty):
                self.done.get(timeout=FLUSH_S)
                pending -= 1
            if self.stop_all.is_set():
                self.stop.set()
            self.flush()
        wall_s = time.monotonic() - max(wall0, phase.t0)
        stats = {
            "cpu_s": time.process_time() - cpu0,
            "wall_s": wall_s,
            "missed": sum(s.missed for s in active),
            "active": len(active),
        }
        self.results.put(PhaseDone(self.index, phase.index, stats))


def worker_main(
    index, address, slots, model, sync_timeout_ms, log_level, commands, results, stop_all, budget
) -> None:
    """Entry of a worker process (spawned): Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ["NPUFARM_ADDRESS"] = address

    try:
        ret = acl.init()
        if ret != 0:
            raise RuntimeError(
                f"worker {index}: acl.init returned {ret}: {acl.get_recent_err_msg()}"
            )
        try:
            worker = Worker(index, slots, model, sync_timeout_ms, results, stop_all, budget)
            worker.run(commands)
        finally:
            acl.finalize()
    except Exception as exc:
        logger.exception("bench worker %d failed", index)
        results.put(WorkerError(index, str(exc)))
    finally:
        results.put(Bye(index))
