"""One chaos-soak client process: threads running pyACL work on their cards, session after session.

::

    python -m benchmarks.soak_client --journal J --client I --seed S --cards 8 --threads 2 \
        --duration-s 120 --models DIR      (NPUFARM_ADDRESS names the farm)

Why a journal: the soak SIGKILLs clients, and a killed process takes its ledger with it. Every
iteration appends, *before* submitting, the number of tasks it is about to submit (``intent``)
and, after, the number it did submit (``sub``), then its outcome (code, card, epoch, whether the
output bytes were right). One ``write`` per line on an O_APPEND file: a kill loses at most the
line being written. A finished session appends the client library's own ledger (``final``).

Each thread owns the cards ``d % threads == j`` (a ``reset_device`` in one thread never pulls a
device from under another), picks a card and a model (5% heavy) per iteration, and runs:
H2D memcpy, ``memset_async`` of the output, ``execute_async``, D2H ``memcpy_async`` into pinned
memory, ``synchronize_stream_with_timeout``; a success is compared with the host reference
(exact for copies and adds, 1e-4 for matmuls). A lost card (507010) or a lost task (507046) is
met with ``reset_device``; sessions end with ``acl.finalize`` after a seeded 8-25 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import acl
from client import RUNTIME
from device.kernels import reference
from device.models import load_model_file

__all__ = ["main", "TASKS_PER_ITERATION"]

logger = logging.getLogger(__name__)

TASKS_PER_ITERATION = 3  # memset_async, execute_async, memcpy_async
HEAVY_SHARE = 0.05
SYNC_TIMEOUT_MS = 10_000
_LOST, _TIMEOUT = 507010, 507046
H2D, D2H = 1, 2
_STOP = threading.Event()


class Journal:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, **fields) -> None:
        """One line; ``w``: wall-clock time, to line up with the farm's log."""
        line = json.dumps({**fields, "w": round(time.time(), 3)}, separators=(",", ":"))
        os.write(self.fd, (line + "\n").encode())


@dataclass
class Loaded:
    model_id: int
    inputs: list[int]
    output: int
    out_size: int
    host_out: int
    view: np.ndarray
    in_ds: int
    out_ds: int


@dataclass
class Device:
    context: int
    stream: int
    models: dict[str, Loaded] = field(default_factory=dict)


class Worker:
    """One thread's cards and models."""

    def __init__(self, acl, journal, sid, devices, models, seed, stop_at_s):
        self.acl, self.journal, self.sid = acl, journal, sid
        self.devices = devices
        self.models = models  # name -> (path, spec, [(inputs, reference)] * 2)
        self.rng = np.random.default_rng(seed)
        self.stop_at_s = stop_at_s
        self.open: dict[int, Device] = {}
        self.iteration = 0

    def run(self) -> None:
        while not _STOP.is_set() and time.monotonic() < self.stop_at_s:
            device = int(self.rng.choice(self.devices))
            heavy = self.rng.random() < HEAVY_SHARE and "heavy" in self.models
            names = [n for n in self.models if n != "heavy"]
            name = "heavy" if heavy else str(self.rng.choice(names))
            try:
                self.iterate(device, name)
            except Exception as exc:  # the soak goes on; the journal tells
                self.journal.write(e="error", sid=self.sid, card=device, error=repr(exc)[:200])
                self.reset(device)
            self.iteration += 1

    def device(self, device_id: int) -> Device | int:
        acl = self.acl
        if device_id in self.open:
            dev = self.open[device_id]
            ret = acl.rt.set_context(dev.context)
            return dev if ret == 0 else ret
        if (ret := acl.rt.set_device(device_id)) != 0:
            return ret
        context, ret = acl.rt.get_context()
        if ret != 0:
            return ret
        stream, ret = acl.rt.create_stream()
        if ret != 0:
            return ret
        self.open[device_id] = Device(context, stream)
        return self.open[device_id]

    def load(self, dev: Device, name: str) -> Loaded | int:
        if name in dev.models:
            return dev.models[name]
        acl = self.acl
        path, spec, _ = self.models[name]
        model_id, ret = acl.mdl.load_from_file(str(path))
        if ret != 0:
            return ret
        ptrs = []
        for tensor in (*spec.inputs, *spec.outputs):
            ptr, ret = acl.rt.malloc(tensor.nbytes, 0)
            if ret != 0:
                return ret
            ptrs.append(ptr)
        out_size = spec.outputs[0].nbytes
        host_out, ret = acl.rt.malloc_host(out_size)
        if ret != 0:
            return ret
        view = acl.util.ptr_to_numpy(host_out, (out_size,), 2)
        in_ds, out_ds = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        for ptr, tensor in zip(ptrs[:-1], spec.inputs):
            acl.mdl.add_dataset_buffer(in_ds, acl.create_data_buffer(ptr, tensor.nbytes))
        acl.mdl.add_dataset_buffer(out_ds, acl.create_data_buffer(ptrs[-1], out_size))
        loaded = Loaded(model_id, ptrs[:-1], ptrs[-1], out_size, host_out, view, in_ds, out_ds)
        dev.models[name] = loaded
        return loaded

    def iterate(self, device_id: int, name: str) -> None:
        acl, sid = self.acl, self.sid
        dev = self.device(device_id)
        loaded = self.load(dev, name) if isinstance(dev, Device) else dev
        if not isinstance(loaded, Loaded):
            self.outcome(device_id, name, loaded)
            return
        path, spec, variants = self.models[name]
        inputs, reference = variants[self.iteration % 2]
        for ptr, host, tensor in zip(loaded.inputs, inputs, spec.inputs):
            ret = acl.rt.memcpy(ptr, tensor.nbytes, acl.util.numpy_to_ptr(host), host.nbytes, H2D)
            if ret != 0:
                self.outcome(device_id, name, ret)
                return
        self.journal.write(e="intent", sid=sid, n=TASKS_PER_ITERATION)
        stream, size = dev.stream, loaded.out_size
        rets = [acl.rt.memset_async(loaded.output, size, 0x5A, size, stream)]
        if rets[-1] == 0:
            rets.append(acl.mdl.execute_async(loaded.model_id, loaded.in_ds, loaded.out_ds, stream))
        if rets[-1] == 0:
            rets.append(
                acl.rt.memcpy_async(loaded.host_out, size, loaded.output, size, D2H, stream)
            )
        self.journal.write(e="sub", sid=sid, n=sum(1 for r in rets if r == 0))
        if rets[-1] != 0:
            self.outcome(device_id, name, rets[-1], reset=rets[-1] in (_LOST, _TIMEOUT))
            return
        code = acl.rt.synchronize_stream_with_timeout(stream, SYNC_TIMEOUT_MS)
        wrong = None
        if code == 0:
            got = loaded.view.view(reference.dtype).reshape(reference.shape)
            exact = spec.kind in ("add", "identity")
            wrong = not (
                np.array_equal(got, reference)
                if exact
                else np.allclose(got, reference, rtol=1e-4, atol=1e-5)
            )
        self.outcome(device_id, name, code, wrong=wrong, reset=code in (_LOST, _TIMEOUT))

    def outcome(self, device_id, name, code, wrong=None, reset=False) -> None:
        session = RUNTIME.session
        epoch = session.epochs.get(device_id, -1) if session is not None else -1
        self.journal.write(
            e="iter", sid=self.sid, card=device_id, epoch=epoch, model=name, code=code, wrong=wrong
        )
        if reset or code == _LOST:
            self.reset(device_id)

    def reset(self, device_id: int) -> None:
        dev = self.open.pop(device_id, None)
        if dev is not None:
            for loaded in dev.models.values():
                self.acl.rt.free_host(loaded.host_out)
        self.acl.rt.reset_device(device_id)


def _models(models_dir: Path, seed: int) -> dict:
    """name -> (path, spec, two (inputs, reference) variants)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path in sorted(models_dir.glob("*.toml")):
        spec = load_model_file(path)
        variants = []
        for _ in range(2):
            inputs = [rng.standard_normal(t.concrete_shape).astype(t.np_dtype) for t in spec.inputs]
            variants.append((inputs, reference(spec, inputs)[0]))
        out[spec.name if path.stem != "heavy" else "heavy"] = (path, spec, variants)
    return out


def run_session(acl, journal, sid, args, models, rng) -> None:
    stop_at_s = min(args.end_s, time.monotonic() + float(rng.uniform(8.0, 25.0)))
    ret = acl.init()
    journal.write(e="session", sid=sid, ret=ret, pid=os.getpid())
    if ret != 0:
        time.sleep(0.5)
        return
    workers = []
    for j in range(args.threads):
        devices = [d for d in range(args.cards) if d % args.threads == j]
        seed = [args.seed, args.client, args.generation, sid, j]
        workers.append(Worker(acl, journal, sid, devices, models, seed, stop_at_s))
    threads = [threading.Thread(target=w.run, name=f"soak-{j}") for j, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ret = acl.finalize()
    journal.write(e="final", sid=sid, ret=ret, ledger=RUNTIME.last_ledger)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak_client")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--client", type=int, required=True)
    parser.add_argument("--generation", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cards", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--models", required=True)
    args = parser.parse_args(argv)
    args.end_s = time.monotonic() + args.duration_s
    signal.signal(signal.SIGTERM, lambda *_: _STOP.set())
    journal = Journal(args.journal)
    models = _models(Path(args.models), args.seed)
    rng = np.random.default_rng([args.seed, args.client, args.generation])
    sid = 0
    while not _STOP.is_set() and time.monotonic() < args.end_s:
        run_session(acl, journal, sid, args, models, rng)
        sid += 1
    journal.write(e="exit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
